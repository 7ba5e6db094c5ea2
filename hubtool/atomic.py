"""Write outputs to a temp path beside the target, rename into place only on success."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from hubtool.errors import InputError


def check_output_free(out: Path, *, overwrite: bool) -> None:
    """Fail early (before any work) when OUT exists and the user did not pass --overwrite."""
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; choose another -o path or pass --overwrite to replace it")


def _publishable(path: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; a finished output should have normal umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def staged_dir(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temp dir on OUT's filesystem; on clean exit it replaces OUT atomically.

    On any exception the temp dir is removed and OUT is left exactly as it was, so an
    interrupted run never leaves a half-written model where a user expects a good one.
    """
    out = Path(out)
    check_output_free(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publishable(tmp)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_file(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Like staged_dir, for a single file."""
    out = Path(out)
    check_output_free(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _publishable(tmp)
    os.replace(tmp, out)
