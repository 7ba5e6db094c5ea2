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


# ModelCardData makes every list unique with a list-membership loop (quadratic: a 1 MB `tags:` list
# took minutes); it only dedups them, and validate_metadata checks the full lists, so it sees a sample.
HUB_LIST_SAMPLE = 256


def _hub_parse(text: str, meta: dict[str, Any], *, source: str) -> None:
    """huggingface_hub must read the same header we did: its header regex and YAML give the same
    mapping, and its ModelCardData keeps every key (strict eval-results parsing). Linear in the header."""
    import yaml
    from huggingface_hub import ModelCardData
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    match = REGEX_YAML_BLOCK.search(text)
    try:
        theirs = yaml.load(match.group(2), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if match else None  # noqa: S506
    except yaml.YAMLError as exc:
        raise CardError(f"{source}: huggingface_hub rejects the header ({getattr(exc, 'problem', exc)}); fix the YAML block") from None
    if theirs != meta:
        raise CardError(f"{source}: huggingface_hub does not read the same header (close it with a '---' line at column 0); check the YAML block")
    sample = {k: v[:HUB_LIST_SAMPLE] if isinstance(v, list) and k != "model-index" else v for k, v in meta.items()}
    try:
        data = ModelCardData(**sample, ignore_metadata_errors=False)
    except Exception as exc:  # ValueError for bad model-index / non-mapping headers
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(" Pass `ignore_metadata_errors")[0].rstrip(".")
        raise CardError(f"{source}: huggingface_hub rejects the header ({first}); fix the field it names") from None
    parsed = data.to_dict()
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
