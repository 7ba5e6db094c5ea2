"""The original Qwen layout (custom code: QWenLMHeadModel, model_type qwen, qwen.tiktoken) through every step.

The model is ours (tests/qwen_custom, built by tests/tiny.make_tiny_qwen): the published parameter names and
config keys, its own modeling/tokenizer code, loaded with trust_remote_code=True. One session-scoped model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.peft_helpers import folder_tensors, logits, make_adapter, peft_reference

QWEN_TARGETS = ["c_attn", "c_proj", "w1", "w2"]  # c_proj: attention and MLP output both


@pytest.fixture(scope="session")
def qwen_model(tmp_path_factory) -> Path:
    pytest.importorskip("tiktoken")
    from tests.tiny import bpe_tokenizer, make_tiny_qwen

    root = tmp_path_factory.mktemp("qwen-custom")
    return make_tiny_qwen(root / "tiny-qwen", bpe_tokenizer(root / "bpe"), seed=5)


@pytest.fixture(scope="session")
def qwen_adapter(qwen_model, tmp_path_factory) -> Path:
    return make_adapter(qwen_model, tmp_path_factory.mktemp("qwen-adapter") / "adapter", target_modules=QWEN_TARGETS, trust_remote_code=True)


def _text_ids(tokenizer, n: int = 64) -> list[int]:
    from hubtool.text_windows import encode
    from hubtool.quality.texts import read_text_source

    return encode(tokenizer, read_text_source("builtin:heldout"), max_tokens=n)


def test_layout_is_original_qwen(qwen_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = json.loads((qwen_model / "config.json").read_text())
    assert cfg["model_type"] == "qwen" and cfg["architectures"] == ["QWenLMHeadModel"]
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_qwen.QWenLMHeadModel"
    assert {"kv_channels", "rotary_emb_base", "seq_length", "layer_norm_epsilon", "intermediate_size", "rotary_pct"} <= set(cfg)
    names = set(folder_tensors(qwen_model))
    per_layer = {"ln_1.weight", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "ln_2.weight",
                 "mlp.w1.weight", "mlp.w2.weight", "mlp.c_proj.weight"}
    want = {f"transformer.h.{i}.{p}" for i in range(2) for p in per_layer} | {"transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight"}
    assert names == want
    t = folder_tensors(qwen_model)
    assert t["transformer.h.0.mlp.w1.weight"].shape == (cfg["intermediate_size"] // 2, cfg["hidden_size"])
    tok = AutoTokenizer.from_pretrained(qwen_model, trust_remote_code=True)
    assert type(tok).__name__ == "QWenTokenizer" and len(tok.mergeable_ranks) > 1000 and "<|endoftext|>" in tok.special_tokens
    ids = _text_ids(tok)
    assert tok.decode(ids) and max(ids) < cfg["vocab_size"]
    model = AutoModelForCausalLM.from_pretrained(qwen_model, trust_remote_code=True, dtype=torch.float32)
    assert type(model).__name__ == "QWenLMHeadModel" and torch.isfinite(logits(model, torch.tensor([ids]))).all()


def test_merge_matches_peft(qwen_model, qwen_adapter, tmp_path):
    """LoRA on the fused c_attn (with bias), both c_proj and w1/w2, merged by hubtool vs PEFT's merge_and_unload."""
    from transformers import AutoModelForCausalLM

    from hubtool.merge import merge_adapter

    summary = merge_adapter(qwen_model, qwen_adapter, tmp_path / "merged", trust_remote_code=True)
    assert summary.merged_modules == 2 * 5
    ref = peft_reference(qwen_model, qwen_adapter, trust_remote_code=True)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32, trust_remote_code=True).eval()
    ids = torch.tensor([list(range(100, 132))])
    ref_sd = {k: v.float() for k, v in ref.state_dict().items()}
    # logits against PEFT's merge rounded to fp16 as a saved checkpoint would be: the peaked test attention
    # (c_attn std 0.3) turns fp16 rounding alone into ~0.3% of the logit range vs the fp32 model
    ref.half().float()
    want, got = logits(ref, ids), logits(ours, ids)
    assert torch.allclose(got, want, rtol=0, atol=2e-3 * float(want.abs().max())), float((got - want).abs().max())
    base, merged = folder_tensors(qwen_model), folder_tensors(tmp_path / "merged")
    assert set(merged) == set(base)
    for name, w in merged.items():
        assert torch.allclose(w, ref_sd[name], rtol=1e-3, atol=1e-5), name  # fp16 rounding of the fp32 reference
    changed = {n for n in merged if not torch.equal(merged[n], base[n])}
    assert changed == {f"transformer.h.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj")}
    for f in ("modeling_qwen.py", "configuration_qwen.py", "tokenization_qwen.py", "qwen.tiktoken"):
        assert (tmp_path / "merged" / f).read_bytes() == (qwen_model / f).read_bytes()


def test_gguf_logits_match_hf(qwen_model, tmp_path):
    """llama.cpp's converter (QwenModel, tiktoken vocabulary via the folder's own tokenizer code) to F16 and Q8_0,
    checked like `verify gguf` (RoPE, tokenizer ids, chat turn) and logits against the HF model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtool.gguf import export_gguf
    from hubtool.gguf.verify import check_rope, check_tokenizer, gguf_metadata, llama_logits, open_llama

    rows = export_gguf(qwen_model, tmp_path / "gguf", ["f16", "q8_0"], name="tiny", trust_remote_code=True)
    config = json.loads((qwen_model / "config.json").read_text())
    hf = AutoModelForCausalLM.from_pretrained(qwen_model, dtype=torch.float32, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(qwen_model, trust_remote_code=True)
    ids = _text_ids(tok, 96)
    want = logits(hf, torch.tensor([ids]))[0].numpy()
    agree, errors = {}, {}
    for row in rows:
        path = Path(row["file"])
        meta, tensors = gguf_metadata(path)
        assert meta["general.architecture"] == "qwen" and meta["qwen.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
        check_rope(path, meta, tensors, config)
        with open_llama(path, context=128) as llm:
            check_tokenizer(path, llm, tok, meta)
            got = llama_logits(llm, ids)[:, : want.shape[1]]
        agree[row["type"]] = float((got.argmax(-1) == want.argmax(-1)).mean())
        errors[row["type"]] = float(np.abs(got - want).max() / np.abs(want).max())
    print("qwen gguf top-1", agree, "max rel err", errors)
    assert agree["F16"] >= 0.95 and agree["Q8_0"] >= 0.75, agree
    # the peaked attention (c_attn std 0.3) amplifies Q8_0 rounding: measured F16 0.004, Q8_0 0.25 of max |logit|
    assert errors["F16"] < 0.06 and errors["Q8_0"] < 0.35, errors


def test_gptq_every_linear(qwen_model, tmp_path, monkeypatch):
    """gptqmodel's `qwen` definition: every Linear of every block quantized (c_attn, c_proj, w1, w2, mlp.c_proj),
    the checkpoint loads in transformers with the model's own code, and GPTQ is closer to fp16 than RTN."""
    from transformers import AutoModelForCausalLM

    from hubtool.gptq import load_preset, quantize_gptq, verify_gptq

    monkeypatch.chdir(tmp_path)
    preset = load_preset("gptq-4bit-32g-actorder", {"samples": 16, "seq_len": 64})
    quantize_gptq(qwen_model, tmp_path / "gptq", preset, device="cpu", trust_remote_code=True)
    quant = folder_tensors(tmp_path / "gptq")
    want = {f"transformer.h.{i}.{m}.qweight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj")}
    assert {n for n in quant if n.endswith(".qweight")} == want
    assert "unquantized" not in json.loads((tmp_path / "gptq" / "quantize_config.json").read_text())["meta"]
    for f in ("modeling_qwen.py", "tokenization_qwen.py", "qwen.tiktoken"):
        assert (tmp_path / "gptq" / f).is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "gptq", trust_remote_code=True, device_map="cpu")
    assert torch.isfinite(logits(model, torch.tensor([list(range(100, 120))]))).all()
    rows = {r["kind"]: r for r in verify_gptq(tmp_path / "gptq", qwen_model, rtn=True, context=64, max_tokens=512, trust_remote_code=True)}
    print("qwen gptq", {k: (r["perplexity"], r["kl_div"], r["top1"]) for k, r in rows.items()})
    assert math.isfinite(rows["gptq"]["perplexity"])
    assert rows["gptq"]["kl_div"] < rows["rtn"]["kl_div"], rows


def test_streamed_evaluation_matches_in_memory(qwen_model):
    """The streamed evaluator builds QWenLMHeadModel from the folder's own code (trusted), finds transformer.h,
    wte, ln_f and lm_head generically, and gives transformers' in-memory log-probs; refused without the trust."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtool.errors import InputError
    from hubtool.quality.stream import StreamingModel, stream_logprobs, streaming_check

    with pytest.raises(InputError, match="--trust-remote-code"):
        StreamingModel(qwen_model)
    model = StreamingModel(qwen_model, device="cpu", trust_remote_code=True)
    assert [model._name(b) for b in model.blocks] == ["transformer.h.0", "transformer.h.1"]
    assert model._name(model.embed) == "transformer.wte" and model._name(model.head) == "lm_head" and not model.tied
    assert "2 blocks (transformer.h)" in streaming_check(qwen_model, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(qwen_model, trust_remote_code=True)
    ids = _text_ids(tok, 96)
    windows = [ids[:40], ids[40:96]]  # unequal lengths: the padded batch path
    got = stream_logprobs(model, windows, chunk_rows=4096)  # several head chunks
    hf = AutoModelForCausalLM.from_pretrained(qwen_model, dtype=torch.float32, trust_remote_code=True).eval()
    for w, g in zip(windows, got):
        want = torch.log_softmax(logits(hf, torch.tensor([w]))[0].double(), -1).float().numpy()
        assert g.shape == want.shape and np.abs(g - want).max() < 1e-4, np.abs(g - want).max()


QWEN_LICENSE = "https://huggingface.co/Qwen/Qwen-14B/blob/main/LICENSE"
QWEN_RELEASE_YAML = """\
name: tiny-qwen-chat
namespace: acme
quants: [gptq, gguf]
gptq: {presets: [gptq-4bit-32g-actorder], samples: 8, seq_len: 64}
gguf: {types: [q8_0]}
verify: {max_tokens: 256, context: 64, gates: {min_top1: null}}
card:
  base_model: acme/tiny-qwen
"""
# min_top1 off: the random tiny model's logits are near-uniform (perplexity ~ vocabulary size), so top-1 agreement
# measures ties (measured: GPTQ 0.357); the KL and perplexity-ratio gates stay on.


def test_release_trust_remote_code_end_to_end(qwen_model, qwen_adapter, tmp_path):
    """`release --trust-remote-code --quants gptq,gguf` with verification on, on the local Hub: exit 0, a quality
    table, the base card's Qwen license header in every card, and the repos load with trust_remote_code=True."""
    import shutil

    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtool.frontmatter import read_front_matter
    from tests.test_release import hub_env, run_cli

    base = tmp_path / "base"
    shutil.copytree(qwen_model, base)
    (base / "README.md").write_text(f"---\nlicense: other\nlicense_name: qwen\nlicense_link: {QWEN_LICENSE}\nlanguage: [en]\n---\n# tiny qwen\n")
    (tmp_path / "release.yaml").write_text(QWEN_RELEASE_YAML)
    args = ["release", "--base", str(base), "--adapter", str(qwen_adapter), "--config", str(tmp_path / "release.yaml"),
            "--work-dir", str(tmp_path / "work"), "--json"]
    with hub_env(tmp_path, "xet") as hub:
        rc, out, err = run_cli(args + ["--endpoint", hub.url])
        assert rc == 2 and "--trust-remote-code" in json.loads(out)["error"]
        rc, out, err = run_cli(args + ["--endpoint", hub.url, "--trust-remote-code"])
        assert rc == 0, err[-3000:]
        summary = json.loads(out)
        rows = {r["kind"]: r for r in summary["quality"]}
        print("qwen release quality", {k: (r.get("top1"), r.get("kl_div"), r.get("perplexity")) for k, r in rows.items()})
        assert {"gptq", "gguf"} <= set(rows) and all(math.isfinite(r["perplexity"]) for r in rows.values())
        ids = None
        for kind in ("fp16", "gptq", "gguf", "adapter"):
            repo = f"acme/tiny-qwen-chat{ {'fp16': '', 'gptq': '-GPTQ', 'gguf': '-GGUF', 'adapter': '-peft'}[kind] }"
            local = Path(snapshot_download(repo, endpoint=hub.url))
            header, _ = read_front_matter(local / "README.md")
            assert (header["license"], header["license_name"], header["license_link"]) == ("other", "qwen", QWEN_LICENSE), (kind, header)
            if kind in ("fp16", "gptq"):
                for f in ("modeling_qwen.py", "configuration_qwen.py", "tokenization_qwen.py", "qwen.tiktoken"):
                    assert (local / f).is_file(), (kind, f)
                tok = AutoTokenizer.from_pretrained(local, trust_remote_code=True)
                assert type(tok).__name__ == "QWenTokenizer"
                ids = tok("The function returns a list.")["input_ids"]
                model = AutoModelForCausalLM.from_pretrained(local, trust_remote_code=True, device_map="cpu")
                assert type(model).__name__ == "QWenLMHeadModel" and torch.isfinite(logits(model, torch.tensor([ids]))).all()
            if kind == "gguf":
                assert any(p.name.endswith(".Q8_0.gguf") for p in local.iterdir())


def test_tuned_gguf_mix_runs_the_models_own_code(qwen_model, tmp_path):
    """The importance matrix and the sensitivity pass share one loader that passes trust_remote_code:
    a custom-code model gets both (every linear, by its GGUF name) and a tuned mix that follows its recipe."""
    from hubtool.gguf import export_gguf
    from hubtool.gguf.calibration_pass import open_calibration_pass
    from hubtool.gguf.imatrix import compute_imatrix
    from hubtool.gguf.mix import check_against_recipe, export_tuned, parse_recipe
    from hubtool.quality.sensitivity import output_fisher
    from hubtool.quality.texts import read_text_source

    text = read_text_source("builtin")
    run = open_calibration_pass(qwen_model, text, arch_name="qwen", context=64, max_tokens=128, what="test", trust_remote_code=True)
    linears = {name for name, _ in run.linears}
    assert {f"blk.{i}.{t}.weight" for i in range(2) for t in ("attn_qkv", "attn_output", "ffn_up", "ffn_gate", "ffn_down")} | {"output.weight"} <= linears
    sums, counts = compute_imatrix(qwen_model, text, arch_name="qwen", context=64, max_tokens=128, trust_remote_code=True)
    fisher = output_fisher(qwen_model, text, arch_name="qwen", context=64, max_tokens=128, trust_remote_code=True)
    assert set(sums) == linears and set(counts) == linears and linears <= set(fisher)
    assert all(np.all(np.isfinite(v)) and v.sum() > 0 for v in list(sums.values()) + list(fisher.values()))
    with pytest.raises(Exception, match="trust_remote_code"):  # without it, transformers refuses to run the folder's code
        compute_imatrix(qwen_model, text, arch_name="qwen", context=64, max_tokens=128)
    base = Path(export_gguf(qwen_model, tmp_path / "base", ["f16"], name="tiny", split_max_size="0", trust_remote_code=True)[0]["file"])
    rows = export_tuned(qwen_model, base, tmp_path / "out", "Q4_K_M", name="tiny", calibration=text, trust_remote_code=True)
    tuned = Path(rows[0]["file"])
    check_against_recipe(tuned, parse_recipe((tmp_path / "out" / "tiny.Q4_K_M-tuned.tensor-types.txt").read_text(), stock_type="Q4_K_M", source="r"))


def test_calibration_streams_its_own_code(qwen_model, capsys):
    """The importance matrix and the Fisher stream the custom-code blocks one at a time (its own QWenBlock classes),
    equal to the whole model loaded in memory."""
    from hubtool.gguf.calibration_pass import open_calibration_pass
    from hubtool.gguf.imatrix import compute_imatrix
    from hubtool.quality.sensitivity import output_fisher
    from hubtool.quality.texts import read_text_source

    text = read_text_source("builtin")
    kw = dict(arch_name="qwen", context=64, max_tokens=150, trust_remote_code=True)
    run = open_calibration_pass(qwen_model, text, what="test", **kw)
    assert run.stream is not None and type(run.stream.blocks[0]).__name__ == "QWenBlock"
    (sums, counts), (want_sums, want_counts) = compute_imatrix(qwen_model, text, **kw), compute_imatrix(qwen_model, text, in_memory=True, **kw)
    fisher, want_fisher = output_fisher(qwen_model, text, chunk_rows=100, **kw), output_fisher(qwen_model, text, in_memory=True, **kw)
    err = capsys.readouterr().err
    assert "imatrix, block by block: 4/4" in err and "(Fisher), block by block: 8/8" in err and "loading it whole" not in err  # streamed
    assert counts == want_counts and set(sums) == set(want_sums) and set(fisher) == set(want_fisher) and "output.weight" in fisher
    for got, want, rtol in ((sums, want_sums, 1e-5), (fisher, want_fisher, 1e-4)):
        for k in want:
            assert np.all(want[k] > 0), k
            np.testing.assert_allclose(got[k], want[k], rtol=rtol, err_msg=k)
