"""Custom-code models whose code can't be streamed block by block (issue 21 point 3): the plan says which and
what the in-memory evaluation costs, and the reference, verify:gptq and verify:gguf evaluate them in memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

FLAT_CODE = Path(__file__).parent / "flat_custom" / "modeling_flat.py"
AUTO_MAP = {"AutoConfig": "modeling_flat.TinyFlatConfig", "AutoModelForCausalLM": "modeling_flat.TinyFlatForCausalLM"}
WINDOWS = [[1, 5, 7, 9, 11, 13, 2, 3, 40, 41, 42, 43], [1, 4, 4, 6, 8]]  # a full window and a short last one


def _flat_copy(src: Path, dst: Path) -> Path:
    """SRC's weights and tokenizer with FLAT_CODE as its own code (blocks in a ModuleDict, not a ModuleList)."""
    shutil.copytree(src, dst)
    shutil.copy(FLAT_CODE, dst / FLAT_CODE.name)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["auto_map"] = AUTO_MAP
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def flat_model(tiny_llama, tmp_path_factory) -> Path:
    return _flat_copy(tiny_llama, tmp_path_factory.mktemp("flat") / "flat")


def _hf_logprobs(model_dir: Path, windows: list[list[int]]) -> list[np.ndarray]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        return [torch.log_softmax(model(torch.tensor([w])).logits[0].double(), -1).float().numpy() for w in windows]


def test_flat_code_is_not_streamable(flat_model):
    from hubtool.quality.stream import NotStreamable, StreamingModel

    with pytest.raises(NotStreamable, match="no decoder block list"):
        StreamingModel(flat_model, device="cpu", trust_remote_code=True)


def test_in_memory_logprobs_match_transformers_forward(flat_model, tiny_llama, tmp_path):
    """The fp16 reference of the unstreamable model (computed in memory) equals transformers' plain forward with
    its own code, and the streamed reference of the same weights under the stock Llama classes."""
    from hubtool.quality.reference import compute_reference

    ref = compute_reference(flat_model, WINDOWS, tmp_path / "ref", device="cpu", trust_remote_code=True)
    streamed = compute_reference(tiny_llama, WINDOWS, tmp_path / "streamed", device="cpu")
    want = _hf_logprobs(flat_model, WINDOWS)
    assert ref.info["vocab"] == streamed.info["vocab"] == want[0].shape[1]
    for w, expected in zip(WINDOWS, want):
        got = ref.logprobs(w)
        assert got.shape == (len(w), expected.shape[1])
        np.testing.assert_allclose(got, expected, atol=2e-5)
        np.testing.assert_allclose(got, streamed.logprobs(w), atol=2e-5)


def test_plan_names_the_fallback_and_its_memory(flat_model, capsys):
    from hubtool.cli import main
    from hubtool.quality.in_memory import memory_estimate

    rc = main(["release", str(flat_model), "--quants", "gguf", "--trust-remote-code", "--namespace", "me", "--dry-run", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    line = next(c for c in out["plan"]["checks"] if c.startswith("verify: "))
    gb = memory_estimate(flat_model, 512) / 1e9
    assert line == (f"verify: TinyFlatForCausalLM: can't be evaluated block by block (no decoder block list found in "
                    f"TinyFlatForCausalLM); evaluated in memory: about {gb:.3g} GB of RAM (fp32 weights + one window's activations)")
    params = sum(p.numel() for p in __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        next(flat_model.glob("*.safetensors"))).values())
    assert 4 * params < gb * 1e9 < 4 * params + 200e6  # fp32 weights plus a bounded window's activations


def _pack(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """GPTQ v1 packing (low bits first) of integer CODES along DIM into int32 words."""
    per = 32 // bits
    c = codes.to(torch.int64)
    if dim == 0:
        c = c.reshape(c.shape[0] // per, per, c.shape[1])
        word = sum(c[:, j] << (bits * j) for j in range(per))
    else:
        c = c.reshape(c.shape[0], c.shape[1] // per, per)
        word = sum(c[:, :, j] << (bits * j) for j in range(per))
    return (word & 0xFFFFFFFF).to(torch.int64).numpy().astype(np.uint32).view(np.int32).copy()


def _fake_gptq(src: Path, dst: Path, bits: int = 4, group: int = 32) -> Path:
    """SRC with every decoder Linear round-to-nearest packed in the GPTQ v1 layout (what gptqmodel writes)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    shard = next(dst.glob("*.safetensors"))
    tensors = load_file(shard)
    out = {}
    for name, t in tensors.items():
        if not (name.startswith("model.layers.") and name.endswith("_proj.weight")):
            out[name] = t
            continue
        w = t.float().t().contiguous()  # [in, out]
        n_in, n_out = w.shape
        g = w.reshape(n_in // group, group, n_out)
        lo, hi = g.amin(1), g.amax(1)
        scale = ((hi - lo) / (2**bits - 1)).clamp(min=1e-8)
        zero = torch.round(-lo / scale).clamp(0, 2**bits - 1)
        q = torch.round(g / scale[:, None] + zero[:, None]).clamp(0, 2**bits - 1).reshape(n_in, n_out)
        prefix = name[: -len(".weight")]
        out[f"{prefix}.qweight"] = torch.from_numpy(_pack(q, bits, 0))
        out[f"{prefix}.qzeros"] = torch.from_numpy(_pack(zero - 1, bits, 1))
        out[f"{prefix}.scales"] = scale.half()
        out[f"{prefix}.g_idx"] = torch.arange(n_in, dtype=torch.int32) // group
    save_file(out, str(shard), metadata={"format": "pt"})
    qc = {"bits": bits, "group_size": group, "desc_act": False, "sym": False, "checkpoint_format": "gptq", "quant_method": "gptq"}
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = qc
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "quantize_config.json").write_text(json.dumps(qc))
    return dst


def test_gptq_weights_dequantized_in_memory_match_streaming(flat_model, tiny_llama, tmp_path):
    """verify:gptq of an unstreamable model: the GPTQ checkpoint's dequantized linears in the whole fp32 model give
    the log-probs the streamed path gives for the same checkpoint under the stock classes; the rows are written."""
    from hubtool.quality.in_memory import memory_logprobs
    from hubtool.quality.stream import StreamingModel, gptq_weights, stream_logprobs
    from hubtool.gptq.verify import verify_gptq

    plain = _fake_gptq(tiny_llama, tmp_path / "plain-gptq")
    flat = _flat_copy(plain, tmp_path / "flat-gptq")
    got = memory_logprobs(flat, WINDOWS, weights=gptq_weights(flat), device="cpu", trust_remote_code=True)
    want = stream_logprobs(StreamingModel(plain, gptq_weights(plain), device="cpu"), WINDOWS)
    fp16 = _hf_logprobs(flat_model, WINDOWS)
    for g, w, f in zip(got, want, fp16):
        np.testing.assert_allclose(g, w, atol=2e-5)
        assert np.abs(g - f).max() > 1e-3  # the quantized weights were used, not the fp16 ones
    rows = verify_gptq(flat, flat_model, context=64, max_tokens=128, trust_remote_code=True, results_path=tmp_path / "q.json")
    assert [r["kind"] for r in rows] == ["gptq", "rtn"] and all(np.isfinite(r["kl_div"]) and r["kl_div"] > 0 for r in rows)


def test_verify_gguf_of_unstreamable_model(flat_model, tmp_path, capsys):
    from hubtool.cli import main

    gguf = tmp_path / "gguf"
    assert main(["quantize", "gguf", str(flat_model), "-o", str(gguf), "--types", "f16", "--trust-remote-code", "--json"]) == 0
    capsys.readouterr()
    rc = main(["verify", "gguf", str(gguf), "--reference", str(flat_model), "--trust-remote-code", "--context", "64",
               "--max-tokens", "128", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rows = json.loads(captured.out)
    (row,) = rows
    assert "f16" in row["variant"].lower() and row["top1"] >= 0.95 and row["tokens"] > 0, row


def test_in_memory_estimate_reaches_the_stages_and_the_scheduler(flat_model, capsys):
    from hubtool.cli import main
    from hubtool.quality.in_memory import memory_estimate
    from hubtool.release.graph import Stage
    from hubtool.release.schedule import memory_estimate as scheduled

    rc = main(["release", str(flat_model), "--quants", "gguf", "--trust-remote-code", "--namespace", "me", "--dry-run", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    need = memory_estimate(flat_model, 512)
    by_kind = {st["kind"]: st for st in out["plan"]["stages"]}
    assert by_kind["reference"]["memory_bytes"] == need and "memory_bytes" not in by_kind["verify-gguf"]
    big = Stage("reference", "reference", "k", (), {}, "memory", memory_bytes=50 * 10**9)
    assert scheduled(big, 1000) > 50 * 10**9 > scheduled(Stage("reference", "reference", "k", (), {}, "memory"), 1000)


FLAT_RELEASE_YAML = """\
name: tiny-flat
namespace: acme
quants: [gguf]
gguf: {types: [q8_0]}
verify: {max_tokens: 128, context: 64}
card:
  license: mit
"""


def test_release_of_unstreamable_model_verifies_in_memory(flat_model, tmp_path, monkeypatch):
    """`release --trust-remote-code --quants gguf` with verification on, on the local Hub: the fp16 reference is
    computed in memory and the GGUF row is in the quality table."""
    from hubtool.quality import in_memory
    from tests.test_release import hub_env, run_cli

    calls = []
    real = in_memory.memory_logprobs
    monkeypatch.setattr(in_memory, "memory_logprobs", lambda *a, **k: calls.append(a[0]) or real(*a, **k))

    (tmp_path / "release.yaml").write_text(FLAT_RELEASE_YAML)
    args = ["release", str(flat_model), "--config", str(tmp_path / "release.yaml"), "--work-dir", str(tmp_path / "work"),
            "--trust-remote-code", "--json"]
    with hub_env(tmp_path, "xet") as hub:
        rc, out, err = run_cli(args + ["--endpoint", hub.url])
    assert rc == 0, err[-3000:]
    rows = {r["kind"]: r for r in json.loads(out)["quality"]}
    assert len(calls) == 1  # the reference, once, in memory
    assert set(rows) == {"gguf"} and rows["gguf"]["top1"] >= 0.95 and 0 <= rows["gguf"]["kl_div"] < 0.05, rows


META_FAILING = '''

class TinyMetaForCausalLM(LlamaForCausalLM):
    config_class = TinyFlatConfig

    def __init__(self, config):
        super().__init__(config)
        self.embedding_norm = float(self.model.embed_tokens.weight.detach().abs().sum())  # fails on the meta device
'''


def test_code_failing_on_meta_device_is_evaluated_in_memory(flat_model, tiny_llama, tmp_path, capsys):
    """Code that can't even be built on the meta device (so neither streaming nor from_pretrained can build it):
    the plan says so and the reference is computed from a CPU-built model, equal to the same weights streamed."""
    from hubtool.cli import main
    from hubtool.quality.reference import compute_reference

    model = _flat_copy(tiny_llama, tmp_path / "meta")
    (model / FLAT_CODE.name).write_text(FLAT_CODE.read_text() + META_FAILING)
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"]["AutoModelForCausalLM"] = "modeling_flat.TinyMetaForCausalLM"
    (model / "config.json").write_text(json.dumps(cfg))
    rc = main(["release", str(model), "--quants", "gguf", "--trust-remote-code", "--namespace", "me", "--dry-run", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    line = next(c for c in out["plan"]["checks"] if c.startswith("verify: "))
    assert line.startswith("verify: TinyMetaForCausalLM: can't be evaluated block by block (the model's code can't be built "
                           "on the meta device (RuntimeError: Tensor.item() cannot be called on meta tensors)); evaluated in memory: about ")
    ref = compute_reference(model, WINDOWS, tmp_path / "ref", device="cpu", trust_remote_code=True)
    streamed = compute_reference(tiny_llama, WINDOWS, tmp_path / "streamed", device="cpu")
    for w in WINDOWS:
        np.testing.assert_allclose(ref.logprobs(w), streamed.logprobs(w), atol=2e-5)


PEEKING = '''

class TinyPeekModel(LlamaModel):
    config_class = TinyFlatConfig

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)  # then reads block 0's weights outside block 0: no use one block at a time
        out.last_hidden_state = out.last_hidden_state + 0 * self.layers[0].mlp.down_proj.weight.sum()
        return out


class TinyPeekForCausalLM(LlamaForCausalLM):
    config_class = TinyFlatConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = TinyPeekModel(config)
        self.post_init()
'''


def test_blocks_that_cant_run_one_at_a_time_fall_back_in_memory(tiny_llama, tmp_path, monkeypatch):
    """Custom code the streamed evaluator builds but whose forward fails block by block: evaluated in memory."""
    from hubtool.quality import in_memory
    from hubtool.quality.reference import compute_reference

    model = _flat_copy(tiny_llama, tmp_path / "peek")
    (model / FLAT_CODE.name).write_text(FLAT_CODE.read_text() + PEEKING)
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"]["AutoModelForCausalLM"] = "modeling_flat.TinyPeekForCausalLM"
    (model / "config.json").write_text(json.dumps(cfg))
    assert "evaluated block by block" in in_memory.evaluation_mode(model, context=64, trust_remote_code=True).line
    calls = []
    real = in_memory.memory_logprobs
    monkeypatch.setattr(in_memory, "memory_logprobs", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    ref = compute_reference(model, WINDOWS, tmp_path / "ref", device="cpu", trust_remote_code=True)
    streamed = compute_reference(tiny_llama, WINDOWS, tmp_path / "streamed", device="cpu")
    assert calls == [model]
    for w in WINDOWS:
        np.testing.assert_allclose(ref.logprobs(w), streamed.logprobs(w), atol=2e-5)
