"""Read the YAML front matter of a model card, tolerating the junk real cards carry.

Cards copied from the Hub web page often start with lines like "user's picture / Update
README.md / <sha>" before the `---` block; we look for the first `---` line that opens a
block parsing to a mapping, not only at line 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hubtool.errors import CardError
from hubtool.yamlfile import load_yaml_text


def split_front_matter(text: str, *, source: str = "README.md") -> tuple[dict[str, Any], str]:
    """Return (metadata, body). A card with no front matter gives ({}, whole text)."""
    lines = text.splitlines(keepends=True)
    for start, line in enumerate(lines[:50]):
        if line.strip() != "---":
            continue
        for end in range(start + 1, len(lines)):
            if lines[end].rstrip() in ("---", "..."):  # at column 0: an indented '---' is inside a YAML string
                block = "".join(lines[start + 1 : end])
                try:
                    meta = load_yaml_text(block) if block.strip() else {}
                except yaml.YAMLError as exc:
                    mark = getattr(exc, "problem_mark", None)
                    where = f" line {start + 2 + mark.line}" if mark is not None else ""
                    raise CardError(f"{source}:{where} invalid YAML front matter ({getattr(exc, 'problem', exc)}); fix the header between the --- lines") from None
                if meta is None:
                    meta = {}
                if not isinstance(meta, dict):
                    break  # a horizontal rule in prose, not front matter
                return meta, "".join(lines[end + 1 :]).lstrip("\n")
        break
    return {}, text


def read_front_matter(path: Path) -> tuple[dict[str, Any], str]:
    """Front matter and body of a card file; a missing file is simply an empty card."""
    path = Path(path)
    if not path.is_file():
        return {}, ""
    return split_front_matter(path.read_text(encoding="utf-8", errors="replace"), source=str(path))
