"""Size-targeted GGUF mixes (hubtool/gguf/mix.py) on a tiny model: budget, recipe, read-back check."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from tests.extras import require_extra

require_extra("llama_cpp", "gguf")  # skipped locally without the extra; a failure in CI

from hubtool.errors import InputError, QuantizeError
from hubtool.gguf import export_gguf
from hubtool.gguf.facts import recipe_name, tuned_variant, type_from_name
from hubtool.gguf.imatrix import compute_imatrix, imatrix_means
from hubtool.gguf.mix import (Recipe, TensorCost, activation_noise, allocate, check_against_recipe, file_types, measure_costs,
                              parse_recipe, plan_mix, predicted_kl, roundtrip, tensor_bytes, vec_dot_type, write_tuned)
from hubtool.gguf.quantize import planned_tensor_types, quantize_gguf
from hubtool.quality.sensitivity import output_fisher
from tests.tiny import corpus_text, make_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_dir):
    """(fp16 folder, its F16 GGUF, imatrix means, output Fisher) of a tiny Llama whose rows fit 256-wide k-quant blocks."""
    root = tmp_path_factory.mktemp("mix")
    src = make_tiny_llama(root / "src", tokenizer_dir, hidden_size=256, intermediate_size=512, num_hidden_layers=3)
    rows = export_gguf(src, root / "gguf", ["f16"], name="tiny", split_max_size="0")
    base = Path(rows[0]["file"])
    text = corpus_text()
    sums, counts = compute_imatrix(src, text, arch_name="llama", context=128, max_tokens=512)
    fisher = output_fisher(src, text, arch_name="llama", context=128, max_tokens=256, input_noise=activation_noise())
    return src, base, imatrix_means(sums, counts), fisher


def test_allocate_matches_brute_force_and_budget():
    """The greedy hull walk against every combination of a small separable problem."""
    costs = [TensorCost(f"t{i}", (1, 1), {"A": (10, 9.0 * (i + 1)), "B": (16, 3.0 * (i + 1) ** 0.5), "C": (30, 0.5)}) for i in range(4)]
    for budget in (40, 52, 64, 80, 100, 120):
        chosen = allocate(costs, budget)
        spent = sum(c.options[chosen[c.name]][0] for c in costs)
        assert spent <= budget
        best = min((sum(c.options[t][1] for c, t in zip(costs, combo)), combo)
                   for combo in itertools.product("ABC", repeat=4) if sum(c.options[t][0] for c, t in zip(costs, combo)) <= budget)
        # greedy on convex hulls: within one item's step of the optimum (exact here at most budgets)
        assert predicted_kl(costs, chosen) <= best[0] + max(c.options["A"][1] for c in costs)
    with pytest.raises(InputError, match="below the smallest mix"):
        allocate(costs, 39)


def test_allocate_spends_the_budget_a_hull_walk_leaves():
    """Step 2: the next hull step does not fit but a skipped point does; step 3: nothing lowers the
    predicted KL any more (weights on a grid), and fill_to still spends the budget, never more."""
    skip = [TensorCost("a", (1, 1), {"A": (10, 5.0), "B": (14, 4.0), "C": (40, 0.1)})]  # hull: A -> C (B is not convex)
    assert allocate(skip, 30) == {"a": "B"}
    grid = [TensorCost(f"g{i}", (1, 1), {"Q4_1": (10, 0.0), "Q5_1": (12, 0.002 * (i + 1)), "Q8_0": (17, 0.001)}) for i in range(6)]
    assert set(allocate(grid, 100).values()) == {"Q4_1"}  # 60 bytes: more bytes only predict more KL
    for budget in (75, 88, 100):
        chosen = allocate(grid, budget, fill_to=0.99)
        spent = sum(c.options[chosen[c.name]][0] for c in grid)
        assert 0.99 * budget - 7 <= spent <= budget, (budget, spent)  # within one tensor's step of the fill line
        # the least-harmful bytes first: Q8_0 (0.001 per 7 bytes) before Q5_1 (>= 0.002 per 2 bytes); a Q5_1 only as the last fit
        assert list(chosen.values()).count("Q5_1") <= 1, chosen
    assert allocate(grid, 100, fill_to=0.99) != allocate(grid, 100)


def _brute_force(costs, budget):
    """The least summed KL of any assignment within BUDGET bytes."""
    return min(sum(c.options[t][1] for c, t in zip(costs, combo))
               for combo in itertools.product(*[list(c.options) for c in costs])
               if sum(c.options[t][0] for c, t in zip(costs, combo)) <= budget)


def test_allocate_trades_a_big_upgrade_for_downgrades_elsewhere():
    """Gemma-3's Q3_K_M case in miniature: every layer tensor's upgrade gains more per byte than the
    embedding's, so a walk that only adds bytes puts the layers at the top and is then stuck with the
    embedding's step not fitting; the optimum upgrades the embedding and pays with two layer downgrades."""
    layers = [TensorCost(f"blk.{i}", (1, 1), {"Q4_K": (10, 0.2), "Q8_0": (20, 0.0)}) for i in range(4)]
    embd = TensorCost("token_embd", (1, 1), {"Q5_1": (100, 1.0), "Q8_0": (140, 0.3)})
    costs = [embd] + layers
    budget = 200
    walk = {c.name: max(c.options, key=lambda t: c.options[t][0]) for c in layers} | {"token_embd": "Q5_1"}
    assert sum(c.options[walk[c.name]][0] for c in costs) == 180  # where the walk stops: 20 bytes left, the step is 40
    chosen = allocate(costs, budget)
    assert chosen["token_embd"] == "Q8_0"
    assert sorted(chosen[c.name] for c in layers) == ["Q4_K", "Q4_K", "Q8_0", "Q8_0"]
    assert sum(c.options[chosen[c.name]][0] for c in costs) == budget
    assert predicted_kl(costs, chosen) == pytest.approx(_brute_force(costs, budget)) == pytest.approx(0.7)
    assert predicted_kl(costs, chosen) < predicted_kl(costs, walk)


def test_allocate_is_the_exact_optimum_and_never_over_budget():
    """Random non-convex option sets (skipped hull points, dominated types, a zero-KL top rung like
    F16): the predicted KL is the brute-force optimum, the bytes never exceed the budget, and with
    fill_to the budget is spent down to one step of the fill line."""
    rng = np.random.default_rng(7)
    for trial in range(40):
        costs = []
        for i in range(5):
            n_opt = int(rng.integers(2, 5))
            sizes = np.sort(rng.choice(np.arange(5, 60), n_opt, replace=False))
            kls = rng.uniform(0, 1, n_opt)  # not sorted: some types are dominated, some hulls skip points
            options = {f"T{j}": (int(b), float(k)) for j, (b, k) in enumerate(zip(sizes, kls))}
            options["F16"] = (int(sizes[-1]) + 40, 0.0)
            costs.append(TensorCost(f"t{i}", (1, 1), options))
        least = sum(min(b for b, _ in c.options.values()) for c in costs)
        most = sum(max(b for b, _ in c.options.values()) for c in costs)
        for budget in rng.integers(least, most + 1, 3):
            chosen = allocate(costs, int(budget))
            spent = sum(c.options[chosen[c.name]][0] for c in costs)
            assert spent <= budget, (trial, budget, spent)
            assert predicted_kl(costs, chosen) == pytest.approx(_brute_force(costs, int(budget))), (trial, budget)
            filled = allocate(costs, int(budget), fill_to=0.99)
            spent = sum(c.options[filled[c.name]][0] for c in costs)
            biggest_step = max(max(b for b, _ in c.options.values()) - min(b for b, _ in c.options.values()) for c in costs)
            assert 0.99 * budget - biggest_step <= spent <= budget, (trial, budget, spent)


def test_allocate_byte_grid_rounds_up_never_over():
    """Budgets far larger than the DP grid (real files: 10^8 bytes over 2^17 cells): rounding each
    step up to a cell keeps the result within the budget and leaves at most a cell per tensor unspent
    when the optimum is to spend everything."""
    costs = [TensorCost(f"t{i}", (1, 1), {"Q4_K": (1_000_003 * (i + 1), 1.0), "Q8_0": (1_900_007 * (i + 1), 0.1 * i),
                                           "F16": (3_600_011 * (i + 1), 0.0)}) for i in range(30)]
    for budget in (500_000_000, 1_000_000_000, 1_600_000_000):
        chosen = allocate(costs, budget)
        spent = sum(c.options[chosen[c.name]][0] for c in costs)
        assert spent <= budget
        top = sum(c.options["F16"][0] for c in costs)
        assert spent >= min(budget, top) - 30 * (budget // (1 << 17) + 1) - max(c.options["F16"][0] - c.options["Q8_0"][0] for c in costs)


def test_row_sample_keeps_the_rows_that_carry_the_fisher():
    """A vocabulary's logit Fisher sits on a few rows: the stratified sample holds all of them (counted
    once) and scales the evenly spaced rest, so a per-row sum is estimated within a few percent where an
    even sample of the same size misses them entirely."""
    from hubtool.gguf.mix import _sample

    rng = np.random.default_rng(3)
    n = 262_144
    weight = rng.uniform(0, 1e-6, n)
    heavy = rng.choice(n, 40, replace=False)
    weight[heavy] = rng.uniform(1, 5, 40)
    err = rng.uniform(0.5, 1.5, n)  # a type's per-row error
    idx, mult = _sample(n, 256, weight)
    assert len(np.unique(idx)) == len(idx) == 256 and mult.sum() == pytest.approx(n)
    assert set(heavy) <= set(idx.tolist())
    truth = float(weight @ err)
    assert float((weight[idx] * mult) @ err[idx]) == pytest.approx(truth, rel=0.02)
    even, even_mult = _sample(n, 256)
    assert float((weight[even] * even_mult) @ err[even]) < 0.5 * truth
    plain, plain_mult = _sample(100, 256, weight[:100])  # small tensors: every row, once
    assert plain.tolist() == list(range(100)) and set(plain_mult.tolist()) == {1.0}


def test_candidates_end_in_16_bit_rungs(tiny):
    """F16/BF16 are candidates: measured with ggml (F16 of an F16 file has no weight error, only its
    activations' rounding), and a budget of every tensor at F16 gives a recipe llama.cpp's dry run
    writes as planned."""
    src, base, imatrix, fisher = tiny
    from hubtool.gguf.mix import candidate_types

    assert {"F16", "BF16"} <= set(candidate_types("Q4_K_M")) and {"F16", "BF16"} <= set(candidate_types("IQ2_M"))
    first = plan_mix(base, "Q4_K_M", imatrix=imatrix, fisher=fisher)
    for c in first.costs:
        if not c.name.startswith("blk."):  # the embedding: rows looked up, no matmul of its own (unless tied)
            assert c.options["F16"][1] == min(kl for _, kl in c.options.values())
            continue
        f16_noise = 0.5 * float(fisher[f"{c.name}:input_noise:F16"].sum())
        assert c.options["F16"][1] == pytest.approx(f16_noise) and 0 < c.options["F16"][1] < c.options["Q8_0"][1], c.name
        assert c.options["BF16"][1] > c.options["F16"][1]  # F16 -> BF16 drops mantissa bits of weights and inputs
    everything = sum(c.options["F16"][0] for c in first.costs)
    mix = plan_mix(base, "Q4_K_M", imatrix=imatrix, fisher=fisher, costs=list(first.costs), budget_bytes=everything)
    assert set(dict(mix.recipe.types).values()) == {"F16"}  # plan_mix checked it by llama.cpp's dry run
    assert mix.mix_bytes == everything


def _ggml_q8_k(x: np.ndarray) -> np.ndarray:
    """ggml's own Q8_K round trip (quantize_row_q8_K_ref, dequantize_row_q8_K): what a K-quant matmul's input becomes."""
    import ctypes

    from hubtool.gguf.mix import _ggml

    lib = _ggml()
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    blocks = np.zeros(x.size // 256 * 292, dtype=np.uint8)  # block_q8_K: float d, int8 qs[256], int16 bsums[16]
    out = np.zeros_like(x)
    lib.quantize_row_q8_K_ref.argtypes = lib.dequantize_row_q8_K.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.quantize_row_q8_K_ref(x.ctypes.data, blocks.ctypes.data, x.size)
    lib.dequantize_row_q8_K(blocks.ctypes.data, out.ctypes.data, x.size)
    return out


def test_activation_noise_is_ggmls_rounding_and_enters_the_prediction(tiny):
    """The activation roundings are ggml's (Q8_0 and Q8_K compared with ggml's own functions, an
    outlier channel included: it is what makes Q8_K's 256-wide blocks costly), each weight type gets
    its vec_dot input format, and a candidate's predicted KL is its weight error plus exactly
    1/2 sum_i E_t[(dL/dy_ti)^2 (W dx_t)_i^2] of that format."""
    import torch

    src, base, imatrix, fisher = tiny
    x = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    x[:, 7] *= 60  # an outlier channel
    fns = activation_noise()
    assert np.array_equal(fns["Q8_0@32"](torch.from_numpy(x)).numpy(), roundtrip(x, "Q8_0", None))
    q8k = fns["Q8_K@256"](torch.from_numpy(x)).numpy()
    assert np.allclose(q8k, _ggml_q8_k(x).reshape(x.shape), rtol=0, atol=1e-6 * np.abs(x).max())
    assert np.abs(q8k - x)[:, :256].mean() > 4 * np.abs(q8k - x)[:, 256:].mean()  # the outlier's block pays
    assert [vec_dot_type(t) for t in ("Q4_K", "Q6_K", "IQ2_S", "Q4_0", "Q5_1", "Q8_0", "IQ4_NL", "F16", "BF16")] == \
        ["Q8_K", "Q8_K", "Q8_K", "Q8_0", "Q8_0", "Q8_0", "Q8_0", "F16", "BF16"]
    names = ["blk.0.ffn_down.weight", "blk.1.attn_q.weight"]
    weight_only = {k: v for k, v in fisher.items() if ":input_noise:" not in k}
    with_noise = measure_costs(base, names, ["Q4_K", "Q5_0", "Q8_0", "F16"], imatrix=imatrix, fisher=fisher)
    without = measure_costs(base, names, ["Q4_K", "Q5_0", "Q8_0", "F16"], imatrix=imatrix, fisher=weight_only)
    for a, b in zip(with_noise, without):
        assert a.name == b.name and a.options.keys() == b.options.keys()
        for t in a.options:
            noise = fisher[f"{a.name}:input_noise:{vec_dot_type(t)}"]
            assert noise.shape == fisher[a.name].shape and noise.sum() > 0
            assert a.options[t][1] - b.options[t][1] == pytest.approx(0.5 * float(noise.sum()), rel=1e-9), (a.name, t)
        assert b.options["F16"][1] == 0.0
        assert a.options["Q4_K"][1] - b.options["Q4_K"][1] > a.options["Q8_0"][1] - b.options["Q8_0"][1]  # 256-wide vs 32-wide


@pytest.mark.parametrize("stock_type", ["Q4_K_M", "Q3_K_M", "Q2_K", "IQ2_M"])
def test_tuned_mix_is_the_stock_size_by_llama_cpp_dry_run(tiny, stock_type):
    """The tuned recipe's file, sized from llama.cpp's own dry run (the types it would write), lands
    within 1 % of the stock type's; the budget is never exceeded."""
    src, base, imatrix, fisher = tiny
    mix = plan_mix(base, stock_type, imatrix=imatrix, fisher=fisher)
    stock = tensor_bytes(base, planned_tensor_types(base, stock_type, imatrix=imatrix))
    tuned = tensor_bytes(base, planned_tensor_types(base, stock_type, imatrix=imatrix, tensor_types=mix.recipe.overrides()))
    size_stock, size_tuned = sum(stock.values()), sum(tuned.values())
    assert abs(size_tuned / size_stock - 1) <= 0.01, (stock_type, size_tuned, size_stock)
    assert size_tuned <= size_stock
    assert mix.mix_bytes == sum(tuned[n] for n, _ in mix.recipe.types)  # the search's own accounting is llama.cpp's
    assert mix.predicted_kl <= mix.stock_predicted_kl


def test_tuned_mix_meets_stock_size_and_reads_back(tiny, tmp_path):
    src, base, imatrix, fisher = tiny
    mix = plan_mix(base, "Q4_K_M", imatrix=imatrix, fisher=fisher)
    assert mix.mix_bytes <= mix.budget_bytes == mix.stock_bytes
    assert mix.mix_bytes >= 0.99 * mix.stock_bytes  # the budget is spent, not left on the table
    stock = quantize_gguf(base, tmp_path / "tiny.Q4_K_M.gguf", "Q4_K_M", imatrix=imatrix)
    tuned = write_tuned(base, tmp_path / "tiny.Q4_K_M-tuned.gguf", mix.recipe, imatrix=imatrix)
    assert abs(tuned.stat().st_size / stock.stat().st_size - 1) <= 0.01
    assert {n: t for n, t in file_types(tuned).items() if n in dict(mix.recipe.types)} == dict(mix.recipe.types)
    assert mix.predicted_kl <= mix.stock_predicted_kl  # stock's own assignment is one the search could pick
    assert type_from_name(tuned.name) == tuned_variant("Q4_K_M") == "Q4_K_M-tuned"


def test_target_bpw_budget(tiny, tmp_path):
    src, base, imatrix, fisher = tiny
    from hubtool.gguf.verify import size_info

    for bpw in (3.5, 5.5):
        mix = plan_mix(base, "Q4_K_M", imatrix=imatrix, fisher=fisher, target_bpw=bpw)
        out = write_tuned(base, tmp_path / f"tiny.{tuned_variant(target_bpw=bpw)}.gguf", mix.recipe, imatrix=imatrix)
        _, got = size_info(out)
        assert bpw * 0.97 <= got <= bpw * 1.001, (bpw, got)
    with pytest.raises(InputError, match="below the smallest mix"):
        plan_mix(base, "Q4_K_M", imatrix=imatrix, fisher=fisher, target_bpw=1.0)


def test_read_back_catches_a_recipe_the_file_does_not_follow(tiny, tmp_path):
    src, base, imatrix, fisher = tiny
    mix = plan_mix(base, "Q4_K_M", imatrix=imatrix, fisher=fisher)
    out = write_tuned(base, tmp_path / "tiny.Q4_K_M-tuned.gguf", mix.recipe, imatrix=imatrix)
    name, was = mix.recipe.types[3]
    other = "Q8_0" if was != "Q8_0" else "Q4_0"
    lying = Recipe(mix.recipe.stock_type, tuple((n, other if n == name else t) for n, t in mix.recipe.types))
    with pytest.raises(QuantizeError, match=rf"{name}: {was} \(recipe {other}\)"):
        check_against_recipe(out, lying)
    # a quantizer that ignores the overrides is caught too: stock Q4_K_M checked against the tuned recipe
    stock = quantize_gguf(base, tmp_path / "tiny.Q4_K_M.gguf", "Q4_K_M", imatrix=imatrix)
    if dict(mix.recipe.types) != {n: t for n, t in file_types(stock).items() if n in dict(mix.recipe.types)}:
        with pytest.raises(QuantizeError, match="differ from the recipe"):
            check_against_recipe(stock, mix.recipe)


def test_recipe_file_reproduces_the_types_through_llama_quantize(tiny, tmp_path):
    """The published --tensor-type-file, parsed as llama-quantize does (whitespace-separated regex=type
    words), fed to llama_model_quantize's tt_overrides, gives the same type for every tensor."""
    src, base, imatrix, fisher = tiny
    mix = plan_mix(base, "Q3_K_M", imatrix=imatrix, fisher=fisher)
    path = tmp_path / recipe_name("tiny", tuned_variant("Q3_K_M"))
    path.write_text(mix.recipe.to_text(), encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    assert all(line.count("=") == 1 and line == line.lower() and " " not in line for line in text.splitlines())
    words = [w.split("=", 1) for w in text.split()]  # what llama-quantize's parse_tensor_type_file does
    out = quantize_gguf(base, tmp_path / "again.gguf", "Q3_K_M", imatrix=imatrix, tensor_types=[(p, t) for p, t in words])
    want = dict(mix.recipe.types)
    assert {n: t for n, t in file_types(out).items() if n in want} == want
    assert {n: t for n, t in planned_tensor_types(base, "Q3_K_M", imatrix=imatrix, tensor_types=words).items() if n in want} == want
    assert parse_recipe(text, stock_type="Q3_K_M", source=str(path)) == mix.recipe
    with pytest.raises(InputError, match="not an exact-name"):
        parse_recipe("attn_v=q8_0\n", stock_type="Q3_K_M", source="r.txt")
    assert set(tensor_bytes(base, want)) >= set(want)


def test_release_config_and_plan_publish_tuned_variants(tiny, tmp_path):
    from hubtool.release import build_config
    from hubtool.release.cache import Hasher
    from hubtool.release.graph import check_inputs
    from hubtool.release.plan import make_plan

    src = tiny[0]
    file_cfg = {"name": "m", "namespace": "org", "quants": ["gguf"], "gguf": {"types": ["q4_k_m"], "tuned": ["q4_k_m"]}}
    cfg = build_config(file_cfg, {}, default_name="x")
    assert cfg.gguf_tuned == ["Q4_K_M"]
    assert build_config(file_cfg, {"gguf_tuned": "q3_k_m,q2_k"}, default_name="x").gguf_tuned == ["Q3_K_M", "Q2_K"]  # the flag wins
    with pytest.raises(InputError, match="gguf.tuned: F16 is not quantized"):
        build_config({**file_cfg, "gguf": {"tuned": ["f16"]}}, {}, default_name="x")
    with pytest.raises(InputError, match="--gguf-tuned: unknown GGUF type 'q9'"):
        build_config(file_cfg, {"gguf_tuned": "q9"}, default_name="x")
    plan = make_plan(cfg, check_inputs(src, None, None), hasher=Hasher(tmp_path))
    stage = next(s for s in plan.stages if s.name == "gguf:Q4_K_M-tuned")
    assert stage.options["tuned"] and "gguf:F16-base" in stage.needs
    verify = next(s for s in plan.stages if s.name == "verify:gguf")
    assert "gguf:Q4_K_M-tuned" in verify.needs  # quality gates see the tuned file like any other
    target = next(t for t in plan.targets if t.repo_id == "org/m-GGUF")
    paths = {f.path for f in target.files}
    assert {"m.Q4_K_M.gguf", "m.Q4_K_M-tuned.gguf", "m.Q4_K_M-tuned.tensor-types.txt", "m.Q4_K_M-tuned.mix.json", "m.imatrix.gguf"} <= paths


def test_export_tuned_writes_file_recipe_summary_and_the_card_explains_them(tiny, tmp_path):
    from hubtool.card import render_card
    from hubtool.gguf.mix import export_tuned
    from hubtool.gguf.verify import verify_gguf

    src, base, imatrix, fisher = tiny
    out = tmp_path / "repo"
    rows = export_tuned(src, base, out, "Q4_K_M", name="tiny", calibration=corpus_text())
    tuned = out / "tiny.Q4_K_M-tuned.gguf"
    assert [Path(r["file"]) for r in rows] == [tuned] and rows[0]["type"] == "Q4_K_M-tuned"
    recipe = parse_recipe((out / "tiny.Q4_K_M-tuned.tensor-types.txt").read_text(), stock_type="Q4_K_M", source="recipe")
    check_against_recipe(tuned, recipe)
    quantize_gguf(base, out / "tiny.Q4_K_M.gguf", "Q4_K_M", imatrix=imatrix)
    for f in src.iterdir():  # the card reads the model's config/tokenizer beside the GGUF files, as in a release's folder
        if f.suffix != ".safetensors" and not (out / f.name).exists():
            (out / f.name).symlink_to(f)
    rows = verify_gguf([tuned, out / "tiny.Q4_K_M.gguf"], src, max_tokens=256, context=128)
    assert {r["variant"] for r in rows} == {"Q4_K_M-tuned", "Q4_K_M"}  # its own row, not a second Q4_K_M
    card = render_card("gguf", out, meta={"license": "apache-2.0", "base_model": "acme/base"})
    assert "### Tuned mixes" in card and "tiny.Q4_K_M-tuned.tensor-types.txt" in card
    assert "llama-quantize --imatrix tiny.imatrix.gguf --tensor-type-file tiny.Q4_K_M-tuned.tensor-types.txt" in card
    import json

    summary = json.loads((out / "tiny.Q4_K_M-tuned.mix.json").read_text())
    for line in summary["changes"]:
        assert line in card


def test_release_publishes_the_frontier_plot_and_the_card_embeds_it(tiny, tmp_path):
    """A GGUF release with two measured files (stock and tuned Q4_K_M) ships frontier.png, drawn from exactly
    its quality rows, and the card embeds it and says what a tuned file is; a re-run re-uploads nothing."""
    import json

    from huggingface_hub import hf_hub_download

    from hubtool.gguf.frontier_plot import read_points
    from tests.test_release import hub_env, remote_state, run_cli

    src = tiny[0]
    cfg = tmp_path / "release.yaml"
    cfg.write_text("name: tiny\nnamespace: me\nquants: [gguf]\ngguf: {types: [q4_k_m], tuned: [q4_k_m]}\n"
                   "verify: {max_tokens: 256, context: 64}\ncard: {license: apache-2.0, base_model: acme/base}\n")
    args = ["release", str(src), "--config", str(cfg), "--work-dir", str(tmp_path / "work"), "--json"]
    with hub_env(tmp_path, "lfs") as hub:
        rc, out, err = run_cli(args + ["--endpoint", hub.url])
        assert rc == 0, err[-2000:]
        summary = json.loads(out)
        repo = next(r for r in summary["repos"] if r["repo_id"] == "me/tiny-GGUF")
        assert "frontier.png" in repo["files"]
        png = Path(hf_hub_download("me/tiny-GGUF", "frontier.png", endpoint=hub.url, cache_dir=tmp_path / "dl"))
        readme = Path(hf_hub_download("me/tiny-GGUF", "README.md", endpoint=hub.url, cache_dir=tmp_path / "dl")).read_text()
        before = remote_state(hub.url, "me/tiny-GGUF")
        rc, out, err = run_cli(args + ["--endpoint", hub.url])
        assert rc == 0 and remote_state(hub.url, "me/tiny-GGUF") == before  # the same rows draw the same bytes
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [r for r in summary["quality"] if r["kind"] == "gguf"]
    assert sorted((v, b, k) for v, b, k in read_points(png)) == sorted((r["variant"], r["size_bytes"], r["kl_div"]) for r in rows)
    assert {r["variant"] for r in rows} == {"Q4_K_M", "Q4_K_M-tuned"}
    assert "](frontier.png)" in readme and "![" in readme
    assert "### Tuned mixes" in readme and "red stars are\nthe `-tuned` mixes" in readme


def test_quantize_gguf_cli_writes_tuned_and_target_bpw_mixes(tiny, tmp_path):
    """`hubtool quantize gguf --tuned TYPE --target-bpw B --calibration TEXT`: stock files, a tuned file the size of
    stock TYPE, the best mix under B bits per weight, their recipes; the 16-bit base is not left behind."""
    import contextlib
    import io

    from hubtool.cli import main
    from hubtool.gguf.verify import size_info

    src, base, imatrix, fisher = tiny
    text = tmp_path / "calib.txt"
    text.write_text(corpus_text(), encoding="utf-8")
    out = tmp_path / "out"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["quantize", "gguf", str(src), "-o", str(out), "--types", "q4_k_m", "--tuned", "q3_k_m", "--target-bpw", "5",
                     "--calibration", str(text), "--name", "tiny", "--json"]) == 0, err.getvalue()[-2000:]
    names = {p.name for p in out.iterdir()}
    assert {"tiny.Q4_K_M.gguf", "tiny.Q3_K_M-tuned.gguf", "tiny.5.00bpw-tuned.gguf", "tiny.Q3_K_M-tuned.tensor-types.txt",
            "tiny.5.00bpw-tuned.tensor-types.txt", "tiny.imatrix.gguf"} <= names
    assert "tiny.F16.gguf" not in names
    _, bpw = size_info(out / "tiny.5.00bpw-tuned.gguf")
    assert 5.0 * 0.97 <= bpw <= 5.0 * 1.001, bpw
    stock_q3 = sum(tensor_bytes(base, planned_tensor_types(base, "Q3_K_M", imatrix=imatrix)).values())
    tuned_q3 = sum(t.n_bytes for t in __import__("gguf").GGUFReader(str(out / "tiny.Q3_K_M-tuned.gguf")).tensors)
    assert abs(tuned_q3 / stock_q3 - 1) <= 0.01
    for bad, why in ((["--tuned", "q4_k_m"], "need --calibration"), (["--tuned", "f16", "--calibration", "builtin"], "16-bit types"),
                     (["--target-bpw", "12", "--calibration", "builtin"], "between 1.5 and 8.5"), (["--tuned", "q9"], "unknown GGUF type")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["quantize", "gguf", str(src), "-o", str(tmp_path / "bad"), *bad])
        assert rc == 2 and why in err.getvalue(), (bad, err.getvalue())
        assert not (tmp_path / "bad").exists()  # refused before any conversion
