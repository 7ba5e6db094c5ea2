"""Progress for long work: rich bars on a TTY, plain lines otherwise (CI logs, --json)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_QUIET = False
_DISCARD_LIBRARY_STDOUT = False  # set by quiet_libraries: what libraries print to stdout is chatter


def set_quiet(quiet: bool) -> None:
    """--json mode: plain progress lines only (no rich bars, no huggingface_hub tqdm bars), so logs
    stay readable and stdout carries nothing but the machine-readable summary."""
    global _QUIET
    _QUIET = quiet
    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


# Set before the libraries load: they read these at import time.
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",  # bars libraries draw with tqdm directly (transformers' GGUF loader, ...)
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    "TOKENIZERS_PARALLELISM": "false",
}


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """What a user reads is hubtool's own progress: library chatter only with --verbose.

    gptqmodel prints an ASCII-art banner and INFO/WARN lines through its own logger (which forces
    itself to INFO, so a logger level is not enough), torchao logs "Failed to load" for GPU kernels,
    torch's _pytree warns about enums, transformers/peft emit FutureWarnings and tqdm bars. hubtool
    reports through print (log/track), so while this is active library logging below ERROR is off,
    Python warnings from outside hubtool are ignored and library progress bars are off; all of it is
    restored on exit (the CLI runs in-process in tests). Enter before the heavy libraries load.
    """
    if verbose:
        yield
        return
    added = [key for key in _QUIET_ENV if key not in os.environ]
    os.environ.update({key: _QUIET_ENV[key] for key in added})
    global _DISCARD_LIBRARY_STDOUT
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    discard_before, _DISCARD_LIBRARY_STDOUT = _DISCARD_LIBRARY_STDOUT, True
    hub_bars = None
    with contextlib.suppress(ImportError):
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

        hub_bars = not are_progress_bars_disabled()
        disable_progress_bars()
    tf_state = None
    if "transformers" in sys.modules:  # already imported: switch its own knobs too
        from transformers.utils import logging as tf_logging

        tf_state = (tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled())
        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("default", module=r"hubtool(\.|$)")
            yield
    finally:
        for key in added:
            os.environ.pop(key, None)
        logging.disable(previous)
        _DISCARD_LIBRARY_STDOUT = discard_before
        if hub_bars:
            from huggingface_hub.utils import enable_progress_bars

            enable_progress_bars()
        if tf_state is not None:
            tf_logging.set_verbosity(tf_state[0])
            if tf_state[1]:
                tf_logging.enable_progress_bar()


def library_output_discarded() -> bool:
    """Whether quiet_libraries is active (a child process hubtool starts should be quiet too)."""
    return _DISCARD_LIBRARY_STDOUT


def log(message: str) -> None:
    """One status line on stderr (stdout is reserved for results and --json)."""
    print(message, file=sys.stderr, flush=True)


def track(items: Iterable[T], *, total: int | None = None, description: str = "") -> Iterator[T]:
    """Iterate with progress: a rich bar when stderr is a TTY, else a line every few seconds."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty() and not _QUIET:
        from rich.console import Console
        from rich.progress import Progress

        with Progress(transient=True, console=Console(stderr=True)) as bar:
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
    """Keep stdout for results alone: libraries (gptqmodel's logger, banner and progress bars, llama.cpp)
    print to stdout, which would corrupt `--json` in CI. Redirects both sys.stdout and file descriptor 1
    to stderr, or to /dev/null while quiet_libraries is active (hubtool itself reports on stderr)."""
    sys.stdout.flush()
    saved = os.dup(1)
    sink = open(os.devnull, "w") if _DISCARD_LIBRARY_STDOUT else None  # noqa: SIM115 - closed below
    try:
        os.dup2(sink.fileno() if sink is not None else 2, 1)
        with contextlib.redirect_stdout(sink if sink is not None else sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)
        if sink is not None:
            sink.close()
