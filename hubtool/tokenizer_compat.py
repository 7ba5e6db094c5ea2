"""Tokenizer files that load in transformers 5 and in the 4.x line serving stacks still pin.

transformers 5 saves `tokenizer_class: TokenizersBackend`, a class 4.x does not have ("Tokenizer
class TokenizersBackend does not exist"), so a release saved with 5 breaks every 4.x loader even
though its tokenizer.json is fine. Both lines load that file through `PreTrainedTokenizerFast`
(in 5 an alias of TokenizersBackend), so the published tokenizer_config.json names that class.
The 5-only loading bookkeeping it also writes (`is_local`, `local_files_only`) is dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# tokenizer classes only transformers 5 defines, and the class both 4.x and 5 load the same files with
V5_ONLY_CLASSES = ("TokenizersBackend",)
PORTABLE_FAST_CLASS = "PreTrainedTokenizerFast"
V5_LOAD_KEYS = ("is_local", "local_files_only")


@dataclass(frozen=True)
class PortableTokenizerConfig:
    """The tokenizer_config.json to publish and a note (the change made, or why none could be)."""

    config: dict[str, Any]
    changed: bool
    note: str | None


def portable_tokenizer_config(folder: Path) -> PortableTokenizerConfig | None:
    """tokenizer_config.json of FOLDER made loadable by transformers 4.x and 5; None without one."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # not ours to judge here; the loaders will report it
    if not isinstance(config, dict):
        return None
    out = {k: v for k, v in config.items() if k not in V5_LOAD_KEYS}
    cls = out.get("tokenizer_class")
    note = None
    if cls in V5_ONLY_CLASSES:
        if (Path(folder) / "tokenizer.json").is_file():
            out["tokenizer_class"] = PORTABLE_FAST_CLASS
            note = f"tokenizer_config.json: {cls} exists only in transformers 5; published as {PORTABLE_FAST_CLASS} so 4.x loads it too"
        else:
            note = (f"{path}: tokenizer_class {cls} exists only in transformers 5 and there is no tokenizer.json; "
                    "transformers 4.x will not load this tokenizer (re-save it with a model-specific tokenizer class)")
    return PortableTokenizerConfig(out, out != config, note)

