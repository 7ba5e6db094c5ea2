"""Child processes hubtool waits on (llama.cpp's converter, the gptqmodel worker) die with it."""

from __future__ import annotations

import contextlib
import subprocess
from typing import Iterator


@contextlib.contextmanager
def killed_on_exit(proc: subprocess.Popen) -> Iterator[None]:
    """Ctrl-C / SIGTERM on us stops the child too, so it doesn't keep writing into a folder being removed."""
    try:
        yield
    except BaseException:
        proc.kill()
        proc.wait()
        raise
