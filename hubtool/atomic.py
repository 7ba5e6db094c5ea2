"""Write outputs to a temp path beside the target, rename into place only on success."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from hubtool.errors import InputError, from_os_error


def _same_or_inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def check_apart(outputs: Mapping[str, Path | str | None], inputs: Iterable[Path | str | None]) -> None:
    """The one check every command runs before it writes anything: no output (a file, a folder, a
    work dir, a local Hub; `outputs` maps the flag that named it to the path) may be one of the
    inputs, sit inside an input folder, or hold an input — `--overwrite` would replace the user's
    files, and anything written there lands in the user's model. Inputs that don't exist are skipped."""
    sources = [Path(s) for s in inputs if s is not None and str(s) and os.path.lexists(s)]
    for flag, out in outputs.items():
        if out is None or not str(out):
            continue
        out = Path(out)
        for src in sources:
            if _same_or_inside(out, src):
                where = "is the input" if out.resolve() == src.resolve() else "is inside the input"
            elif _same_or_inside(src, out):
                where = "holds the input"
            else:
                continue
            raise InputError(f"{out}: {flag} {where} {src} (nothing was written); choose a {flag} path outside the inputs")


def check_output_free(out: Path, *, overwrite: bool, inputs: Iterable[Path | str | None] = (), kind: str = "any",
                      flag: str = "-o") -> None:
    """Fail early (before any work) when OUT exists and the user did not pass --overwrite, when OUT
    is one of the inputs (or holds one: --overwrite would delete the user's model), or when OUT is
    the wrong kind of thing (`kind` "file": an existing folder; "dir": an existing file)."""
    out = Path(out)
    check_apart({flag: out}, inputs)
    if kind == "file" and out.is_dir():
        raise InputError(f"{out}: is a folder; give a file path for the output (e.g. {out / 'README.md'})")
    if kind == "dir" and out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; give a folder path for the output")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; choose another -o path or pass --overwrite to replace it")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{out}: {parent} is a file, not a folder; choose another -o path")


def check_folder(path: Path, *, flag: str) -> None:
    """A folder option (--work-dir, --local-hub) that may not exist yet but must not be a file."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{probe}: {flag} {path} needs a folder there, but it is a file; choose another {flag}")


def check_writable_file(path: Path, *, flag: str) -> None:
    """An output file that is written at the end of long work (--results): prove now that it can be, naming
    the user's path (not the temp file beside it) if its folder is missing, read-only or full."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: {flag} is a folder; give a file path (e.g. {path / 'quality.json'})")
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist; create it or choose another {flag}")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=path.parent)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise from_os_error(exc, path) from None


def ensure_writable_folder(path: Path, *, flag: str) -> None:
    """Make the folder option's folder (if missing) and prove a file can be written in it, so a read-only
    or full disk is one line naming the user's path before any work, not an internal path hours later."""
    path = Path(path)
    created = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".hubtool-probe-", dir=path)
        try:
            os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        for folder in created:  # leave no empty skeleton behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise from_os_error(exc, path) from None


def _publishable(path: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; a finished output should have normal umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def _make_parent(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise from_os_error(exc, out.parent) from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def _cleanup_on_failure(tmp: Path, out: Path, need_bytes: int | None) -> Iterator[None]:
    """Remove TMP on any exception (Ctrl-C, SIGTERM/SIGHUP via hubtool.errors.Interrupted, errors);
    a disk error becomes one line naming OUT, not the temp file nobody asked for."""
    try:
        yield
    except OSError as exc:
        _remove(tmp)
        ours = exc.filename is not None and str(exc.filename).startswith(str(tmp))
        if ours or exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise from_os_error(exc, out, need_bytes=need_bytes) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def staged_dir(out: Path, *, overwrite: bool = False, inputs: Iterable[Path | str | None] = (), need_bytes: int | None = None) -> Iterator[Path]:
    """Yield a fresh temp dir on OUT's filesystem; on clean exit it replaces OUT atomically.

    On any exception the temp dir is removed and OUT is left exactly as it was, so an
    interrupted run never leaves a half-written model where a user expects a good one.
    """
    out = Path(out)
    check_output_free(out, overwrite=overwrite, inputs=inputs, kind="dir")
    _make_parent(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise from_os_error(exc, out) from None
    with _cleanup_on_failure(tmp, out, need_bytes):
        yield tmp
        _publishable(tmp)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)  # put the user's previous output back
            raise
    if old is not None:
        _remove(old)


@contextlib.contextmanager
def staged_file(out: Path, *, overwrite: bool = False, need_bytes: int | None = None) -> Iterator[Path]:
    """Like staged_dir, for a single file."""
    out = Path(out)
    check_output_free(out, overwrite=overwrite, kind="file")
    _make_parent(out)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    except OSError as exc:
        raise from_os_error(exc, out) from None
    os.close(fd)
    tmp = Path(name)
    with _cleanup_on_failure(tmp, out, need_bytes):
        yield tmp
        _publishable(tmp)
        os.replace(tmp, out)
