"""Progress for long work: rich bars on a TTY, plain lines otherwise (CI logs, --json)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """--json mode: plain progress lines only (no rich bars, no huggingface_hub tqdm bars), so logs
    stay readable and stdout carries nothing but the machine-readable summary."""
    global _QUIET
    _QUIET = quiet
    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def log(message: str) -> None:
    """One status line on stderr (stdout is reserved for results and --json)."""
    print(message, file=sys.stderr, flush=True)


def track(items: Iterable[T], *, total: int | None = None, description: str = "") -> Iterator[T]:
    """Iterate with progress: a rich bar when stderr is a TTY, else a line every few seconds."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty() and not _QUIET:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)
        return
    last = 0.0
    for i, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last > 5 or i == total:
            last = now
            log(f"{description}: {i}/{total if total is not None else '?'}")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Keep stdout for results alone: libraries (gptqmodel's logger and banner, llama.cpp) print to
    stdout, which would corrupt `--json` in CI. Redirects both sys.stdout and file descriptor 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)
