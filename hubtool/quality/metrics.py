"""Quality numbers shared by every verify step: perplexity, KL divergence and top-1 agreement
against the fp16 model, and the results file that cards read.

Results file (`quality.json`), one row per artifact, so the card and release summary can show
GPTQ and GGUF side by side:

    {"reference": "fp16", "text": "builtin:heldout", "tokens": 4096, "context": 512,
     "rows": [{"variant": "Q4_K_M", "kind": "gguf", "perplexity": 11.9, "kl_div": 0.031,
               "top1": 0.93, "size_bytes": 123, "bits_per_weight": 4.9}]}
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from hubtool.errors import InputError

RESULTS_FILE = "quality.json"


def builtin_text(name: str) -> str:
    """Packaged prose: 'calibration' or 'heldout' (see hubtool/data/SOURCES.md)."""
    return resources.files("hubtool.data").joinpath(f"{name}.txt").read_text(encoding="utf-8")


def text_label(spec: str | None) -> str | None:
    """How a text source is named in anything published: 'builtin:…' as is, a file by its name only
    (a path on this machine means nothing to a reader and leaks the machine's layout)."""
    if not spec or str(spec).startswith("builtin"):
        return spec
    return Path(str(spec)).name or str(spec)


def read_text_source(spec: str) -> str:
    """'builtin' / 'builtin:heldout' / a path to a .txt or .jsonl (field 'text') file."""
    if spec in ("builtin", "builtin:calibration"):
        return builtin_text("calibration")
    if spec == "builtin:heldout":
        return builtin_text("heldout")
    from hubtool.textfile import read_text

    path = Path(spec)
    if not path.is_file():
        raise InputError(f"{spec}: text file not found; pass a .txt/.jsonl file or 'builtin'")
    content = read_text(path, what="text file")
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
                if not isinstance(text, str):
                    raise TypeError
                texts.append(text)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{path}:{i}: expected a JSON object with a 'text' field per line") from None
        return "\n\n".join(texts)
    return content


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


def read_results(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        return {"rows": []}
    from hubtool.textfile import read_text

    try:
        data = json.loads(read_text(path, what="results file"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); delete it and re-run verify") from None
    if not isinstance(data, dict) or not isinstance(data.setdefault("rows", []), list) or not all(isinstance(r, dict) for r in data["rows"]):
        raise InputError(f"{path}: not a quality.json ({{\"rows\": [...]}} from a verify step); point at verify's results file")
    return data


def write_results(path: Path, rows: list[dict[str, Any]], **header: Any) -> dict[str, Any]:
    """Add/replace rows (keyed by kind+variant) in a results file, keeping others' rows."""
    path = Path(path)
    data = read_results(path)
    data.update(header)
    keep = {(r.get("kind"), r.get("variant")): r for r in data["rows"]}
    for row in rows:
        keep[(row.get("kind"), row.get("variant"))] = row
    data["rows"] = list(keep.values())
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True) if tmp.exists() else None
        from hubtool.errors import from_os_error

        raise from_os_error(exc, path) from None  # the user's --results path, not the temp file
    return data
