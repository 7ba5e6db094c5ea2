"""Demote a Markdown document's headings so it can sit under a section of another document.

A source card embedded under our "## Original model card" would otherwise put its own H1 (the
source model's title) in at full size, above our section heading in the outline. ATX headings
(`# Title`), setext headings (`Title` over `===` / `---`) and HTML `<h1>`..`<h6>` tags move down
BY levels (capped at 6); fenced and indented code is left alone.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^( {0,3})(#{1,6})(?=[ \t]|$)")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_HTML = re.compile(r"(</?)h([1-6])(?=[\s>/])", re.IGNORECASE)
_BREAKS = re.compile(r"^ {0,3}([-*_])([ \t]*\1){2,}[ \t]*$")  # a thematic break: never a paragraph line


def _paragraph_line(line: str) -> bool:
    """Could LINE be the text of a setext heading (a plain paragraph line, not a block of its own)?"""
    if not line.strip() or line.startswith(("    ", "\t")):
        return False
    s = line.lstrip()
    return not (_ATX.match(line) or _BREAKS.match(line) or _FENCE.match(line) or s.startswith((">", "<", "|"))
                or re.match(r"([-*+]|\d+[.)])[ \t]", s))


def demote_headings(markdown: str, by: int = 2) -> str:
    """MARKDOWN with every heading BY levels deeper (H1 -> H3 for by=2; H5 and H6 become H6)."""
    if by <= 0 or not markdown:
        return markdown
    out: list[str] = []
    fence: str | None = None
    lines = markdown.splitlines(keepends=True)
    for raw in lines:
        line = raw.rstrip("\r\n")
        end = raw[len(line):]
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence) and not line.strip()[len(opened.group(1)):].strip():
                fence = None
            out.append(raw)
            continue
        if opened:
            fence = opened.group(1)
            out.append(raw)
            continue
        if line.startswith(("    ", "\t")) and (not out or not out[-1].strip() or out[-1].startswith(("    ", "\t"))):
            out.append(raw)  # indented code (opened after a blank line) is not parsed for headings
            continue
        atx = _ATX.match(line)
        if atx:
            level = min(6, len(atx.group(2)) + by)
            out.append(f"{atx.group(1)}{'#' * level}{line[atx.end():]}{end}")
            continue
        setext = _SETEXT.match(line)
        if setext and out and _paragraph_line(out[-1].rstrip("\r\n")):
            level = min(6, (1 if setext.group(1)[0] == "=" else 2) + by)
            para: list[str] = []
            while out and _paragraph_line(out[-1].rstrip("\r\n")):  # the heading is the whole paragraph above
                para.insert(0, out.pop())
            text = " ".join(p.strip() for p in para)
            out.append(f"{'#' * level} {text}{end}")
            continue
        out.append(_HTML.sub(lambda m: f"{m.group(1)}h{min(6, int(m.group(2)) + by)}", raw))
    return "".join(out)

