"""The calibration passes (importance matrix, output Fisher) stream the model block by block
(hubtool.gguf.calibration_pass over hubtool.quality.stream): the same statistics as the whole model
loaded in memory, with one decoder block's weights alive at a time, forward and backward."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest

from hubtool.gguf.calibration_pass import open_calibration_pass
from hubtool.gguf.imatrix import compute_imatrix
from hubtool.quality.sensitivity import output_fisher
from tests.tiny import corpus_text, make_tiny_model

ARCHS = {"llama": None, "gemma2": "Gemma2ForCausalLM"}  # Gemma-2: scaled embedding, soft-capped logits, sliding window


@pytest.fixture(scope="module")
def models(tiny_llama, tokenizer_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("calib")
    return {"llama": tiny_llama, "gemma2": make_tiny_model("Gemma2ForCausalLM", root / "gemma2", tokenizer_dir, seed=3)}


def _close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float) -> None:
    assert set(a) == set(b) and a
    for k in a:
        assert a[k].shape == b[k].shape, k
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=0, err_msg=k)
        assert np.all(np.isfinite(a[k])) and a[k].sum() > 0, k


@pytest.mark.parametrize("arch", list(ARCHS))
def test_streamed_imatrix_equals_in_memory(models, arch):
    text = corpus_text()
    # 4 windows of 128 (one short): batches of 2 full windows, then the short one alone
    got, got_counts = compute_imatrix(models[arch], text, arch_name=arch, context=128, max_tokens=440, batch_tokens=256)
    want, want_counts = compute_imatrix(models[arch], text, arch_name=arch, context=128, max_tokens=440, in_memory=True)
    assert got_counts == want_counts and len(set(want_counts.values())) == 1
    assert ("output.weight" in got) == (arch == "llama")  # the head's input, computed without the head (Gemma-2's is tied, unmapped)
    _close(got, want, rtol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_streamed_fisher_equals_in_memory(models, arch):
    text = corpus_text()
    # head in 100-row chunks (vocab 384: 4 chunks, the last short); 2 full windows in one batch, then a short one
    got = output_fisher(models[arch], text, arch_name=arch, context=128, max_tokens=300, batch_tokens=256, chunk_rows=100)
    want = output_fisher(models[arch], text, arch_name=arch, context=128, max_tokens=300, in_memory=True)
    assert "token_embd.weight:input" in got and ("output.weight" in got) == (arch == "llama")
    _close(got, want, rtol=1e-4)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_streamed_activation_noise_equals_in_memory(models, arch):
    """The activation-rounding term of the tuned mixes (ggml's Q8_K/Q8_0 roundings pushed through each linear,
    weighted by the loss gradient) rides the streamed Fisher: the same tokens sampled per window, the head's
    term computed in vocabulary chunks, the same numbers as the model in memory."""
    from hubtool.gguf.mix import activation_noise

    text = corpus_text()
    kw = dict(arch_name=arch, context=128, max_tokens=300, input_noise=activation_noise(), noise_tokens=16)
    got = output_fisher(models[arch], text, batch_tokens=256, chunk_rows=100, **kw)
    want = output_fisher(models[arch], text, in_memory=True, **kw)
    noise = [k for k in want if ":input_noise:" in k]
    assert noise and any(k.startswith("blk.0.ffn_down.weight:") for k in noise)
    assert any(k.startswith("output.weight:input_noise:") for k in noise) == (arch == "llama")  # Gemma-2's head is tied
    _close(got, want, rtol=1e-4)


def test_the_pass_streams_and_names_every_linear(tiny_llama):
    run = open_calibration_pass(tiny_llama, corpus_text(), arch_name="llama", context=64, max_tokens=200, what="test")
    assert run.stream is not None and run.head is not None and run.head[0] == "output.weight"
    assert all(p.device.type == "meta" for b in run.stream.blocks for p in b.parameters())  # nothing loaded up front
    names = {n for n, _ in run.linears}
    assert {f"blk.{i}.{t}.weight" for i in range(2) for t in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")} <= names
    assert [len(w) for w in run.windows] == [64, 64, 64, 12]  # BOS + 63 text tokens, and the rest
    assert [len(b) for b in run.batches(128)] == [2, 1, 1] and [len(b) for b in run.batches(10**6)] == [3, 1]
    whole = open_calibration_pass(tiny_llama, corpus_text(), arch_name="llama", context=64, max_tokens=200, what="test", in_memory=True)
    assert whole.stream is None and [len(b) for b in whole.batches(10**6)] == [1] * 4


@pytest.mark.parametrize("which", ["imatrix", "fisher"])
def test_one_block_alive_at_a_time(tiny_llama, monkeypatch, which):
    """Each time a block is materialised (forward, and the Fisher's backward recompute), no other block's weights
    are still alive anywhere (module or autograd graph): RSS can't grow with depth."""
    from hubtool.quality.stream import StreamingModel

    alive: list[weakref.ref] = []
    seen: list[int] = []
    original = StreamingModel._materialise

    def materialise(self, block, args):
        gone = [r for r in alive if r() is not None]
        seen.append(len(gone))
        original(self, block, args)
        alive.clear()
        alive.extend(weakref.ref(p) for p in block.parameters())

    monkeypatch.setattr(StreamingModel, "_materialise", materialise)
    if which == "imatrix":
        compute_imatrix(tiny_llama, corpus_text(), arch_name="llama", context=128, max_tokens=300)
        assert len(seen) == 2 * 2  # 2 blocks x 2 batches (two full windows, one short)
    else:
        output_fisher(tiny_llama, corpus_text(), arch_name="llama", context=128, max_tokens=300)
        assert len(seen) == 2 * 2 * 2  # 2 blocks x (forward + backward) x 2 batches (two full windows, one short)
    assert seen == [0] * len(seen)


def test_unstreamable_code_is_loaded_whole(tiny_llama, tmp_path):
    """A custom-code model whose blocks aren't in a ModuleList (tests/flat_custom) gets the same statistics in memory."""
    from tests.test_in_memory_eval import _flat_copy

    flat = _flat_copy(tiny_llama, tmp_path / "flat")
    run = open_calibration_pass(flat, corpus_text(), arch_name="llama", context=128, max_tokens=300, what="test", trust_remote_code=True)
    assert run.stream is None
    got, _ = compute_imatrix(flat, corpus_text(), arch_name="llama", context=128, max_tokens=300, trust_remote_code=True)
    want, _ = compute_imatrix(tiny_llama, corpus_text(), arch_name="llama", context=128, max_tokens=300)
    _close(got, want, rtol=1e-5)
