"""Quality numbers shared by every verify step: perplexity, KL divergence and top-1 agreement
against the fp16 model, from aligned logits."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np


ROWS_PER_CHUNK = 32  # 32 rows of a 150k vocabulary are 19 MB of float32: the temporaries stay in cache


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32 (inputs are float32 logits; the sums are pairwise, so a 150k-wide
    row loses no more than float32 rounding), without an extra copy for float32 input."""
    x = np.asarray(x, dtype=np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


def compare_logits(ref_logits: np.ndarray, test_logits: np.ndarray, token_ids: np.ndarray) -> dict[str, float]:
    """Next-token metrics over aligned [n, vocab] logits for positions 0..n-1 predicting ids 1..n.

    KL is KL(ref || test) averaged over positions (the llama.cpp `--kl-divergence` convention);
    top1 is how often both pick the same argmax; perplexity is the test model's on the text.
    Computed in float32 a few rows at a time (per-row sums in float64): a window of a 49k-vocabulary
    model is 100 MB of logits, and whole-array float64 temporaries made this slower than llama.cpp's eval.
    """
    if ref_logits.shape != test_logits.shape:
        raise ValueError(f"logit shapes differ: {ref_logits.shape} vs {test_logits.shape}")
    n = ref_logits.shape[0] - 1
    if n < 1:
        raise ValueError("compare_logits needs at least two positions (one prediction)")
    targets = np.asarray(token_ids[1 : n + 1])
    kl = nll_test = nll_ref = 0.0
    agree = 0
    for start in range(0, n, ROWS_PER_CHUNK):
        stop = min(n, start + ROWS_PER_CHUNK)
        ref_lp = _log_softmax(ref_logits[start:stop])
        test_lp = _log_softmax(test_logits[start:stop])
        rows = np.arange(stop - start)
        t = targets[start:stop]
        nll_test -= float(test_lp[rows, t].astype(np.float64).sum())
        nll_ref -= float(ref_lp[rows, t].astype(np.float64).sum())
        agree += int((ref_lp.argmax(-1) == test_lp.argmax(-1)).sum())
        test_lp -= ref_lp  # now log q - log p
        test_lp *= np.exp(ref_lp)
        kl -= float(test_lp.sum(axis=-1, dtype=np.float64).sum())
    return {
        "perplexity": float(math.exp(nll_test / n)),
        "ref_perplexity": float(math.exp(nll_ref / n)),
        "kl_div": kl / n,
        "top1": agree / n,
        "tokens": int(n),
    }


def merge_metrics(chunks: Iterable[dict[str, float]]) -> dict[str, float]:
    """Token-weighted combination of per-window compare_logits results."""
    chunks = list(chunks)
    total = sum(c["tokens"] for c in chunks)
    if not total:
        raise ValueError("no tokens evaluated")
    out: dict[str, float] = {"tokens": total}
    for key in ("kl_div", "top1"):
        out[key] = sum(c[key] * c["tokens"] for c in chunks) / total
    for key in ("perplexity", "ref_perplexity"):
        out[key] = math.exp(sum(math.log(c[key]) * c["tokens"] for c in chunks) / total)
    return out
