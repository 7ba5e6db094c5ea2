"""A Hugging Face model folder, read lazily: config, safetensors shards, tokenizer, card.

Tensors are memory-mapped through safetensors and loaded one at a time, so callers can walk
a 70B checkpoint with memory for a single tensor.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open

from hubtool.errors import InputError
from hubtool.frontmatter import read_front_matter

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"

# Files that travel with the weights: tokenizers in all their forms, chat templates, generation defaults.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
AUX_FILES = TOKENIZER_FILES + ("generation_config.json",)
AUX_DIRS = ("additional_chat_templates",)
# Custom-code models (`auto_map` in config.json) also need their Python modules and the data files
# their tokenizer code reads (original Qwen: qwen.tiktoken).
CODE_SUFFIXES = (".py", ".tiktoken")


def has_vocabulary(path: Path) -> bool:
    """Whether the folder holds a tokenizer vocabulary a converter can read: tokenizer.json, a SentencePiece
    tokenizer.model, or a tiktoken file (original Qwen's qwen.tiktoken, read through the model's own tokenizer code)."""
    path = Path(path)
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")) or any(path.glob("*.tiktoken"))


def remote_code_files(path: Path, config: dict[str, Any]) -> list[Path]:
    """The model's own code files (and tiktoken vocabularies), when config.json names custom classes in `auto_map`."""
    if not config.get("auto_map"):
        return []
    return sorted(p for p in Path(path).iterdir() if p.is_file() and p.suffix in CODE_SUFFIXES)


def check_remote_code(path: Path, config: dict[str, Any], *, trust_remote_code: bool) -> None:
    """Refuse a custom-code model unless the user said they trust its code; it runs in every loader."""
    auto_map = config.get("auto_map")
    if auto_map and not trust_remote_code:
        classes = ", ".join(sorted({str(v if isinstance(v, str) else v[0]) for v in auto_map.values() if v}))
        raise InputError(
            f"{Path(path) / 'config.json'}: custom code ({classes}) runs when this model loads; "
            "read the .py files, then pass --trust-remote-code"
        )


def read_json(path: Path) -> Any:
    """JSON file or a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); restore the file from the original checkpoint") from None


@dataclass
class ModelDir:
    """An HF model directory with safetensors weights."""

    path: Path
    config: dict[str, Any]
    weight_map: dict[str, str]  # tensor name -> shard file name
    _handles: dict[str, Any] = field(default_factory=dict, repr=False)
    _layouts: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def shard_files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def tensor_names(self) -> list[str]:
        return list(self.weight_map)

    def _handle(self, shard: str) -> Any:
        if shard not in self._handles:
            self._handles[shard] = _open_shard(self.path / shard)
        return self._handles[shard]

    def tensor_names_in(self, shard: str) -> list[str]:
        return [n for n, s in self.weight_map.items() if s == shard]

    def get_tensor(self, name: str) -> torch.Tensor:
        """Load one tensor (memory-mapped read of just its bytes)."""
        shard = self.weight_map.get(name)
        if shard is None:
            raise InputError(f"{self.path}: no tensor named {name!r}")
        try:
            return self._handle(shard).get_tensor(name)
        except SafetensorError as exc:
            raise InputError(f"{self.path / shard}: cannot read tensor {name!r} ({exc}); the file is corrupt, re-download it") from None

    def tensor_shape(self, name: str) -> list[int]:
        return list(self._handle(self.weight_map[name]).get_slice(name).get_shape())

    def tensor_dtype(self, name: str) -> str:
        """safetensors dtype string, e.g. 'F16', 'BF16', 'F32'."""
        return self._handle(self.weight_map[name]).get_slice(name).get_dtype()

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for shard in self.shard_files:
            for name in self.tensor_names_in(shard):
                yield name, self.get_tensor(name)

    def total_bytes(self) -> int:
        return sum((self.path / s).stat().st_size for s in self.shard_files)

    @property
    def remote_code(self) -> bool:
        """True for custom-code models (`auto_map`); loaders then need trust_remote_code=True."""
        return bool(self.config.get("auto_map"))

    def aux_files(self) -> list[Path]:
        """Tokenizer, chat template and generation files present in the folder, plus the model's code files."""
        files = [self.path / f for f in AUX_FILES if (self.path / f).is_file()]
        files += [p for p in remote_code_files(self.path, self.config) if p not in files]
        for d in AUX_DIRS:
            if (self.path / d).is_dir():
                files += sorted(p for p in (self.path / d).rglob("*") if p.is_file())
        return files

    def card(self) -> tuple[dict[str, Any], str]:
        """(front matter, body) of README.md, or ({}, '') without one."""
        return read_front_matter(self.path / "README.md")

    def prefetch(self, name: str) -> None:
        """Ask the kernel to start reading one tensor's bytes now (posix_fadvise WILLNEED).

        Reads through the mmap otherwise fault in 4 KB at a time when the data is needed; hinting the
        next tensor while the current one is computed overlaps disk reads with work, at no memory
        cost to us. safetensors does not expose byte offsets, so we read them from the shard header.
        """
        if not hasattr(os, "posix_fadvise"):
            return
        shard = self.weight_map[name]
        if shard not in self._layouts:
            with open(self.path / shard, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                self._layouts[shard] = (8 + n, json.loads(f.read(n)))
        data_start, header = self._layouts[shard]
        begin, end = header[name]["data_offsets"]
        fd = os.open(self.path / shard, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, data_start + begin, end - begin, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._handles.clear()


def _open_shard(path: Path) -> Any:
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except FileNotFoundError:
        raise InputError(f"{path}: shard listed in the index is missing; re-download it") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a valid safetensors file ({exc}); re-download or re-save it") from None


def load_model_dir(path: Path | str, *, kind: str = "model", trust_remote_code: bool = False) -> ModelDir:
    """Open a model folder, validating what later steps rely on, with errors that say the fix.

    Custom-code models are refused unless `trust_remote_code`: every later loader would run their code.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: {kind} directory not found")
    config = read_json(path / "config.json") if (path / "config.json").is_file() else None
    if config is None:
        raise InputError(f"{path}: no config.json; point at a Hugging Face model folder (save_pretrained output)")
    if not isinstance(config, dict):
        raise InputError(f"{path / 'config.json'}: expected a JSON object")
    check_remote_code(path, config, trust_remote_code=trust_remote_code)
    if (path / SAFE_INDEX).is_file():
        index = read_json(path / SAFE_INDEX)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise InputError(f"{path / SAFE_INDEX}: has no weight_map; re-save the model with save_pretrained")
    elif (path / SAFE_SINGLE).is_file():
        handle = _open_shard(path / SAFE_SINGLE)
        weight_map = {name: SAFE_SINGLE for name in handle.keys()}
    else:
        bins = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        if bins:
            raise InputError(
                f"{path}: only pickle weights ({bins[0]}); hubtool reads safetensors only — "
                "convert with `model.save_pretrained(dir, safe_serialization=True)`"
            )
        raise InputError(f"{path}: no model.safetensors or {SAFE_INDEX} found")
    model = ModelDir(path=path, config=config, weight_map=dict(weight_map))
    for shard in model.shard_files:  # validate headers now, not halfway through a merge
        model._handle(shard)
    return model
