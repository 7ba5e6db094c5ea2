"""A Hugging Face model folder, read lazily: config, safetensors shards, tokenizer, card.

Tensors are memory-mapped through safetensors and loaded one at a time, so callers can walk
a 70B checkpoint with memory for a single tensor.
"""

from __future__ import annotations

import json
import os
import re
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
    check_dtypes(model)
    check_config_counts(model)
    check_tokenizer_files(path)
    return model


# config.json sizes every loader and converter trusts (a converter loops num_hidden_layers times).
CONFIG_COUNTS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                 "vocab_size", "max_position_embeddings", "head_dim")
COUNT_MAX = 1 << 31
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
SIXTEEN_BIT = {"F16": "float16", "BF16": "bfloat16"}


def check_config_counts(model: ModelDir) -> None:
    """config.json's sizes are whole numbers in range and agree with the weights present: 1e9 layers over
    two stored ones would hang a converter or end in a library's traceback far from config.json."""
    cfg_path = model.path / "config.json"
    for key in CONFIG_COUNTS:
        if key not in model.config or model.config[key] is None:
            continue
        value = model.config[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < COUNT_MAX:
            raise InputError(f"{cfg_path}: {key} = {value!r} must be a whole number from 1 to {COUNT_MAX - 1}; "
                             "restore config.json from the original checkpoint")
    layers = model.config.get("num_hidden_layers")
    found = {int(m.group(1)) for name in model.weight_map for m in [_LAYER.search(name)] if m}
    if isinstance(layers, int) and found and layers > max(found) + 1:
        raise InputError(f"{cfg_path}: num_hidden_layers = {layers} but the weights hold {max(found) + 1} layer(s) "
                         f"(indices 0-{max(found)}); fix num_hidden_layers or restore config.json from the original checkpoint")
    hidden = model.config.get("hidden_size")
    embed = next((n for n in model.weight_map if n.endswith("embed_tokens.weight")), None)
    if isinstance(hidden, int) and embed is not None and "embedding_size" not in model.config:
        shape = model.tensor_shape(embed)
        if len(shape) == 2 and shape[1] != hidden:
            raise InputError(f"{cfg_path}: hidden_size = {hidden} but {embed} is {shape}; fix hidden_size or restore config.json")


def check_dtypes(model: ModelDir) -> None:
    """A checkpoint holds one 16-bit type. safetensors itself checks every tensor's byte length against its
    shape and dtype (an I32 header over F16 bytes fails to open), but BF16 declared over F16 bytes has the
    right length and merges into garbage: refuse the tensors whose 16-bit type differs from the rest."""
    by_type: dict[str, list[str]] = {}
    for name in model.weight_map:
        kind = model.tensor_dtype(name)
        if kind in SIXTEEN_BIT:
            by_type.setdefault(kind, []).append(name)
    if len(by_type) < 2:
        return
    declared = model.config.get("dtype") or model.config.get("torch_dtype")
    counts = sorted(by_type, key=lambda k: (SIXTEEN_BIT[k] != declared, -len(by_type[k])))
    major, odd = counts[0], counts[1]
    name = by_type[odd][0]
    more = f" (and {len(by_type[odd]) - 1} more)" if len(by_type[odd]) > 1 else ""
    raise InputError(f"{model.path / model.weight_map[name]}: tensor {name}{more} is declared {odd} but the checkpoint's other "
                     f"{len(by_type[major])} 16-bit tensors are {major}" + (f" (config.json: {declared})" if declared else "")
                     + "; its header does not match its bytes: re-download or re-save the checkpoint")


def check_tokenizer_files(path: Path) -> None:
    """tokenizer.json / tokenizer_config.json parse as JSON objects, checked before any work (a junk
    tokenizer.json otherwise fails deep inside a loader, after the quantization)."""
    for fname in ("tokenizer.json", "tokenizer_config.json"):
        f = Path(path) / fname
        if not f.is_file():
            continue
        with open(f, "rb") as fh:
            head = fh.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
        ok = head.startswith(b"{")
        if ok:
            try:
                data = json.loads(f.read_bytes())
                ok = isinstance(data, dict)
            except (ValueError, UnicodeDecodeError):
                ok = False
        if not ok:
            raise InputError(f"{f}: not a valid {fname} (not a JSON object); copy it again from the base model "
                             "(tokenizer.save_pretrained)")
