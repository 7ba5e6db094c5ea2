"""The fp16 reference of a release: next-token log-probabilities of the source model on the held-out
windows, computed once (streaming) and kept on disk, so every GPTQ, RTN and GGUF row reads the same
numbers instead of re-running the fp16 model.

Folder layout: `reference.json` (what it was computed from), `windows.json` (token ids),
`logprobs.npy` ([windows, max_len, vocab] fp32 log-softmax; rows past a window's length unused).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubtool.errors import InputError
from hubtool.progress import log
from hubtool.text_windows import bos_id, encode, windows

REFERENCE_FILE = "reference.json"
WINDOWS_FILE = "windows.json"
LOGPROBS_FILE = "logprobs.npy"
PROBE_FILE = "tokenizer_probe.json"  # optional: the tokenizer's answers for verify:gguf (hubtool.tokenizer_probe)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def gptq_windows(tokenizer: Any, text: str, context: int, max_tokens: int) -> list[list[int]]:
    """Full windows of `context` tokens (BOS first when the model uses one), at most max_tokens // context of them."""
    ids = encode(tokenizer, text, max_tokens=max(context, max_tokens))
    found = windows(ids, context, bos_id(tokenizer), whole=True)[: max(1, max_tokens // context)]
    if not found:
        raise InputError(f"held-out text has {len(ids)} tokens, fewer than one window of {context}; give more text or lower --context")
    return found


def gguf_windows(tokenizer: Any, text: str, *, max_tokens: int, context: int) -> list[list[int]]:
    """The windows GGUF rows are measured on: GPTQ's full windows (so every row of a quality table has
    the same fp16 baseline, on the same tokens), or, for a text shorter than one window, the first
    max_tokens as windows of CONTEXT tokens each starting with BOS like llama.cpp's perplexity (the
    last may be short: at least two text tokens, one prediction). Never more than max_tokens: a budget
    under one window takes the short windows too."""
    if max_tokens >= context:
        try:
            return gptq_windows(tokenizer, text, context, max_tokens)
        except InputError:
            pass
    found = windows(encode(tokenizer, text, max_tokens=max_tokens), context, bos_id(tokenizer), min_text=2)
    if not found:
        raise InputError("--text: the held-out text is empty after tokenization; pass more text")
    return found


def reference_windows(tokenizer: Any, text: str, *, context: int, max_tokens: int) -> list[list[int]]:
    """Every window a verify step asks for (GPTQ's full windows and GGUF's, which may end in a short one), once each."""
    seen: dict[tuple[int, ...], None] = {}
    try:
        for w in gptq_windows(tokenizer, text, context, max_tokens):
            seen[tuple(w)] = None
    except InputError:
        pass  # text shorter than one full window: GGUF's windows only (GPTQ verify says so itself)
    for w in gguf_windows(tokenizer, text, max_tokens=max_tokens, context=context):
        seen[tuple(w)] = None
    return [list(w) for w in seen]


@dataclass(frozen=True)
class Reference:
    """Stored fp16 log-probs, looked up by window."""

    folder: Path
    windows: tuple[tuple[int, ...], ...]
    info: dict[str, Any]

    def logprobs(self, window: list[int]) -> np.ndarray:
        """[len(window), vocab] log-softmax of the fp16 model for WINDOW (a stored window or a prefix of one)."""
        arr = np.load(self.folder / LOGPROBS_FILE, mmap_mode="r")
        key = tuple(window)
        for i, w in enumerate(self.windows):
            if w[: len(key)] == key:
                return np.asarray(arr[i, : len(key)])
        raise InputError(f"{self.folder}: the fp16 reference has no window for this text/context; recompute it (delete the folder)")

    def covers(self, windows: list[list[int]]) -> bool:
        return all(any(w[: len(x)] == tuple(x) for w in self.windows) for x in windows)

    def tokenizer_probe(self, model_dir: Path, text: str, *, context: int, max_tokens: int) -> tuple[Any, list[list[int]]] | None:
        """(TokenizerProbe, GGUF windows) recorded with this reference, when they were taken from MODEL_DIR's
        tokenizer files (same hash) on TEXT with the same CONTEXT and MAX_TOKENS; else None (load the tokenizer)."""
        from hubtool.tokenizer_probe import TokenizerProbe, tokenizer_files_hash

        path = self.folder / PROBE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if (data.get("text_sha256"), data.get("context"), data.get("max_tokens")) != (text_sha256(text), context, max_tokens):
            return None
        probe = TokenizerProbe.from_json(data["probe"])
        if probe.files_sha256 != tokenizer_files_hash(model_dir):
            return None
        return probe, [list(self.windows[i]) for i in data["gguf_windows"]]


def open_reference(folder: Path) -> Reference:
    folder = Path(folder)
    info_path = folder / REFERENCE_FILE
    if not info_path.is_file():
        raise InputError(f"{folder}: not an fp16 reference folder (no {REFERENCE_FILE})")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    windows = json.loads((folder / WINDOWS_FILE).read_text(encoding="utf-8"))
    return Reference(folder, tuple(tuple(w) for w in windows), info)


# Counted by tests: a release computes the fp16 reference exactly once.
COMPUTE_CALLS = [0]


def probe_record(tokenizer: Any, model_dir: Path, text: str, windows: list[list[int]], *, context: int, max_tokens: int) -> dict[str, Any]:
    """What compute_reference(probe=...) stores for verify:gguf: the tokenizer's probe, and which of WINDOWS
    (the reference's, in order) are the GGUF windows of TEXT at CONTEXT / MAX_TOKENS."""
    from hubtool.tokenizer_probe import probe_tokenizer

    index = {tuple(w): i for i, w in enumerate(windows)}
    wanted = gguf_windows(tokenizer, text, max_tokens=max_tokens, context=context)
    return {"probe": probe_tokenizer(tokenizer, model_dir).to_json(), "text_sha256": text_sha256(text), "context": context,
            "max_tokens": max_tokens, "gguf_windows": [index[tuple(w)] for w in wanted]}


def compute_reference(model_dir: Path, windows: list[list[int]], out_dir: Path, *, device: str | None = None,
                      trust_remote_code: bool = False, probe: dict[str, Any] | None = None) -> Reference:
    """Run the fp16 model over WINDOWS (block by block, else in memory) and store its log-probs in OUT_DIR (written whole, then renamed).

    PROBE: a probe_record to keep beside them (the release's reference stage), so verify:gguf needn't load the tokenizer."""
    from hubtool.quality.in_memory import evaluate_logprobs

    COMPUTE_CALLS[0] += 1
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    made: dict[str, Any] = {}

    def make_out(vocab: int) -> np.ndarray:
        made["vocab"] = vocab
        made["arr"] = np.lib.format.open_memmap(tmp / LOGPROBS_FILE, mode="w+", dtype=np.float32, shape=(len(windows), max(map(len, windows)), vocab))
        return made["arr"]

    log(f"fp16 reference: {len(windows)} window(s), {sum(map(len, windows))} tokens")
    evaluate_logprobs(Path(model_dir), windows, make_out, device=device, trust_remote_code=trust_remote_code, what="fp16 reference")
    vocab = made["vocab"]
    made["arr"].flush()
    made.clear()
    (tmp / WINDOWS_FILE).write_text(json.dumps(windows), encoding="utf-8")
    if probe is not None:
        (tmp / PROBE_FILE).write_text(json.dumps(probe), encoding="utf-8")
    info = {"model": str(model_dir), "windows": len(windows), "tokens": sum(map(len, windows)), "vocab": vocab, "dtype": "float32"}
    (tmp / REFERENCE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return open_reference(out_dir)

