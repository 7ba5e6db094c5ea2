"""Streaming (block-by-block) evaluation against transformers' all-in-memory forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hubtool.quality.stream import StreamingModel, stream_logprobs


def _save_random(cfg, out: Path, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.float16)
    model.save_pretrained(out)
    return out


def _in_memory_logprobs(folder: Path, windows: list[list[int]]) -> list[np.ndarray]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        return [torch.log_softmax(model(torch.tensor([w])).logits[0].double(), -1).numpy() for w in windows]


def _configs():
    from transformers import MistralConfig, Qwen2Config

    from tests.tiny import tiny_llama_config

    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    return {
        "llama": tiny_llama_config(300, num_hidden_layers=3),
        "llama-tied-rope-linear": tiny_llama_config(300, tie_word_embeddings=True,
                                                    rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}),
        "qwen2": Qwen2Config(**common, tie_word_embeddings=True),
        "mistral": MistralConfig(**common, sliding_window=None),
    }


@pytest.mark.parametrize("arch", ["llama", "llama-tied-rope-linear", "qwen2", "mistral"])
def test_streaming_matches_in_memory_forward(tmp_path, arch):
    folder = _save_random(_configs()[arch], tmp_path / arch)
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 300, 40).tolist(), rng.integers(0, 300, 40).tolist(), rng.integers(0, 300, 7).tolist()]
    want = _in_memory_logprobs(folder, windows)
    got = stream_logprobs(StreamingModel(folder), windows, chunk_rows=128)  # 3 head chunks, one short window (padding)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=2e-4)


@pytest.mark.parametrize("arch", sorted(__import__("tests.tiny", fromlist=["ARCHITECTURES"]).ARCHITECTURES))
def test_streaming_matches_in_memory_forward_every_architecture(tmp_path, arch):
    """Every architecture the other steps support streams too: MoE checkpoints whose experts transformers 5
    fuses in memory (per-expert tensors on disk), renamed routers, Gemma's scaled embeddings, Phi-3's fused qkv."""
    from tests.tiny import tiny_config

    folder = _save_random(tiny_config(arch, 300, initializer_range=0.2), tmp_path / arch)
    rng = np.random.default_rng(1)
    windows = [rng.integers(3, 300, 33).tolist(), rng.integers(3, 300, 9).tolist()]
    want = _in_memory_logprobs(folder, windows)
    got = stream_logprobs(StreamingModel(folder), windows, chunk_rows=128)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=5e-4)


def test_blocks_are_materialised_one_at_a_time(tmp_path):
    folder = _save_random(_configs()["llama"], tmp_path / "m")
    seen = []

    def on_block(name, block):
        model_params = [p for p in streaming.model.parameters() if p.device.type != "meta"]
        block_params = list(block.parameters())
        # besides this block, only the small non-block tensors (final norm) hold memory
        seen.append((name, sum(p.numel() for p in model_params) - sum(p.numel() for p in block_params)))

    streaming = StreamingModel(folder, block_hook=on_block)
    stream_logprobs(streaming, [[1, 2, 3, 4]])
    assert [n for n, _ in seen] == ["model.layers.0", "model.layers.1", "model.layers.2"]
    assert all(extra == 64 for _, extra in seen)  # the final RMSNorm only
    assert all(p.device.type == "meta" for b in streaming.blocks for p in b.parameters())


def test_missing_tensor_is_a_one_line_error(tmp_path):
    from safetensors.torch import load_file, save_file

    from hubtool.errors import InputError

    folder = _save_random(_configs()["llama"], tmp_path / "m")
    sd = load_file(folder / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="model.layers.1.mlp.up_proj.weight missing"):
        stream_logprobs(StreamingModel(folder), [[1, 2, 3]])


# ---- the real small model: numbers identical to the all-in-memory path ---------------------------

@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    from hubtool.smollm2 import export_smollm2_fp16

    return export_smollm2_fp16(tmp_path_factory.mktemp("smollm2") / "fp16")


def _old_path_metrics(folder: Path, windows: list[list[int]], rtn: tuple[int, int] | None = None) -> dict[str, float]:
    """What verify computed before streaming: whole fp32 model, fp16 reference logits, then the test model's."""
    from transformers import AutoModelForCausalLM

    from hubtool.gptq.rtn import apply_rtn
    from hubtool.quality.metrics import compare_logits, merge_metrics

    def logits(model):
        with torch.inference_mode():
            return [model(torch.tensor([w])).logits[0].float().numpy() for w in windows]

    ref = logits(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval())
    test = ref
    if rtn:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        apply_rtn(model, *rtn)
        test = logits(model)
    return merge_metrics(compare_logits(r, t, np.asarray(w)) for r, t, w in zip(ref, test, windows))


def test_smollm2_reference_and_rtn_match_the_in_memory_path(smollm2, tmp_path):
    from transformers import AutoTokenizer

    from hubtool.quality.reference import compute_reference, gptq_windows
    from hubtool.gptq.rtn import rtn_block_hook
    from hubtool.quality.metrics import compare_logits, merge_metrics
    from hubtool.quality.texts import builtin_text

    tok = AutoTokenizer.from_pretrained(smollm2)
    windows = gptq_windows(tok, builtin_text("heldout"), 128, 256)
    assert len(windows) == 2
    ref = compute_reference(smollm2, windows, tmp_path / "ref")
    rtn = stream_logprobs(StreamingModel(smollm2, block_hook=rtn_block_hook(4, 32)), windows)
    got = merge_metrics(compare_logits(ref.logprobs(w), t, np.asarray(w)) for w, t in zip(windows, rtn))
    want = _old_path_metrics(smollm2, windows, rtn=(4, 32))
    assert want["perplexity"] > 1.1 * want["ref_perplexity"]  # RTN 4-bit really hurts: the comparison has signal
    for key in ("perplexity", "ref_perplexity", "kl_div", "top1"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


def _float64_metrics(ref_logits: np.ndarray, test_logits: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    """The metrics as first written: whole arrays in float64 (slow, but the plain formula)."""
    import math

    def log_softmax(x):
        x = x.astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    n = len(ids) - 1
    r, t = log_softmax(ref_logits[:n]), log_softmax(test_logits[:n])
    rows = np.arange(n)
    return {"kl_div": float((np.exp(r) * (r - t)).sum(-1).mean()), "top1": float((r.argmax(-1) == t.argmax(-1)).mean()),
            "perplexity": math.exp(-t[rows, ids[1:]].mean()), "ref_perplexity": math.exp(-r[rows, ids[1:]].mean())}


@pytest.mark.parametrize("noise", [1e-3, 0.05, 1.0])
def test_compare_logits_in_float32_chunks_matches_float64(noise):
    """verify's metrics run in float32 a few rows at a time; a 49k-wide vocabulary (SmolLM2's), a row
    count that is no multiple of the chunk, and KL from near zero (Q8_0-like) to large."""
    from hubtool.quality.metrics import ROWS_PER_CHUNK, compare_logits

    rng = np.random.default_rng(1)
    n, vocab = 3 * ROWS_PER_CHUNK + 7, 49152
    ref = (rng.standard_normal((n, vocab)) * 4).astype(np.float32)
    test = ref + (rng.standard_normal((n, vocab)) * noise).astype(np.float32)
    ids = rng.integers(0, vocab, n)
    got, want = compare_logits(ref, test, ids), _float64_metrics(ref, test, ids)
    assert got["tokens"] == n - 1 and got["top1"] == want["top1"]
    assert got["kl_div"] == pytest.approx(want["kl_div"], rel=1e-4, abs=1e-8)
    for key in ("perplexity", "ref_perplexity"):
        assert got[key] == pytest.approx(want[key], rel=1e-6)
    # log-probs in (what the stored fp16 reference holds) give the same numbers as logits in
    shifted = compare_logits(ref - 7.5, test + 3.0, ids)
    assert shifted["kl_div"] == pytest.approx(got["kl_div"], rel=1e-4, abs=1e-8) and shifted["top1"] == got["top1"]


def test_real_model_export_is_quiet_without_verbose(tmp_path, capfd):
    """transformers' GGUF loader draws a tqdm bar of its own; outside --verbose it stays off the user's stderr."""
    from hubtool.progress import quiet_libraries
    from hubtool.smollm2 import export_smollm2_fp16

    with quiet_libraries(False):
        out = export_smollm2_fp16(tmp_path / "smol")
    assert (out / "model.safetensors").is_file()
    err = capfd.readouterr().err
    assert "Converting and de-quantizing" not in err and "it/s" not in err
