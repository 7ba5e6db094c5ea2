"""User-facing errors: one line, naming the file and the fix."""

from __future__ import annotations


class HubtoolError(Exception):
    """An error the user can fix. The CLI prints `error: <message>` and exits with `exit_code`."""

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(HubtoolError):
    """Bad input files or options (exit 2)."""


class MergeError(HubtoolError):
    """The adapter cannot be merged into the base as given (exit 3)."""

    exit_code = 3


class QuantizeError(HubtoolError):
    """Quantization failed or its result failed verification (exit 4)."""

    exit_code = 4


class CardError(HubtoolError):
    """A model card or its metadata is invalid (exit 5)."""

    exit_code = 5


class StageError(HubtoolError):
    """A release stage can't run or be published yet: an input stage missing from the cache, the same stage
    running elsewhere, `--publish` before every stage is done, an unreachable or inconsistent stage cache."""

    exit_code = 7


class PushError(HubtoolError):
    """The Hub refused or could not be reached (exit 6)."""

    exit_code = 6


# ---- turning low-level failures into one line -------------------------------------------------

import errno as _errno  # noqa: E402

# What each errno means for the user and what to do about it.
_OS_FIXES = {
    _errno.EROFS: ("read-only file system", "choose a path on a writable disk"),
    _errno.ENOSPC: ("disk full", "free space on that disk or choose a path on another disk"),
    _errno.EDQUOT: ("disk quota exceeded", "free space in your quota or choose a path on another disk"),
    _errno.EACCES: ("permission denied", "choose a path you can write to, or fix its permissions"),
    _errno.EPERM: ("operation not permitted", "choose a path you can write to, or fix its permissions"),
    _errno.EISDIR: ("is a folder, expected a file", "give a file path"),
    _errno.ENOTDIR: ("a part of the path is a file, not a folder", "give a folder path"),
    _errno.EEXIST: ("already exists", "choose another path or remove it"),
    _errno.ENOENT: ("not found", "check the path"),
    _errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    _errno.EMFILE: ("too many open files", "raise the open-file limit (ulimit -n)"),
    _errno.EIO: ("input/output error", "check the disk"),
}


def human_bytes(n: float) -> str:
    """1.2 GB / 340 MB / 12 kB (decimal, like the Hub and df -H)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def describe_os_error(exc: OSError, path: object = None, *, need_bytes: int | None = None) -> str:
    """`PATH: disk full; free space ...` for an OSError; PATH is the user's path when the caller knows it
    (a temp file's name means nothing to the user), else the file the OS named."""
    import os
    import shutil

    where = path if path is not None else (exc.filename if exc.filename is not None else "")
    problem, fix = _OS_FIXES.get(exc.errno or -1, (exc.strerror or type(exc).__name__, "check the path and the disk"))
    if exc.errno in (_errno.ENOSPC, _errno.EDQUOT) and where:
        probe = os.fspath(where)
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(probe)
        try:
            free = shutil.disk_usage(probe or ".").free
            need = f"needs about {human_bytes(need_bytes)}, " if need_bytes else ""
            problem = f"{problem} ({need}{human_bytes(free)} free)"
        except OSError:
            pass
    return f"{where}: {problem}; {fix}" if where else f"{problem}; {fix}"


def from_os_error(exc: OSError, path: object = None, *, need_bytes: int | None = None, error: type[HubtoolError] = InputError) -> HubtoolError:
    """The one-line HubtoolError for an OSError (see describe_os_error)."""
    return error(describe_os_error(exc, path, need_bytes=need_bytes))


def is_disk_error(exc: BaseException) -> bool:
    """Failures of the machine (disk full, read-only, no permission), not of the input: don't blame the input."""
    return isinstance(exc, OSError) and exc.errno in (_errno.ENOSPC, _errno.EDQUOT, _errno.EROFS, _errno.EACCES, _errno.EPERM, _errno.EIO)


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP turned into an exception, so every `staged_*` cleanup runs as it does on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
