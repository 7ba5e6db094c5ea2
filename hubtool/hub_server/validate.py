"""The one place the local Hub decides whether a repo id, file path, ref name or object id is acceptable.

Every name that reaches the disk (repo folders, blob files) or the commit table passes through
here first, so a `../`, an absolute path, a NUL or an over-long name is a 400 before it can
address anything. Rules follow huggingface_hub's own checks (utils/_validators.py) and git's
ref-name rules; where the real Hub's exact answer is unknown we refuse rather than guess.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hubtool.hub_server.errors import StorageError

REPO_TYPES = ("model", "dataset", "space")
MAX_NAME = 96  # huggingface_hub: namespace and name are 1-96 characters each
MAX_PATH = 1000  # bytes of a path in a repo; longer ones are refused (the Hub's limit is not published)
MAX_REF = 255

_PART_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?", re.ASCII)
_OID_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
_COMMIT_RE = re.compile(r"[0-9a-f]{40}", re.ASCII)
_REF_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
PR_REF_RE = re.compile(r"refs/pr/([1-9][0-9]{0,8})", re.ASCII)


def _bad(message: str) -> StorageError:
    return StorageError(400, "BadRequest", message)


def repo_part(part: str, what: str = "repo name") -> str:
    """One half of NAMESPACE/NAME: [A-Za-z0-9._-], 1-96 chars, alphanumeric at both ends, no '--'/'..'."""
    if not isinstance(part, str) or not part or len(part) > MAX_NAME or not _PART_RE.fullmatch(part):
        raise _bad(f"invalid {what} {str(part)[:120]!r}: use 1-{MAX_NAME} of A-Z a-z 0-9 . _ -, starting and ending alphanumeric")
    if "--" in part or ".." in part:
        raise _bad(f"invalid {what} {part!r}: '--' and '..' are not allowed")
    return part


def repo_id(value: str) -> str:
    """A full repo id NAMESPACE/NAME; the name may not end in '.git'."""
    if not isinstance(value, str) or value.count("/") != 1:
        raise _bad(f"invalid repo id {str(value)[:120]!r}: must be NAMESPACE/NAME")
    ns, name = value.split("/")
    repo_part(ns, "namespace")
    repo_part(name)
    if name.endswith(".git"):
        raise _bad(f"invalid repo name {name!r}: cannot end with '.git'")
    return value


# Namespaces whose URLs are the Hub's own routes (/api/..., /models/..., /datasets/...): a repo
# there could be written but never read back or shown, so the Hub refuses them, and so do we.
RESERVED_NAMESPACES = frozenset({"api", "models", "datasets", "spaces", "docs", "new", "settings", "organizations",
                                 "login", "logout", "join", "pricing", "collections", "papers", "posts", "blog"})


def not_reserved(namespace: str) -> str:
    if namespace.lower() in RESERVED_NAMESPACES:
        raise _bad(f"namespace {namespace!r} is reserved (its URLs are the Hub's own routes); pick another")
    return namespace


def repo_type(value: object) -> str:
    if value not in REPO_TYPES:
        raise _bad(f"invalid repo type {str(value)[:40]!r}: one of {', '.join(REPO_TYPES)}")
    return str(value)


def file_path(value: object) -> str:
    """A path inside a repo: relative, '/'-separated, no empty/'.'/'..'/'.git' segment, no control chars or '\\'."""
    if not isinstance(value, str) or not value:
        raise _bad("invalid path: empty")
    shown = value[:200]
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise _bad(f"invalid path {shown!r}...: longer than {MAX_PATH} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _bad(f"invalid path {shown!r}: control characters (newline, NUL, ...) are not allowed")
    if "\\" in value:
        raise _bad(f"invalid path {shown!r}: backslashes are not allowed, use '/'")
    if value.startswith("/") or value.endswith("/"):
        raise _bad(f"invalid path {shown!r}: must be relative, without leading or trailing '/'")
    for seg in value.split("/"):
        if seg in ("", ".", "..") or seg.lower() == ".git":
            raise _bad(f"invalid path {shown!r}: empty, '.', '..' and '.git' segments are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"invalid path {shown!r}: not valid UTF-8") from None
    return value


def ref_name(value: object, kind: str = "branch") -> str:
    """A branch or tag name by git's check-ref-format rules (no '..', '~^:?*[\\', '@{', '//', '.lock')."""
    if not isinstance(value, str) or not value or len(value) > MAX_REF:
        raise _bad(f"invalid {kind} name {str(value)[:120]!r}")
    if (
        _REF_BAD_CHARS.search(value)
        or ".." in value
        or "@{" in value
        or "//" in value
        or value == "@"
        or value.startswith(("/", ".", "-", "refs/"))
        or value.endswith(("/", ".", ".lock"))
        or any(seg.startswith(".") for seg in value.split("/"))
    ):
        raise _bad(f"invalid {kind} name {value!r}")
    return value


def oid(value: object) -> str:
    """An LFS object id: exactly 64 lowercase hex characters (a sha256)."""
    if not isinstance(value, str) or not _OID_RE.fullmatch(value):
        raise _bad(f"invalid LFS oid {str(value)[:80]!r}: must be 64 lowercase hex characters")
    return value


MAX_JSON_DEPTH = 64  # far deeper than any request the client sends; the stdlib parser recurses
_JSON_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET_RE = re.compile(r"[\[\]{}]")


def json_loads(raw: bytes | str) -> Any:
    """JSON as the client sends it: no NaN/Infinity, at most MAX_JSON_DEPTH levels (400 otherwise).

    The depth is checked before parsing (the stdlib parser recurses: a 100k-deep array is a
    RecursionError), on the text with its strings taken out.
    """
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    depth = 0
    for bracket in _BRACKET_RE.finditer(_JSON_STRING_RE.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise _bad(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")

    def constant(name: str) -> Any:
        raise _bad(f"JSON constant {name} is not allowed")

    return json.loads(text, parse_constant=constant)


def is_size(value: object) -> bool:
    """A byte count: a non-negative JSON integer (not a float such as 1e400, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


def size(value: object, what: str = "size") -> int:
    if not is_size(value):
        raise _bad(f"{what} must be a non-negative integer, not {str(value)[:40]!r}")
    return int(value)  # type: ignore[arg-type]


def is_commit_id(value: str) -> bool:
    return bool(_COMMIT_RE.fullmatch(value))


def under(root: Path, *parts: str) -> Path:
    """ROOT/parts, resolved, and refused (400) unless it stays inside ROOT; the last line of defence."""
    base = root.resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise _bad(f"path {'/'.join(parts)[:120]!r} leaves the server root")
    return target
