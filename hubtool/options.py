"""One validator per setting, shared by command-line flags, release.yaml and `release --dry-run`.

Each takes the raw value and `source`, the words that say where the value came from (`--rope`,
`release.yaml: rope`), so a bad value fails with the same rule everywhere and the message points
at the place the user has to edit, never at a flag the command they ran doesn't have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubtool.errors import InputError

DTYPES = ("float16", "bfloat16")


def check_dtype(value: Any, *, source: str) -> str:
    """Output dtype of a merge."""
    if value not in DTYPES:
        raise InputError(f"{source}: dtype {value!r} is not supported; use one of {', '.join(DTYPES)}")
    return value


def check_int(value: Any, *, source: str, minimum: int = 1) -> int:
    """A whole number >= minimum (booleans and floats refused: `true` or `2.5` are typos, not counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{source}: {value!r} must be an integer >= {minimum}")
    return value


def check_rope(value: Any, *, source: str, original_ctx: int | None = None) -> str | None:
    """`TYPE:FACTOR[,key=value]` RoPE scaling text (None = no scaling); returns the text unchanged."""
    from hubtool.merge.rope import parse_rope_arg

    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{source}: {value!r} must be TYPE:FACTOR text, e.g. linear:4 (quote it in YAML)")
    parse_rope_arg(value, original_ctx=original_ctx, source=f"{source} {value}")
    return value


def check_max_position_embeddings(value: Any, *, source: str) -> int | None:
    """Context length written with RoPE scaling (None = base context x factor). 0 is an error, not 'unset'."""
    if value is None:
        return None
    return check_int(value, source=source, minimum=1)


def check_split_max_size(value: Any, *, source: str) -> str | None:
    """GGUF split size: 48G, 500M, 0 (never split); None = the Hub-safe default."""
    from hubtool.gguf.types import parse_size

    if value is None:
        return None
    parse_size(value, source=source)
    return str(value)


def check_memory_budget(value: Any, *, source: str) -> int:
    """A RAM budget like 16G or 500M (decimal units), in bytes; 0 would run nothing, so it is refused."""
    from hubtool.gguf.types import parse_size

    try:
        size = parse_size(value, source=source)
    except InputError:
        size = 0
    if size <= 0:
        raise InputError(f"{source}: {value!r} must be a RAM size above 0, e.g. 16G or 500M")
    return size


def check_repo_name(value: Any, *, source: str, what: str = "name") -> str:
    """A repo name (or namespace) the Hub accepts: huggingface_hub's own rule (no '--' or '..', no
    leading/trailing '.' or '-', at most 96 characters)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(value, str) or not value:
        raise InputError(f"{source}: {what} {value!r} must be a non-empty name")
    try:
        validate_repo_id(f"ns/{value}")
    except HFValidationError:
        raise InputError(
            f"{source}: {what} {value!r} is refused by the Hub; use letters, digits, '-', '_', '.', "
            "not starting or ending with '-' or '.', no '--' or '..', at most 96 characters"
        ) from None
    return value


def check_text_source(value: Any, *, source: str, allow_folder: bool = False) -> str:
    """'builtin', 'builtin:calibration', 'builtin:heldout', or a readable UTF-8 .txt/.jsonl file
    (or, for GPTQ calibration, a `datasets.save_to_disk` folder)."""
    from hubtool.quality.texts import read_text_source

    if not isinstance(value, str) or not value:
        raise InputError(f"{source}: {value!r} must be 'builtin', 'builtin:heldout' or a path to a .txt/.jsonl file")
    if value.startswith("builtin"):
        if value not in ("builtin", "builtin:calibration", "builtin:heldout"):
            raise InputError(f"{source}: {value!r}: use builtin, builtin:calibration or builtin:heldout")
        return value
    if allow_folder and Path(value).is_dir():
        return value
    if not Path(value).is_file():
        raise InputError(f"{source}: {value}: text file not found; fix the path or use 'builtin'")
    try:
        read_text_source(value)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    return value


def check_context(value: Any, *, source: str, trained: Any, config: Path | str, force: bool = False,
                  force_flag: str = "--force-context") -> int:
    """An evaluation window length: at least 8 tokens and, unless forced, no longer than the context the
    model was trained for (config.json max_position_embeddings; a longer window is not what users get,
    and 10^8 allocates without end)."""
    check_int(value, source=source, minimum=8)
    if isinstance(trained, int) and not isinstance(trained, bool) and value > trained and not force:
        raise InputError(f"{source} {value}: longer than the {trained} tokens the model was trained on ({config}: "
                         f"max_position_embeddings); pass at most {trained}, or {force_flag} to evaluate past it")
    return value


def check_tokens_in_text(value: int, *, available: int, source: str, text: str) -> None:
    """An explicit token budget the text can't fill is a mistake, not a request: say how much there is."""
    if value > available:
        raise InputError(f"{source} {value}: the text ({text}) holds only {available} tokens; pass at most {available} "
                         "or give a longer --text")
