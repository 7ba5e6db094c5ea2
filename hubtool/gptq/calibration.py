"""Calibration data for GPTQ: the built-in prose, a user .txt/.jsonl file, or a local `datasets` folder,
cut into N token windows of a fixed length.

GPTQ fits each layer to the activations this text produces, so the card must say what it was;
`describe` returns that record (file names only: no machine paths leak into a release).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hubtool.errors import InputError
from hubtool.progress import log
from hubtool.quality.texts import builtin_text, read_text_source
from hubtool.text_windows import bos_id, encode, windows

BUILTIN_DESCRIPTION = "hubtool built-in calibration text (Python documentation prose, PSF-2.0)"


def load_calibration_text(spec: str) -> tuple[str, dict[str, Any]]:
    """(text, description) for 'builtin', a .txt/.jsonl file, or a `datasets.save_to_disk` folder."""
    if spec in ("builtin", "builtin:calibration"):
        text = builtin_text("calibration")
        desc = {"source": "builtin", "description": BUILTIN_DESCRIPTION}
    elif Path(spec).is_dir():
        text = _dataset_text(Path(spec))
        desc = {"source": "dataset", "name": Path(spec).name}
    else:
        text = read_text_source(spec)
        desc = {"source": "file", "name": Path(spec).name}
    if not text.strip():
        raise InputError(f"{spec}: calibration text is empty; give a file with prose similar to the model's use")
    desc["sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return text, desc


def _dataset_text(path: Path) -> str:
    """A dataset saved with `datasets.save_to_disk` (a Dataset, or a DatasetDict's 'train' split)."""
    try:
        import datasets
    except ImportError:
        raise InputError(f"{path}: reading a dataset folder needs the `datasets` package; pip install datasets, or pass a .txt/.jsonl file") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise InputError(f"{path}: not a dataset saved with datasets.save_to_disk ({exc}); pass a .txt/.jsonl file instead") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise InputError(f"{path}: dataset has no 'train' split (has {', '.join(ds)}); save the split you want alone")
        ds = ds["train"]
    if "text" not in ds.column_names:
        raise InputError(f"{path}: dataset has no 'text' column (has {', '.join(ds.column_names)}); rename the prose column to 'text'")
    return "\n\n".join(t for t in ds["text"] if isinstance(t, str))


def token_windows(text: str, tokenizer: Any, samples: int, seq_len: int) -> list[list[int]]:
    """`samples` full windows of `seq_len` tokens spread evenly over the text (BOS first when the model uses one).

    Evenly spaced rather than random: the same input always gives the same quantized model.
    """
    ids = encode(tokenizer, text)
    full = windows(ids, seq_len, bos_id(tokenizer), whole=True)
    if not full:
        raise InputError(f"calibration text has {len(ids)} tokens, fewer than one window of {seq_len}; give more text or lower --seq-len")
    if len(full) < samples:
        log(f"calibration: text holds only {len(full)} windows of {seq_len} tokens; using {len(full)} instead of {samples}")
        samples = len(full)
    step = len(full) / samples
    return [full[int(i * step)] for i in range(samples)]


def calibration_dataset(spec: str, tokenizer: Any, samples: int, seq_len: int) -> tuple[list[dict[str, list[int]]], dict[str, Any]]:
    """gptqmodel-ready examples plus the record of what was used (for quantize_config.json and the card)."""
    text, desc = load_calibration_text(spec)
    windows = token_windows(text, tokenizer, samples, seq_len)
    desc.update(samples=len(windows), seq_len=seq_len, tokens=sum(len(w) for w in windows))
    return [{"input_ids": w, "attention_mask": [1] * len(w)} for w in windows], desc
