"""GGUF export and verification on tiny models built here (llama.cpp's converter, quantizer and runtime)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.extras import require_extra

require_extra("llama_cpp", "gguf")  # skipped locally without the extra; a failure in CI

from hubtool.errors import InputError, QuantizeError
from hubtool.gguf import export_gguf, verify_gguf
from hubtool.gguf.imatrix import load_imatrix
from hubtool.gguf.verify import check_rope, gguf_metadata, hf_logits, llama_logits, open_llama
from hubtool.quality.metrics import compare_logits
from tests.tiny import CHAT_TEMPLATE, corpus_text, make_tiny_llama, train_tokenizer

CARD = """Update README.md
---
license: apache-2.0
base_model: org/base-model
datasets:
- org/some-dataset
tags:
- tiny
- test-tag
model_name: Tiny Test
---
# Tiny Test
"""


def bigram_llama(out: Path, tok_dir: Path, *, layer_scale: float = 0.1, **overrides) -> Path:
    """A tiny Llama whose embeddings/head are a least-squares fit of the corpus' interpolated bigram
    log-probabilities (no SGD), with weak random layers on top.

    A random model has near-tied logits everywhere, so top-1 agreement measures noise; this one has
    next-token margins like a trained LM's, which is what the Q8_0 top-1 check needs.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    make_tiny_llama(out, tok_dir, **overrides)
    model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor(AutoTokenizer.from_pretrained(tok_dir)(corpus_text(), add_special_tokens=False)["input_ids"])
    vocab = model.config.vocab_size
    counts = torch.zeros(vocab, vocab).index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1), accumulate=True)
    unigram = (counts.sum(0) + 1) / (counts.sum() + vocab)
    logp = (0.8 * counts / counts.sum(1, keepdim=True).clamp(min=1) + 0.2 * unigram).log()
    emb = torch.randn(vocab, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    normed = emb / emb.pow(2).mean(1, keepdim=True).sqrt()
    head = torch.linalg.lstsq(normed, logp - logp.mean(1, keepdim=True)).solution
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(emb)
        model.lm_head.weight.copy_(head.T)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(layer_scale)
            layer.mlp.down_proj.weight.mul_(layer_scale)
    model.half().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def src(tmp_path_factory, tokenizer_dir) -> Path:
    # hidden 256 so every tensor row is a multiple of llama.cpp's 256-wide k-quant/IQ blocks
    out = bigram_llama(tmp_path_factory.mktemp("gguf") / "src", tokenizer_dir, hidden_size=256, intermediate_size=512)
    (out / "README.md").write_text(CARD, encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def exported(src, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("gguf-out") / "out"
    return out, export_gguf(src, out, ["f16", "q8_0", "q4_k_m"])


@pytest.fixture(scope="module")
def verified(exported, src) -> dict[str, dict]:
    out, _ = exported
    return {r["variant"]: r for r in verify_gguf([out], src, max_tokens=512, context=128)}


def test_outputs_named_sized_and_no_leftovers(exported):
    out, rows = exported
    assert [r["type"] for r in rows] == ["F16", "Q8_0", "Q4_K_M"]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["Tiny-Test.F16.gguf", "Tiny-Test.Q4_K_M.gguf", "Tiny-Test.Q8_0.gguf"]  # no temp dirs left
    bpw = {r["type"]: r["bits_per_weight"] for r in rows}
    assert 15.9 < bpw["F16"] < 16.1 and 8.4 < bpw["Q8_0"] < 8.6 and 4.5 < bpw["Q4_K_M"] < 5.5
    for r in rows:
        assert Path(r["file"]).stat().st_size == r["size_bytes"]


def test_header_reads_what_gguf_py_reads(exported, tmp_path):
    """verify's header reader (llama.cpp's C parser) gives gguf-py's values, types and tensor sizes exactly."""
    import gguf

    from hubtool.gguf.header import read_header

    out, _ = exported
    for f in sorted(out.glob("*.gguf")):
        reader = gguf.GGUFReader(str(f))
        want = {n: fld.contents() for n, fld in reader.fields.items() if not n.startswith("GGUF.")}
        full = read_header(f, strings=True)
        assert dict(full.metadata) == want
        assert [type(full.metadata[k]) for k in want] == [type(v) for v in want.values()]  # 4.0 stays float, True bool
        assert [(t.name, t.ggml_type, t.n_elements, t.n_bytes) for t in full.tensors] == \
            [(t.name, int(t.tensor_type), int(t.n_elements), int(t.n_bytes)) for t in reader.tensors]
        quick = read_header(f)  # verify's read: no string arrays (vocabulary, merges)
        skipped = {k for k, v in want.items() if isinstance(v, list) and v and isinstance(v[0], str)}
        assert "tokenizer.ggml.tokens" in skipped and set(quick.metadata) == set(want) - skipped
        assert all(quick.metadata[k] == want[k] for k in quick.metadata)
        general = read_header(f, strings=("general.",)).metadata  # the card checks' read: tags, not the vocabulary
        assert general["general.tags"] == want["general.tags"] and "tokenizer.ggml.tokens" not in general
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 60)
    with pytest.raises(InputError, match=r"junk\.gguf: not a valid GGUF file"):
        read_header(junk)


def test_quantize_from_existing_base_does_not_convert_again(exported, src, tmp_path, monkeypatch):
    import hubtool.gguf.export as export_mod

    def no_convert(*args, **kwargs):
        raise AssertionError("converter ran although base_gguf was given")

    monkeypatch.setattr(export_mod, "convert_to_gguf", no_convert)
    base = exported[0] / "Tiny-Test.F16.gguf"
    before = base.read_bytes()
    rows = export_gguf(src, tmp_path / "q", ["q8_0", "f16"], base_gguf=base)
    assert sorted(Path(r["file"]).name for r in rows) == ["Tiny-Test.F16.gguf", "Tiny-Test.Q8_0.gguf"]
    assert (tmp_path / "q" / "Tiny-Test.Q8_0.gguf").read_bytes() == (exported[0] / "Tiny-Test.Q8_0.gguf").read_bytes()
    assert base.read_bytes() == before  # the caller's base file is left in place, untouched


def test_f16_logits_match_hf_model(exported, src, verified):
    import torch
    from transformers import AutoModelForCausalLM

    assert verified["F16"]["kl_div"] < 1e-4 and verified["F16"]["top1"] >= 0.999
    ids = [1] + list(range(3, 100))
    ref = hf_logits(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32), ids)
    with open_llama(exported[0] / "Tiny-Test.F16.gguf", context=128) as llm:
        got = llama_logits(llm, ids)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()


def test_verification_loads_without_a_repacked_copy(exported):
    """llama.cpp's repack buffers double a quantized model's memory; verification loads without them,
    gets the same logits as a default load, and leaves llama-cpp-python's defaults as they were."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    path = exported[0] / "Tiny-Test.Q4_K_M.gguf"
    ids = [1] + list(range(3, 60))
    default_fn = lib.llama_model_default_params
    with open_llama(path, context=64) as llm:
        assert llm.model_params.use_extra_bufts is False
        got = llama_logits(llm, ids)
    assert lib.llama_model_default_params is default_fn and lib.llama_model_default_params().use_extra_bufts is True
    plain = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True, verbose=False)
    try:
        assert plain.model_params.use_extra_bufts is True
        ref = llama_logits(plain, ids)
    finally:
        plain.close()
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_q8_0_top1_and_ordering(verified):
    assert verified["Q8_0"]["top1"] >= 0.99
    assert verified["Q8_0"]["kl_div"] < 0.01
    assert verified["Q4_K_M"]["kl_div"] > verified["Q8_0"]["kl_div"] > verified["F16"]["kl_div"]
    assert abs(verified["Q8_0"]["perplexity"] / verified["Q8_0"]["ref_perplexity"] - 1) < 0.05


def test_verify_rows_are_the_plain_float64_metrics_of_copied_logits(exported, src, verified, tmp_path):
    """verify reads llama.cpp's rows in place and computes the metrics in float32 chunks: its row must be
    what whole-array float64 metrics give on copied logits against the same fp16 reference."""
    import math

    from transformers import AutoTokenizer

    from hubtool.quality.reference import compute_reference, gguf_windows
    from hubtool.quality.metrics import merge_metrics
    from hubtool.quality.texts import builtin_text

    def log_softmax(x):
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    windows = gguf_windows(AutoTokenizer.from_pretrained(src), builtin_text("heldout"), max_tokens=512, context=128)
    reference = compute_reference(src, windows, tmp_path / "reference")
    chunks = []
    with open_llama(exported[0] / "Tiny-Test.Q4_K_M.gguf", context=128) as llm:
        for w in windows:
            ref, got = np.array(reference.logprobs(w)), llama_logits(llm, w)  # copies, not views
            n, ids = len(w) - 1, np.asarray(w)
            r, t = log_softmax(ref[:n]), log_softmax(got[:n, : ref.shape[1]])
            rows = np.arange(n)
            chunks.append({"kl_div": float((np.exp(r) * (r - t)).sum(-1).mean()), "top1": float((r.argmax(-1) == t.argmax(-1)).mean()),
                           "perplexity": math.exp(-t[rows, ids[1:]].mean()), "ref_perplexity": math.exp(-r[rows, ids[1:]].mean()),
                           "tokens": n})
    want, row = merge_metrics(chunks), verified["Q4_K_M"]
    assert row["tokens"] == want["tokens"] and want["kl_div"] > 1e-3  # a real quantization error is measured
    assert row["kl_div"] == pytest.approx(want["kl_div"], rel=1e-3, abs=2e-6)
    assert row["top1"] == pytest.approx(want["top1"], abs=1e-4)
    assert row["perplexity"] == pytest.approx(want["perplexity"], rel=1e-4)
    assert row["ref_perplexity"] == pytest.approx(want["ref_perplexity"], rel=1e-4)


def test_card_metadata_chat_template_and_special_tokens(exported):
    out, _ = exported
    for f in ("Tiny-Test.F16.gguf", "Tiny-Test.Q4_K_M.gguf"):  # the quantizer carries everything over
        meta, _ = gguf_metadata(out / f)
        assert meta["general.name"] == "Tiny Test"
        assert meta["general.license"] == "apache-2.0"
        assert meta["general.quantized_by"] == "hubtool"
        assert meta["general.base_model.count"] == 1
        assert meta["general.base_model.0.repo_url"] == "https://huggingface.co/org/base-model"
        assert meta["general.dataset.count"] == 1
        assert "org/some-dataset" in meta["general.dataset.0.repo_url"]
        assert {"tiny", "test-tag"} <= set(meta["general.tags"])
        assert meta["general.architecture"] == "llama" and meta["llama.context_length"] == 256
        assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE
        assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
        assert meta["tokenizer.ggml.tokens"][1:3] == ["<s>", "</s>"]


def test_verify_cli_writes_quality_rows(exported, src, tmp_path):
    from hubtool.cli import main

    results = tmp_path / "quality.json"
    results.write_text(json.dumps({"rows": [{"kind": "gptq", "variant": "4bit", "perplexity": 1.0}]}))
    rc = main(["verify", "gguf", str(exported[0] / "Tiny-Test.Q8_0.gguf"), "--reference", str(src),
               "--results", str(results), "--max-tokens", "256", "--context", "128"])
    assert rc == 0
    rows = json.loads(results.read_text())["rows"]
    assert {(r["kind"], r["variant"]) for r in rows} == {("gptq", "4bit"), ("gguf", "Q8_0")}
    row = next(r for r in rows if r["kind"] == "gguf")
    assert row["top1"] >= 0.99 and row["tokens"] > 200 and row["bits_per_weight"] > 8


def test_tokenizer_mismatch_fails(exported, src, tmp_path):
    other_tok = train_tokenizer(tmp_path / "tok", vocab_size=448)
    ref = tmp_path / "ref"
    shutil.copytree(src, ref)
    for f in other_tok.iterdir():
        shutil.copy(f, ref / f.name)
    with pytest.raises(QuantizeError, match="tokenizer mismatch"):
        verify_gguf([exported[0] / "Tiny-Test.Q8_0.gguf"], ref, max_tokens=64, context=64)


def test_recorded_tokenizer_probe_replaces_the_tokenizer_and_gives_the_same_rows(exported, src, tmp_path, monkeypatch):
    """A release's reference records the tokenizer's answers and the GGUF windows: verify then loads no
    tokenizer and writes the same row; a reference taken from other tokenizer files, or for another
    token budget, is not trusted (the tokenizer is loaded), and a recorded mismatch still fails."""
    from transformers import AutoTokenizer

    import hubtool.gguf.verify as gv
    from hubtool.quality.reference import PROBE_FILE, compute_reference, probe_record, reference_windows
    from hubtool.quality.texts import read_text_source

    gguf_file = exported[0] / "Tiny-Test.Q8_0.gguf"
    tok = AutoTokenizer.from_pretrained(src)
    text = read_text_source("builtin:heldout")
    windows = reference_windows(tok, text, context=64, max_tokens=256)
    probe = probe_record(tok, src, text, windows, context=64, max_tokens=256)
    ref = compute_reference(src, windows, tmp_path / "ref", probe=probe)
    assert (ref.folder / PROBE_FILE).is_file()
    want = verify_gguf([gguf_file], src, max_tokens=256, context=64)  # its own reference, its own tokenizer

    loads = []
    real_load = gv.load_tokenizer
    monkeypatch.setattr(gv, "load_tokenizer", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    assert verify_gguf([gguf_file], src, max_tokens=256, context=64, reference=ref) == want
    assert loads == []
    # another budget than the one recorded: the tokenizer decides the windows again
    assert verify_gguf([gguf_file], src, max_tokens=128, context=64, reference=ref)[0]["tokens"] < want[0]["tokens"]
    assert len(loads) == 1

    other = tmp_path / "other"  # the same model, other tokenizer files: the record's hash no longer matches
    shutil.copytree(src, other)
    other_tok = train_tokenizer(tmp_path / "tok", vocab_size=448)
    for f in other_tok.iterdir():
        shutil.copy(f, other / f.name)
    with pytest.raises(QuantizeError, match="tokenizer mismatch"):
        verify_gguf([gguf_file], other, max_tokens=256, context=64, reference=ref)
    assert len(loads) == 2
    bad = probe["probe"] | {"test_ids": [1, 2, 3]}  # a record saying the HF tokenizer splits differently
    (ref.folder / PROBE_FILE).write_text(json.dumps(probe | {"probe": bad}))
    with pytest.raises(QuantizeError, match="tokenizer mismatch"):
        verify_gguf([gguf_file], src, max_tokens=256, context=64, reference=ref)
    assert len(loads) == 2


def test_rope_linear_x4_applied_in_llama_cpp(tmp_path, tokenizer_dir):
    import torch
    from transformers import AutoModelForCausalLM

    rope = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    scaled = make_tiny_llama(tmp_path / "scaled", tokenizer_dir, rope_parameters=rope, initializer_range=0.2)
    config = json.loads((scaled / "config.json").read_text())
    assert config["rope_parameters"]["factor"] == 4.0
    out = tmp_path / "out"
    export_gguf(scaled, out, ["f16"])
    gguf_file = out / "scaled.F16.gguf"
    meta, tensors = gguf_metadata(gguf_file)
    assert meta["llama.rope.scaling.type"] == "linear" and meta["llama.rope.scaling.factor"] == 4.0

    ids = [1] + [(7 * i) % 380 + 3 for i in range(120)]
    with open_llama(gguf_file, context=128) as llm:
        got = llama_logits(llm, ids)
    ref_scaled = hf_logits(AutoModelForCausalLM.from_pretrained(scaled, dtype=torch.float32), ids)
    plain = dict(config, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    (scaled / "config.json").write_text(json.dumps(plain))
    ref_plain = hf_logits(AutoModelForCausalLM.from_pretrained(scaled, dtype=torch.float32), ids)
    kl_scaled = compare_logits(ref_scaled, got, np.array(ids))["kl_div"]
    kl_plain = compare_logits(ref_plain, got, np.array(ids))["kl_div"]
    assert kl_scaled < 1e-4
    assert kl_plain > 100 * max(kl_scaled, 1e-7) and kl_plain > 1e-3

    check_rope(gguf_file, meta, tensors, config)  # agrees with its own config
    with pytest.raises(QuantizeError, match="RoPE mismatch"):
        check_rope(gguf_file, meta, tensors, plain)  # a GGUF scaled where the source is not
    plain_meta = {k: v for k, v in meta.items() if ".rope.scaling." not in k}
    with pytest.raises(QuantizeError, match="RoPE mismatch"):
        check_rope(gguf_file, plain_meta, tensors, config)  # the scaling lost in conversion


def test_rope_yarn_metadata(tmp_path, tokenizer_dir):
    rope = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 256}
    model = make_tiny_llama(tmp_path / "yarn", tokenizer_dir, rope_parameters=rope, max_position_embeddings=1024)
    export_gguf(model, tmp_path / "out", ["f16"])
    gguf_file = tmp_path / "out" / "yarn.F16.gguf"
    meta, tensors = gguf_metadata(gguf_file)
    assert meta["llama.rope.scaling.type"] == "yarn" and meta["llama.rope.scaling.factor"] == 4.0
    assert meta["llama.rope.scaling.original_context_length"] == 256 and meta["llama.context_length"] == 1024
    config = json.loads((model / "config.json").read_text())
    check_rope(gguf_file, meta, tensors, config)
    config["rope_parameters"]["original_max_position_embeddings"] = 512
    with pytest.raises(QuantizeError, match="original_context_length"):
        check_rope(gguf_file, meta, tensors, config)


def test_split_naming_and_same_logits(src, exported, tmp_path):
    out = tmp_path / "split"
    rows = export_gguf(src, out, ["q8_0"], split_max_size="400K", keep_f16=True)
    names = sorted(p.name for p in out.iterdir())
    q8 = sorted(n for n in names if ".Q8_0" in n)
    n = len(q8)
    assert n >= 3 and q8 == [f"Tiny-Test.Q8_0-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    assert any(x.startswith("Tiny-Test.F16-00001-of-") for x in names)  # --keep-f16 kept (and split) the base
    assert all(r["size_bytes"] < 700_000 for r in rows)
    meta, _ = gguf_metadata(out / q8[0])
    assert meta["split.count"] == n and meta["general.name"] == "Tiny Test"
    ids = [1] + list(range(3, 60))
    with open_llama(out / q8[0], context=64) as llm:
        split_logits = llama_logits(llm, ids)
    with open_llama(exported[0] / "Tiny-Test.Q8_0.gguf", context=64) as llm:
        whole_logits = llama_logits(llm, ids)
    np.testing.assert_allclose(split_logits, whole_logits, atol=1e-5)


def test_iq_types_with_computed_and_reused_imatrix(src, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text(corpus_text()[:20000], encoding="utf-8")
    out = tmp_path / "iq"
    rows = export_gguf(src, out, ["iq4_xs"], calibration=str(calib))
    assert [r["type"] for r in rows] == ["IQ4_XS"]
    imatrix_file = out / "Tiny-Test.imatrix.gguf"
    matrix = load_imatrix(imatrix_file)
    assert matrix["blk.0.attn_q.weight"].shape == (256,) and matrix["blk.1.ffn_down.weight"].shape == (512,)
    assert all(np.all(v > 0) for v in matrix.values())
    rows2 = export_gguf(src, tmp_path / "iq2", ["iq2_xs"], imatrix=imatrix_file)
    assert 2.0 < rows2[0]["bits_per_weight"] < rows[0]["bits_per_weight"] < 5.0
    q = {r["variant"]: r for r in verify_gguf([out, tmp_path / "iq2"], src, max_tokens=256, context=128)}
    assert q["IQ4_XS"]["kl_div"] < q["IQ2_XS"]["kl_div"] and q["IQ4_XS"]["top1"] > 0.8


def _tiny_qwen2(model_dir: Path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False, initializer_range=0.2)
    Qwen2ForCausalLM(cfg).half().save_pretrained(model_dir)


def _tiny_mixtral(model_dir: Path):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=256,
                        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, initializer_range=0.2)
    MixtralForCausalLM(cfg).half().save_pretrained(model_dir)


@pytest.mark.parametrize("family,build,arch,marker", [
    ("qwen2", _tiny_qwen2, "qwen2", "blk.0.attn_q.bias"),
    ("mixtral", _tiny_mixtral, "llama", "blk.0.ffn_gate_exps.weight"),
])
def test_other_families_convert_and_match(tmp_path, tokenizer_dir, family, build, arch, marker):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model_dir = tmp_path / family
    build(model_dir)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, model_dir / f.name)
    export_gguf(model_dir, tmp_path / "out", ["f16"])
    gguf_file = tmp_path / "out" / f"{family}.F16.gguf"
    meta, tensors = gguf_metadata(gguf_file)
    assert meta["general.architecture"] == arch and marker in tensors
    ids = [1] + list(range(3, 90))
    with open_llama(gguf_file, context=128) as llm:
        got = llama_logits(llm, ids)
    ref = hf_logits(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), ids)
    assert compare_logits(ref, got, np.array(ids))["kl_div"] < 1e-4


def test_existing_output_refused_without_overwrite(exported, src):
    out, _ = exported
    with pytest.raises(InputError, match="--overwrite"):
        export_gguf(src, out, ["q8_0"])


def test_llama_cpp_warnings_stay_off_stderr_without_verbose(exported, capfd):
    """ggml numbers WARN 3 and ERROR 4; llama-cpp-python's filter read them as ERROR and DEBUG, so warnings
    such as `n_ctx_seq (512) > n_ctx_train (0)` (a vocab-only load) reached stderr. Only with --verbose now."""
    from hubtool.gguf.verify import open_llama
    from hubtool.progress import quiet_libraries

    path = exported[0] / "Tiny-Test.Q8_0.gguf"
    with quiet_libraries(False):
        with open_llama(path, context=512, vocab_only=True):
            pass
    quiet = capfd.readouterr().err
    with open_llama(path, context=512, vocab_only=True):  # as under --verbose: the library's log is shown
        pass
    verbose = capfd.readouterr().err
    assert "n_ctx_train (0)" in verbose and "n_ctx_train" not in quiet
