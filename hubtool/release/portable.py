"""Published files name Hub ids and file names, never this machine's paths.

A local path in a published file means nothing to a user (`AutoPeftModelForCausalLM` cannot find
a base named `models/gemma-base`) and leaks the publisher's layout. Configs that record the base
(`adapter_config.json`, `hubtool.json`) get the release's configured `base_model` Hub id, and
every text file of a publish folder is checked for the release's local input and work paths
before anything is pushed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from hubtool.errors import CardError

BASE_KEY = "base_model_name_or_path"
CONFIGS_NAMING_THE_BASE = ("adapter_config.json", "hubtool.json")
BINARY_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".onnx", ".model", ".npy", ".npz")
MAX_TEXT_BYTES = 64 * 1024 * 1024


def configured_base(card: dict[str, Any]) -> str | None:
    """The release's configured base model Hub id (`card: {base_model: ...}`), when it names exactly one."""
    base = card.get("base_model")
    if isinstance(base, list):
        base = base[0] if len(base) == 1 else None
    return base if isinstance(base, str) and base else None


def is_local(value: str) -> bool:
    """A value that names a folder on this machine: path-shaped, or an existing folder (`models/base`)."""
    from hubtool.card.metadata import looks_like_local_path

    return looks_like_local_path(value) or Path(value).expanduser().is_dir()


def with_hub_base(data: Any, base: str | None, *, source: str) -> tuple[Any, bool]:
    """DATA with every `base_model_name_or_path` set to the Hub id BASE (or, unconfigured, a local one refused)."""
    changed = False

    def walk(node: Any) -> Any:
        nonlocal changed
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k == BASE_KEY and isinstance(v, str):
                    if base is not None and v != base:
                        v, changed = base, True
                    elif base is None and is_local(v):
                        raise CardError(f"{source}: {BASE_KEY} {v!r} is a local path; set the base model's Hub id "
                                        "(card: {base_model: org/name} in release.yaml)")
                    out[k] = v
                else:
                    out[k] = walk(v)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(data), changed


def rewrite_base_configs(folder: Path, files: dict[str, Path], base: str | None) -> None:
    """Replace the linked adapter_config.json / hubtool.json with copies naming the Hub base (never write through the link)."""
    for name in CONFIGS_NAMING_THE_BASE:
        if name not in files:
            continue
        data = json.loads(files[name].read_text(encoding="utf-8"))
        fixed, changed = with_hub_base(data, base, source=str(files[name]))
        if not changed:
            continue
        target = folder / name
        target.unlink()
        target.write_text(json.dumps(fixed, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        files[name] = target


def local_paths(paths: Iterable[Path | str | None], extra: Iterable[str] = ()) -> list[str]:
    """The strings that would betray this machine: each path as given (when it has a folder part) and resolved."""
    needles: set[str] = set()
    for p in paths:
        if p is None or str(p).startswith("builtin"):
            continue
        given = str(p)
        for s in (given, str(Path(given).expanduser().resolve())):
            s = s.rstrip("/")
            if "/" in s.strip("./") and len(s) >= 4:
                needles.add(s)
    needles.update(s for s in extra if s and "/" in s.strip("./"))
    return sorted(needles, key=len, reverse=True)


def text_files(folder: Path) -> Iterable[Path]:
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and not p.name.endswith(BINARY_SUFFIXES) and p.stat().st_size <= MAX_TEXT_BYTES:
            yield p


def check_no_local_paths(folder: Path, needles: list[str], *, what: str) -> None:
    """Refuse a publish folder whose text files (cards, configs, templates) contain one of this machine's paths."""
    if not needles:
        return
    for p in text_files(folder):
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        hit = next((n for n in needles if n in text), None)
        if hit is not None:
            raise CardError(f"{what}: {p.relative_to(folder)} contains the local path {hit!r}; nothing machine-local may be "
                            "published (give Hub ids in release.yaml card: base_model/datasets, verify.dataset)")
