"""One server per --root: two servers on one root would race on refs.json and lose commits.

The lock is an flock on ROOT/.hub.lock, held for the server's life (the kernel drops it when the
process dies, so a killed server never blocks the next one); the file names the holder's pid and
host so the refusal can say which process to stop.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from hubtool.hub_server.errors import StorageError

LOCK_NAME = ".hub.lock"


class RootLock:
    """Held while a server serves ROOT; `release()` (or process exit) frees it."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise StorageError(409, "RootLocked", f"{root} is already served by {holder}; stop that server or pick another --root") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                os.close(self._fd)  # closing drops the flock
                self._fd = None
