"""Request-body readers: de-chunking, and a total time budget so a trickling client cannot hold a thread."""

from __future__ import annotations

import time
from typing import Any, BinaryIO

from hubtool.hub_server.errors import StorageError


class ChunkedReader:
    """File-like view of a `Transfer-Encoding: chunked` request body."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.left = 0
        self.done = False

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while not self.done and (n < 0 or len(out) < n):
            if self.left == 0:
                size_line = self.raw.readline(1024).split(b";", 1)[0].strip()
                if not size_line or len(size_line) > 15 or not all(c in b"0123456789abcdefABCDEF" for c in size_line):
                    raise StorageError(400, "BadRequest", f"bad chunk size {size_line[:20]!r}")
                self.left = int(size_line, 16)
                if self.left == 0:
                    for _ in range(100):  # trailers, then the blank line
                        if not self.raw.readline(8192).strip():
                            break
                    self.done = True
                    break
            take = self.left if n < 0 else min(self.left, n - len(out))
            data = self.raw.read(take)
            if not data:
                raise StorageError(400, "BadRequest", "chunked body ended early")
            out += data
            self.left -= len(data)
            if self.left == 0:
                self.raw.readline(8)  # CRLF after each chunk
        return bytes(out)


class TimedReader:
    """The request body with a *total* time budget: `stall` seconds plus one second per `min_rate`
    bytes received. A client sending one byte every few seconds never trips a per-read timeout,
    but runs out of this budget, and its thread is freed (TimeoutError)."""

    def __init__(self, raw: Any, sock: Any, stall: float, min_rate: float) -> None:
        self.raw, self.sock, self.stall, self.min_rate = raw, sock, stall, min_rate
        self.start = time.monotonic()
        self.got = 0

    def _budget(self) -> None:
        left = self.start + self.stall + self.got / self.min_rate - time.monotonic()
        if left <= 0:
            raise TimeoutError("request body arrived too slowly")
        self.sock.settimeout(min(left, self.stall))

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            self._budget()
            chunk = self.raw.read1(65536 if n < 0 else min(65536, n - len(out)))
            if not chunk:
                break
            out += chunk
            self.got += len(chunk)
        return bytes(out)

    def readline(self, limit: int = 65536) -> bytes:
        out = bytearray()
        while len(out) < limit:
            self._budget()
            buf = self.raw.peek(1)[: limit - len(out)]
            if not buf:
                break
            end = buf.find(b"\n")
            take = end + 1 if end >= 0 else len(buf)
            out += self.raw.read(take)
            self.got += take
            if end >= 0:
                break
        return bytes(out)
