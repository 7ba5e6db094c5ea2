"""The results file that cards read (`quality.json`), one row per artifact, so the card and
release summary can show GPTQ and GGUF side by side:

    {"reference": "fp16", "text": "builtin:heldout", "tokens": 4096, "context": 512,
     "rows": [{"variant": "Q4_K_M", "kind": "gguf", "perplexity": 11.9, "kl_div": 0.031,
               "top1": 0.93, "size_bytes": 123, "bits_per_weight": 4.9}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubtool.errors import InputError

RESULTS_FILE = "quality.json"


def read_results(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        return {"rows": []}
    from hubtool.textfile import read_text

    try:
        data = json.loads(read_text(path, what="results file"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); delete it and re-run verify") from None
    if not isinstance(data, dict) or not isinstance(data.setdefault("rows", []), list) or not all(isinstance(r, dict) for r in data["rows"]):
        raise InputError(f"{path}: not a quality.json ({{\"rows\": [...]}} from a verify step); point at verify's results file")
    return data


def write_results(path: Path, rows: list[dict[str, Any]], **header: Any) -> dict[str, Any]:
    """Add/replace rows (keyed by kind+variant) in a results file, keeping others' rows."""
    path = Path(path)
    data = read_results(path)
    data.update(header)
    keep = {(r.get("kind"), r.get("variant")): r for r in data["rows"]}
    for row in rows:
        keep[(row.get("kind"), row.get("variant"))] = row
    data["rows"] = list(keep.values())
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True) if tmp.exists() else None
        from hubtool.errors import from_os_error

        raise from_os_error(exc, path) from None  # the user's --results path, not the temp file
    return data
