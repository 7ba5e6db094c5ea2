"""Source cards from real-world input: recover a YAML header mangled by copying a rendered Hub page.

The Hub shows a card's header as a table; copying it back gives lines that are a lone `|` and
`key: value |` line ends (sometimes `| key: value |`). Such a block either fails to parse or parses
to nothing useful, and the derivative card silently loses its license, language and datasets.
We undo the mangling only when that is unambiguous: every pipe we strip is table furniture (a
`key: |` followed by an indented block is a YAML literal and makes the block ambiguous), and
the cleaned block parses to a mapping whose values no longer carry a stray pipe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hubtool.frontmatter import split_front_matter

_LONE_PIPE = re.compile(r"^\s*\|\s*$")
_TRAILING = re.compile(r"\s+\|\s*$")
_LEADING = re.compile(r"^\|\s+")
_ONE_TRAILING = re.compile(r"^(.*?)\s\|\s*$")


@dataclass(frozen=True)
class SourceCard:
    """A source card's header and body, plus what we had to do to read it (shown to the user)."""

    meta: dict[str, Any]
    body: str
    notes: tuple[str, ...] = field(default_factory=tuple)


def read_source_card(path: Path) -> SourceCard:
    """Front matter and body of PATH (missing file: empty), recovering a pipe-mangled header."""
    path = Path(path)
    if not path.is_file():
        return SourceCard({}, "")
    text = path.read_text(encoding="utf-8", errors="replace")
    recovered = recover_pipe_mangled(text)
    if recovered is not None:
        meta, body = recovered
        keys = ", ".join(meta) or "no fields"
        return SourceCard(meta, body, (f"{path}: recovered a header mangled by copying from a web page (`|` lines); read {keys}",))
    meta, body = split_front_matter(text, source=str(path))
    return SourceCard(meta, body)


def recover_pipe_mangled(text: str) -> tuple[dict[str, Any], str] | None:
    """(metadata, body) when TEXT's header is pipe-mangled and the repair is unambiguous, else None."""
    whole = _recover_whole_page(text)
    if whole is not None:
        return whole
    lines = text.splitlines(keepends=True)
    span = _mangled_span(lines)
    if span is None:
        return None
    start, end, body_start = span
    block = [line.rstrip("\r\n") for line in lines[start:end]]
    if not any(_LONE_PIPE.match(b) or _TRAILING.search(b) for b in block):
        return None
    if not any(_LONE_PIPE.match(b) for b in block) and _parses_to_mapping(block):
        return None  # valid YAML whose values merely end in " |": not ours to rewrite
    cleaned: list[str] = []
    for i, line in enumerate(block):
        if _LONE_PIPE.match(line):
            continue
        if _TRAILING.search(line):
            if _opens_literal_block(block, i):
                return None  # `key: |` + indented lines is real YAML: ambiguous, leave it alone
            line = _TRAILING.sub("", line)
        line = _LEADING.sub("", line)
        cleaned.append(line)
    try:
        meta = yaml.safe_load("\n".join(cleaned))
    except yaml.YAMLError:
        return None
    if not isinstance(meta, dict) or not meta or not all(isinstance(k, str) for k in meta):
        return None
    if any(_has_pipe_end(v) for v in meta.values()):
        return None
    return meta, "".join(lines[body_start:]).lstrip("\n")


def _recover_whole_page(text: str) -> tuple[dict[str, Any], str] | None:
    """The whole page copied as one table column: a lone `|` line, then each line of the card (the
    `---` fences, the header, the body) ending in ` |`, a lone `|` between each. Unambiguous only when
    that alternation holds from the first `|` to the end: then dropping the lone `|` lines and one
    trailing ` |` per line gives back the card exactly (a blank line of the card is a lone `|` too)."""
    lines = [line.rstrip("\r\n") for line in text.splitlines()]
    start = 0
    while start < min(len(lines), 50) and not _LONE_PIPE.match(lines[start]):
        if lines[start].strip() and not _is_junk(lines[start].strip()):
            return None
        start += 1
    rows = lines[start:]
    while rows and not rows[-1].strip():
        rows.pop()
    if len(rows) < 4 or rows[1].strip() != "--- |":
        return None
    separators, content = rows[0::2], rows[1::2]
    if not all(_LONE_PIPE.match(r) for r in separators):
        return None
    card: list[str] = []
    for row in content:
        if _LONE_PIPE.match(row):
            card.append("")  # a blank line of the card
        else:
            match = _ONE_TRAILING.match(row)
            if match is None:
                return None  # a line without its pipe: not this shape
            card.append(match.group(1))  # one ` |` only: a table row of the body keeps its own
    try:
        end = card.index("---", 1)
    except ValueError:
        return None
    if card[0] != "---":
        return None
    try:
        meta = yaml.safe_load("\n".join(card[1:end]))
    except yaml.YAMLError:
        return None
    if not isinstance(meta, dict) or not meta or not all(isinstance(k, str) for k in meta) or any(_has_pipe_end(v) for v in meta.values()):
        return None
    body = "\n".join(card[end + 1 :]).lstrip("\n")
    return meta, body + "\n" if body else body


def _mangled_span(lines: list[str]) -> tuple[int, int, int] | None:
    """(first, past-last, body start) lines of a header block: between `---` lines, or a run of table lines at the top."""
    for start, line in enumerate(lines[:50]):
        stripped = line.strip()
        if stripped == "---":
            for end in range(start + 1, len(lines)):
                if lines[end].rstrip() in ("---", "..."):
                    return start + 1, end, end + 1
            return None
        if _LONE_PIPE.match(line):  # the fences were lost in the copy: the run of table lines is the header
            end = start
            while end < len(lines) and _is_mangled(lines[end]):
                end += 1
            if any(_TRAILING.sub("", line).strip() == "---" for line in lines[start:end]):
                return None  # the fences are there, mangled: the whole-page shape, which did not hold
            return start, end, end
        if stripped and not _is_junk(stripped):
            return None
    return None


def _parses_to_mapping(block: list[str]) -> bool:
    try:
        return isinstance(yaml.safe_load("\n".join(block)), dict)
    except yaml.YAMLError:
        return False


def _is_junk(stripped: str) -> bool:
    """Lines a copied page puts above the header ("user's picture", "Update README.md", a short sha)."""
    return len(stripped) < 80 and not stripped.startswith("#")


def _is_mangled(line: str) -> bool:
    return bool(_LONE_PIPE.match(line) or _TRAILING.search(line.rstrip("\r\n")))


def _opens_literal_block(block: list[str], i: int) -> bool:
    """`key: |` (or `key: |-`) whose next non-blank line is indented deeper: a YAML block scalar."""
    if not re.match(r"^\s*[^\s:#][^:]*:\s*\|[-+]?\s*$", block[i]):
        return False
    indent = len(block[i]) - len(block[i].lstrip())
    for nxt in block[i + 1 :]:
        if nxt.strip() and not _LONE_PIPE.match(nxt):
            return len(nxt) - len(nxt.lstrip()) > indent
    return False


def _has_pipe_end(value: Any) -> bool:
    if isinstance(value, str):
        return value.rstrip().endswith("|")
    if isinstance(value, list):
        return any(_has_pipe_end(v) for v in value)
    if isinstance(value, dict):
        return any(_has_pipe_end(v) for v in value.values())
    return False
