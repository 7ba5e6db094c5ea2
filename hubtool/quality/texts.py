"""Text sources for calibration and verification: the packaged prose, a user's .txt/.jsonl file,
and how a source is named in anything published."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from hubtool.errors import InputError


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
