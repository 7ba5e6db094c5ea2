"""Read a user's YAML settings file (release config, card metadata, GPTQ preset) with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubtool.errors import HubtoolError, InputError


def read_yaml_mapping(path: Path | str, *, what: str, example: str, error: type[HubtoolError] = InputError) -> dict[str, Any]:
    """The file's top-level mapping ({} for an empty file); `what` names the file kind in errors."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise error(f"{path}: {what} not found; pass an existing YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise error(f"{path}{where}: invalid YAML ({problem}); fix the syntax, quoting values that contain ':' or '#'") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping ({example}), got {type(data).__name__}")
    return data
