"""Validate a README.md the way the Hub will, before anything is pushed.

The Hub's own validator is an online endpoint (`ModelCard.validate`); here we parse with
huggingface_hub's ModelCard/ModelCardData offline and add the rules the Hub enforces that
ModelCardData does not (license ids, license 'other' name+link, repo-id base_model, no null
list entries), each as a one-line error saying what to fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hubtool.card.metadata import check_no_token, validate_metadata, validate_model_index
from hubtool.errors import CardError
from hubtool.frontmatter import split_front_matter

_HEADER_AT_TOP = re.compile(r"^\s*---[\r\n]")


def check_card(text: str, *, source: str = "README.md") -> dict[str, Any]:
    """Parsed header metadata of a valid card; CardError (one line) for anything the Hub would refuse."""
    if not _HEADER_AT_TOP.match(text):
        raise CardError(f"{source}: the YAML header must be the first thing in the file (a '---' line); move or add it")
    meta, body = split_front_matter(text, source=source)
    if not meta:
        raise CardError(f"{source}: empty or invalid YAML header; it must be a mapping of fields between '---' lines")
    validate_metadata(meta, source=source)
    validate_model_index(meta, source=source)
    _hub_parse(text, meta, source=source)
    if not body.strip():
        raise CardError(f"{source}: the card has no text after the header; describe the model")
    check_no_token(text, source=source)
    return meta


def _hub_parse(text: str, meta: dict[str, Any], *, source: str) -> None:
    """huggingface_hub must read the same header we did (same keys, strict eval-results parsing)."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except Exception as exc:  # ValueError for bad model-index / non-mapping headers
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(" Pass `ignore_metadata_errors")[0].rstrip(".")
        raise CardError(f"{source}: huggingface_hub rejects the header ({first}); fix the field it names") from None
    parsed = card.data.to_dict()
    lost = sorted(k for k in meta if k not in parsed and k not in ("model-index", "eval_results"))
    if lost:
        raise CardError(f"{source}: huggingface_hub does not read header field(s) {', '.join(lost)}; check the YAML block")


def check_card_file(path: Path) -> dict[str, Any]:
    """check_card on a file, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CardError(f"{path}: card not found; render one with `hubtool card render`")
    from hubtool.textfile import read_text

    return check_card(read_text(path, what="card", error=CardError), source=str(path))
