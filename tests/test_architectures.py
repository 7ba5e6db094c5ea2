"""Every step on tiny random models of each architecture family the engines support.

Models come from transformers' own config classes (tests/tiny.py: hidden 64, 2 layers; MoE 4
experts). Per architecture: the streamed merge against PEFT's merge_and_unload (tensors and logits),
GGUF f16/q8_0 through llama.cpp against the HF logits, GPTQ load and perplexity against RTN, and a
release dry-run. The README's architecture table is filled from what these tests ran.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from hubtool.errors import InputError, MergeError
from hubtool.merge import merge_adapter
from tests.peft_helpers import folder_tensors, logits, make_adapter, peft_reference
from tests.tiny import (
    ARCHITECTURES, BPE_ARCHITECTURES, GEMMA_TOKENIZER_ARCHITECTURES, GGUF_UNTESTED, MOE_ARCHITECTURES, bpe_tokenizer, gemma_tokenizer,
    make_tiny_model,
)

ARCHS = list(ARCHITECTURES)
EXPERT_PARAMS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]  # transformers 5's fused 3-D expert weights
IDS = torch.tensor([[1, 17, 42, 99, 150, 7, 260, 33, 301, 12, 5, 77]])


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory) -> Path:
    return bpe_tokenizer(tmp_path_factory.mktemp("bpe-tokenizer"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer_dir, bpe_tokenizer_dir):
    """arch -> a saved tiny fp16 model of it, built on first use and shared by every test here."""
    root = tmp_path_factory.mktemp("arch-models")
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            tok = bpe_tokenizer_dir if arch in BPE_ARCHITECTURES else tokenizer_dir
            if arch in GEMMA_TOKENIZER_ARCHITECTURES:
                tok = root / "gemma-tokenizer"
                if not tok.is_dir():
                    gemma_tokenizer(tokenizer_dir, tok)
            built[arch] = make_tiny_model(arch, root / arch, tok, seed=3)
        return built[arch]

    return get


def _lora_kwargs(arch: str) -> dict:
    kw: dict = {"target_modules": "all-linear"}  # every Linear: fused qkv_proj/gate_up_proj, routers, shared experts
    if arch in MOE_ARCHITECTURES:
        kw["target_parameters"] = list(EXPERT_PARAMS)
    return kw


def _assert_merge_matches_peft(base: Path, adapter: Path, merged: Path, tmp: Path) -> None:
    from transformers import AutoModelForCausalLM

    ref = peft_reference(base, adapter)
    ours = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    want, got = logits(ref, IDS), logits(ours, IDS)
    assert torch.allclose(got, want, rtol=0, atol=2e-3 * float(want.abs().max())), float((got - want).abs().max())
    # tensor by tensor, in the checkpoint layout transformers itself saves (per-expert for MoE)
    ref.save_pretrained(tmp / "peft-merged")
    want_t, got_t = folder_tensors(tmp / "peft-merged"), folder_tensors(merged)
    assert set(got_t) == set(want_t)
    for name, w in want_t.items():
        assert torch.allclose(got_t[name], w, rtol=1e-3, atol=1e-5), name  # fp16 rounding of the fp32 reference


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_matches_peft(arch, tiny_models, tmp_path):
    base = tiny_models(arch)
    adapter = make_adapter(base, tmp_path / "adapter", **_lora_kwargs(arch))
    summary = merge_adapter(base, adapter, tmp_path / "merged")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert summary.merged_modules > 0 and (arch not in MOE_ARCHITECTURES or cfg["target_parameters"])
    _assert_merge_matches_peft(base, adapter, tmp_path / "merged", tmp_path)


def _legacy_expert_adapter(peft_adapter: Path, out: Path, base_names: set[str], experts: int) -> Path:
    """The same expert LoRA as PEFT's fused target_parameters, re-expressed as per-expert Linear LoRAs
    (w1/w2/w3 or gate/up/down_proj per expert), the layout adapters trained with transformers 4 have."""
    out.mkdir()
    cfg = json.loads((peft_adapter / "adapter_config.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    with safe_open(str(peft_adapter / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            if ".experts." not in key:
                tensors[key] = f.get_tensor(key)
                continue
            if not key.endswith("lora_A.weight"):
                continue
            module = key[len("base_model.model."): -len(".lora_A.weight")]
            param = "gate_up_proj" if module.endswith(".base_layer") else "down_proj"  # PEFT nests in list order
            owner = module.removesuffix(".base_layer")
            a, b = f.get_tensor(key), f.get_tensor(key.replace("lora_A", "lora_B"))
            r = a.shape[0] // experts
            ranks[param] = r
            for e in range(experts):
                a_e = a.reshape(experts, r, -1)[e]
                b_e = b.reshape(b.shape[0], r, experts)[:, :, e]
                if param == "down_proj":
                    parts = [("w2", "down_proj", b_e)]
                else:
                    half = b_e.shape[0] // 2
                    parts = [("w1", "gate_proj", b_e[:half]), ("w3", "up_proj", b_e[half:])]
                for mixtral_name, qwen_name, b_part in parts:
                    disk = f"{owner.replace('.mlp.', '.block_sparse_moe.')}.{e}.{mixtral_name}"
                    if f"{disk}.weight" not in base_names:
                        disk = f"{owner}.{e}.{qwen_name}"
                    tensors[f"base_model.model.{disk}.lora_A.weight"] = a_e.clone()
                    tensors[f"base_model.model.{disk}.lora_B.weight"] = b_part.clone()
    from safetensors.torch import save_file

    save_file(tensors, str(out / "adapter_model.safetensors"))
    cfg.pop("target_parameters")
    # same scale (alpha/r) per expert Linear as PEFT gave each fused parameter
    pattern = {"gate_up_proj": r"experts\.\d+\.(w1|w3|gate_proj|up_proj)", "down_proj": r"experts\.\d+\.(w2|down_proj)"}
    cfg["rank_pattern"] = {pattern[p]: r for p, r in ranks.items()}
    cfg["alpha_pattern"] = {pattern[p]: cfg["lora_alpha"] * r / cfg["r"] for p, r in ranks.items()}
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("arch", ["MixtralForCausalLM", "Qwen3MoeForCausalLM"])
def test_merge_per_expert_linear_adapter(arch, tiny_models, tmp_path):
    """Older adapters hold one LoRA per expert Linear; merged, they equal PEFT's fused-parameter result."""
    base = tiny_models(arch)
    fused = make_adapter(base, tmp_path / "fused", target_modules=["q_proj"], target_parameters=EXPERT_PARAMS)
    names = set(folder_tensors(base))
    experts = len({n.split(".experts.")[1].split(".")[0] for n in names if ".experts." in n})
    legacy = _legacy_expert_adapter(fused, tmp_path / "legacy", names, experts)
    merge_adapter(base, legacy, tmp_path / "merged")
    got, want = folder_tensors(tmp_path / "merged"), folder_tensors(_merged(base, fused, tmp_path / "merged-fused"))
    assert any(".experts.3." in n for n in got)
    for name, w in want.items():
        assert torch.allclose(got[name], w, rtol=1e-3, atol=1e-5), name


def _merged(base: Path, adapter: Path, out: Path) -> Path:
    merge_adapter(base, adapter, out)
    return out


def test_expert_adapter_rank_mismatch_names_the_layout(tiny_models, tmp_path):
    """A target_parameters adapter whose factors don't fit r·experts is refused with the expected layout, not a rank blame."""
    base = tiny_models("MixtralForCausalLM")
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"], target_parameters=EXPERT_PARAMS)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["r"] = 3  # 16 rows (4 experts × r=4) are not a multiple of 3
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MergeError, match=r"target_parameters.*r·experts") as err:
        merge_adapter(base, adapter, tmp_path / "merged")
    assert "has rank" not in str(err.value)


@pytest.mark.parametrize("arch", ["Gemma3ForCausalLM", "Qwen3ForCausalLM"])
@pytest.mark.parametrize("how", ["lora", "modules_to_save"])
def test_tied_embeddings_follow_peft(arch, how, tiny_models, tmp_path):
    """LoRA on a tied embedding moves the head with it (tied kept); modules_to_save trains an untied copy (untied, head kept)."""
    base = tiny_models(arch)
    assert json.loads((base / "config.json").read_text()).get("tie_word_embeddings", True)
    kw = {"target_modules": ["q_proj", "embed_tokens"]} if how == "lora" else {"target_modules": ["q_proj"], "modules_to_save": ["embed_tokens"]}
    adapter = make_adapter(base, tmp_path / "adapter", **kw)
    summary = merge_adapter(base, adapter, tmp_path / "merged")
    merged = tmp_path / "merged"
    cfg = json.loads((merged / "config.json").read_text())
    names = set(folder_tensors(merged))
    if how == "lora":
        assert cfg["tie_word_embeddings"] is True and "lm_head.weight" not in names  # no untied copy for loaders to trip on
    else:
        assert cfg["tie_word_embeddings"] is False and summary.config_changes["tie_word_embeddings"] is False
        t = folder_tensors(merged)
        base_embed = folder_tensors(base)["model.embed_tokens.weight"]
        assert torch.equal(t["lm_head.weight"], base_embed) and not torch.equal(t["model.embed_tokens.weight"], base_embed)
    from transformers import AutoModelForCausalLM

    ours = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    want, got = logits(peft_reference(base, adapter), IDS), logits(ours, IDS)
    assert torch.allclose(got, want, rtol=0, atol=2e-3 * float(want.abs().max()))


# ---- GGUF -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in GGUF_UNTESTED])
def test_gguf_logits_match_hf(arch, tiny_models, tmp_path):
    """Converted by llama.cpp's own converter (any architecture it registers), checked like `verify gguf` does, logits vs HF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtool.gguf import export_gguf
    from hubtool.gguf.verify import check_rope, check_tokenizer, gguf_metadata, llama_logits, open_llama

    model_dir = tiny_models(arch)
    rows = export_gguf(model_dir, tmp_path / "gguf", ["f16", "q8_0"], name="tiny")
    config = json.loads((model_dir / "config.json").read_text())
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("def f(x): return the value of x, or None when it is missing.")["input_ids"][:24]
    want = logits(hf, torch.tensor([ids]))[0].numpy()
    errors = {}
    for row in rows:
        path = Path(row["file"])
        meta, tensors = gguf_metadata(path)
        check_rope(path, meta, tensors, config)
        with open_llama(path, context=64) as llm:
            check_tokenizer(path, llm, tok, meta)
            got = llama_logits(llm, ids)[:, : want.shape[1]]
        errors[row["type"]] = float(np.abs(got - want).max() / np.abs(want).max())
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= (0.95 if row["type"] == "F16" else 0.75), row["type"]
    assert errors["F16"] < 0.06 and errors["Q8_0"] < 0.1, errors


def test_gguf_rope_per_layer_type(tiny_models, tmp_path):
    """Gemma-3's sliding layers run at their own base frequency: a GGUF that lost it is refused."""
    from hubtool.errors import QuantizeError
    from hubtool.gguf import export_gguf
    from hubtool.gguf.verify import check_rope, gguf_metadata

    model_dir = tiny_models("Gemma3ForCausalLM")
    path = Path(export_gguf(model_dir, tmp_path / "gguf", ["f16"], name="g")[0]["file"])
    meta, tensors = gguf_metadata(path)
    config = json.loads((model_dir / "config.json").read_text())
    assert set(config["rope_parameters"]) == {"full_attention", "sliding_attention"}
    check_rope(path, meta, tensors, config)
    assert meta["gemma3.rope.freq_base_swa"] == config["rope_parameters"]["sliding_attention"]["rope_theta"]
    other = json.loads(json.dumps(config))
    other["rope_parameters"]["sliding_attention"]["rope_theta"] = 5000.0
    with pytest.raises(QuantizeError, match="sliding-window freq_base"):
        check_rope(path, meta, tensors, other)
    lost = {k: v for k, v in meta.items() if k != "gemma3.rope.freq_base_swa"}
    with pytest.raises(QuantizeError, match="freq_base_swa"):
        check_rope(path, lost, tensors, config)


# ---- release dry-run: every per-architecture check at plan time -----------------------------------

def _dry_run(argv: list[str], capsys) -> tuple[int, dict]:
    from hubtool.cli import main

    rc = main(["release", *argv, "--namespace", "me", "--dry-run", "--json"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("arch", ARCHS)
def test_release_dry_run_checks_architecture(arch, tiny_models, tmp_path, capsys):
    base = tiny_models(arch)
    adapter = make_adapter(base, tmp_path / "adapter", **_lora_kwargs(arch))
    config = tmp_path / "release.yaml"  # the adapter names a local base: the cards need its Hub id
    config.write_text("card:\n  base_model: org/tiny-base\n")
    argv = ["--base", str(base), "--adapter", str(adapter), "--name", "x", "--config", str(config)]
    if arch == "Phi3ForCausalLM":  # GPTQ refused in the plan (see test_gptq_refuses_phi3_split_layout_up_front)
        rc, out = _dry_run(argv, capsys)
        assert rc == 2 and "gate_proj" in out["error"]
        argv += ["--quants", "gguf"]
    rc, out = _dry_run(argv, capsys)
    assert rc == 0, out
    checks = "\n".join(out["plan"]["checks"])
    assert arch in checks and "gguf: llama.cpp converter maps it to" in checks
    assert ("gptq: gptqmodel definition" in checks) == (arch != "Phi3ForCausalLM")
    assert "merge: " in checks and ("target_parameters" in checks) == (arch in MOE_ARCHITECTURES)


def _with_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_dry_run_refuses_unconvertible_architecture(tiny_models, tmp_path, capsys):
    model = _with_config(tiny_models("LlamaForCausalLM"), tmp_path / "m", architectures=["NoSuchModelForCausalLM"])
    rc, out = _dry_run([str(model), "--quants", "gguf"], capsys)
    assert rc == 2 and "NoSuchModelForCausalLM is not supported for GGUF" in out["error"] and "Gemma3ForCausalLM" in out["error"]


def test_dry_run_refuses_gptq_unsupported_model_type(tiny_models, tmp_path, capsys):
    model = _with_config(tiny_models("LlamaForCausalLM"), tmp_path / "m", model_type="no_such_type")
    rc, out = _dry_run([str(model), "--quants", "gptq"], capsys)
    assert rc == 2 and "no_such_type" in out["error"] and "not supported by the installed gptqmodel" in out["error"]


def test_dry_run_refuses_adapter_for_other_layout(tiny_models, tmp_path, capsys):
    """An adapter made for another architecture fails in the plan (merge target layout), not after the merge started."""
    adapter = make_adapter(tiny_models("Phi3ForCausalLM"), tmp_path / "adapter", target_modules=["qkv_proj"])
    rc, out = _dry_run(["--base", str(tiny_models("LlamaForCausalLM")), "--adapter", str(adapter), "--name", "x"], capsys)
    assert rc == 3 and "qkv_proj" in out["error"]


# ---- custom code (auto_map) -------------------------------------------------------------------------

CUSTOM_CODE = '''from transformers import LlamaConfig, LlamaForCausalLM


class TinyCustomConfig(LlamaConfig):
    model_type = "llama"


class TinyCustomForCausalLM(LlamaForCausalLM):
    config_class = TinyCustomConfig
'''


@pytest.fixture
def custom_code_model(tiny_models, tmp_path) -> Path:
    model = _with_config(tiny_models("LlamaForCausalLM"), tmp_path / "custom", auto_map={
        "AutoConfig": "modeling_tiny.TinyCustomConfig", "AutoModelForCausalLM": "modeling_tiny.TinyCustomForCausalLM"})
    (model / "modeling_tiny.py").write_text(CUSTOM_CODE)
    return model


def test_custom_code_refused_without_flag(custom_code_model, tmp_path, capsys):
    from hubtool.cli import main

    adapter = make_adapter(tiny_models_base(custom_code_model, tmp_path), tmp_path / "adapter")
    capsys.readouterr()
    rc = main(["merge", str(custom_code_model), str(adapter), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--trust-remote-code" in err and "modeling_tiny.TinyCustomForCausalLM" in err
    assert not (tmp_path / "out").exists()
    rc, out = _dry_run([str(custom_code_model), "--quants", "gguf"], capsys)
    assert rc == 2 and "--trust-remote-code" in out["error"]


def tiny_models_base(custom: Path, tmp_path: Path) -> Path:
    """The same weights without auto_map, for PEFT to build an adapter on."""
    plain = tmp_path / "plain"
    shutil.copytree(custom, plain)
    cfg = json.loads((plain / "config.json").read_text())
    cfg.pop("auto_map")
    (plain / "config.json").write_text(json.dumps(cfg))
    return plain


def test_custom_code_ships_with_flag(custom_code_model, tmp_path, capsys):
    from hubtool.cli import main

    adapter = make_adapter(tiny_models_base(custom_code_model, tmp_path), tmp_path / "adapter")
    assert main(["merge", str(custom_code_model), str(adapter), "-o", str(tmp_path / "out"), "--trust-remote-code"]) == 0
    assert (tmp_path / "out" / "modeling_tiny.py").read_text() == CUSTOM_CODE
    assert json.loads((tmp_path / "out" / "config.json").read_text())["auto_map"]
    capsys.readouterr()
    rc, out = _dry_run([str(custom_code_model), "--quants", "gguf", "--trust-remote-code"], capsys)
    assert rc == 0 and any("modeling_tiny.py" in c for c in out["plan"]["checks"])
    assert any(c.startswith("verify: TinyCustomForCausalLM evaluated block by block") and "2 blocks (model.layers)" in c
               for c in out["plan"]["checks"]), out["plan"]["checks"]


def test_plain_model_needs_no_flag(tiny_models):
    from hubtool.model_dir import load_model_dir

    assert not load_model_dir(tiny_models("LlamaForCausalLM")).remote_code
    with pytest.raises(InputError):
        from hubtool.model_dir import check_remote_code

        check_remote_code(Path("x"), {"auto_map": {"AutoModel": "m.M"}}, trust_remote_code=False)


# ---- GPTQ -------------------------------------------------------------------------------------------
# Dense families with different layer trees (fused qkv/gate_up, q/k norms, sliding layers) and both MoE layouts.
GPTQ_ARCHS = ["Qwen3ForCausalLM", "Gemma3ForCausalLM", "MixtralForCausalLM", "Qwen3MoeForCausalLM"]


@pytest.mark.parametrize("arch", GPTQ_ARCHS)
def test_gptq_every_layer_and_expert(arch, tiny_models, tmp_path, monkeypatch):
    """gptqmodel's own definition for the architecture: every decoder Linear quantized (every expert of a MoE),
    the checkpoint loads in transformers, and its perplexity is measured next to round-to-nearest."""
    from hubtool.gptq import load_preset, quantize_gptq, verify_gptq

    model_dir = tiny_models(arch)
    monkeypatch.chdir(tmp_path)
    preset = load_preset("gptq-4bit-32g-actorder", {"samples": 16, "seq_len": 64})
    quantize_gptq(model_dir, tmp_path / "gptq", preset, device="cpu")
    base, quant = folder_tensors(model_dir), folder_tensors(tmp_path / "gptq")
    # gptqmodel may split fused projections (Phi-3 gate_up_proj) or rename experts (Mixtral w1 -> gate_proj):
    # count quantized weights, not names. qweight is int32 [in·bits/32, out].
    linear = sum(t.numel() for n, t in base.items() if ".layers." in n and t.dim() == 2 and (n.endswith("proj.weight") or ".experts." in n))
    packed = sum(t.shape[0] * 32 // preset.bits * t.shape[1] for n, t in quant.items() if n.endswith(".qweight"))
    assert packed == linear, (packed, linear)
    if arch in MOE_ARCHITECTURES:
        assert sum(".experts." in n and n.endswith(".qweight") for n in quant) == 2 * 4 * 3  # layers × experts × projections
    assert "unquantized" not in json.loads((tmp_path / "gptq" / "quantize_config.json").read_text())["meta"]
    rows = {r["kind"]: r for r in verify_gptq(tmp_path / "gptq", model_dir, rtn=True, context=64, max_tokens=256)}
    assert math.isfinite(rows["gptq"]["perplexity"]) and math.isfinite(rows["rtn"]["perplexity"])
    assert rows["gptq"]["kl_div"] <= rows["rtn"]["kl_div"] * 1.5, rows  # GPTQ is no worse than RTN beyond noise


def test_gptq_refuses_phi3_split_layout_up_front(tiny_models, tmp_path):
    """gptqmodel 7.6 splits Phi-3's fused gate_up_proj; transformers can't load that (measured: IndexError in the
    quantized gate_up_proj). Refused before calibration, naming the module, instead of a broken repo."""
    from hubtool.gptq import load_preset, quantize_gptq

    with pytest.raises(InputError, match=r"Phi3QModel quantizes mlp\.gate_proj.*Phi3ForCausalLM.*would not load"):
        quantize_gptq(tiny_models("Phi3ForCausalLM"), tmp_path / "out", load_preset("gptq-4bit-32g-actorder", {"samples": 4, "seq_len": 32}), device="cpu")
    assert not (tmp_path / "out").exists()


def test_gptq_names_experts_left_unquantized(tiny_models, tmp_path):
    """An expert gptqmodel skipped (no calibration token routed to it) is named, for quantize_config.json and the card."""
    from safetensors.torch import save_file

    from hubtool.card.facts import gptq_facts
    from hubtool.gptq.quantize import _unquantized
    from hubtool.model_dir import load_model_dir

    source = load_model_dir(tiny_models("MixtralForCausalLM"))
    raw = tmp_path / "raw"
    raw.mkdir()
    q = {}
    for n in source.tensor_names():
        if n.endswith("proj.weight") or (".experts." in n and ".experts.3." not in n):  # expert 3 left out, w1 renamed
            q[n[: -len(".weight")].replace("block_sparse_moe", "mlp").replace(".w1", ".gate_proj") + ".qweight"] = torch.zeros(1, dtype=torch.int32)
    save_file(q, str(raw / "model.safetensors"))
    assert _unquantized(source, raw) == ["layer 0 expert 3", "layer 1 expert 3"]
    (tmp_path / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 32, "meta": {"unquantized": ["layer 0 expert 3"]}}))
    assert gptq_facts(tmp_path, {})["unquantized"] == ["layer 0 expert 3"]


def test_gptq_refuses_unsupported_model_type(tiny_models, tmp_path):
    from hubtool.gptq import load_preset, quantize_gptq

    model = _with_config(tiny_models("LlamaForCausalLM"), tmp_path / "m", model_type="no_such_type")
    with pytest.raises(InputError, match="no_such_type.*not supported by the installed gptqmodel"):
        quantize_gptq(model, tmp_path / "out", load_preset("gptq-4bit-32g-actorder", {"samples": 4, "seq_len": 32}), device="cpu")
    assert not (tmp_path / "out").exists()


def test_gguf_refuses_untied_head_the_converter_drops(tiny_models, tmp_path):
    """modules_to_save on Gemma-2's tied embedding unties it (as PEFT does); llama.cpp's Gemma-2 converter drops
    lm_head, so the GGUF export refuses rather than silently running the embedding as head."""
    from hubtool.errors import QuantizeError
    from hubtool.gguf import export_gguf

    base = tiny_models("Gemma2ForCausalLM")
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"], modules_to_save=["embed_tokens"])
    merge_adapter(base, adapter, tmp_path / "merged")
    with pytest.raises(QuantizeError, match="drops it"):
        export_gguf(tmp_path / "merged", tmp_path / "gguf", ["f16"], name="g")
    assert not list(tmp_path.rglob("*.gguf"))  # nothing half-right left behind
