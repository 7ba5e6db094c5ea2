"""Write a safetensors file one tensor at a time.

safetensors' own `save_file` needs every tensor of a file in memory at once; for a 10 GB shard
that defeats a streaming merge. The format is a JSON header (names, dtypes, shapes, offsets)
followed by raw little-endian bytes, so when shapes and dtypes are known up front we can write
the header first and then stream each tensor's bytes. Files are read back by safetensors itself.
"""

from __future__ import annotations

import json
import queue
import struct
import threading
from pathlib import Path
from typing import BinaryIO, Callable

import torch

DTYPE_NAMES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}


class ShardWriter:
    """Streams tensors into one safetensors file in the order they were planned.

    Bytes are written by a background thread (file writes release the GIL), so disk I/O of one
    tensor overlaps the compute of the next; at most one tensor waits in the queue.
    """

    def __init__(self, path: Path, plan: list[tuple[str, torch.dtype, list[int]]], metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self._order = [name for name, _, _ in plan]
        self._expect = {name: (dtype, list(shape)) for name, dtype, shape in plan}
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for name, dtype, shape in plan:
            nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        self.data_bytes = offset
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned, as safetensors does
        self._file: BinaryIO = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._next = 0
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name=f"write-{self.path.name}", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            data, on_written = item
            if self._error is None:
                try:
                    self._file.write(data)
                except BaseException as exc:  # surfaced on the next write()/close()
                    self._error = exc
            del data
            if on_written is not None:
                on_written()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error.with_traceback(None)

    def write(self, name: str, tensor: torch.Tensor, on_written: Callable[[], None] | None = None) -> None:
        """Queue `tensor` for writing; `on_written` runs on the writer thread once its bytes are out
        (the merge uses it to recycle output buffers)."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise RuntimeError(f"{self.path.name}: wrote {name!r} out of plan order (expected {expected!r})")
        dtype, shape = self._expect[name]
        if tensor.dtype != dtype or list(tensor.shape) != shape:
            raise RuntimeError(f"{self.path.name}: {name} is {tensor.dtype}{list(tensor.shape)}, planned {dtype}{shape}")
        self._raise_pending()
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._queue.put((memoryview(data), on_written))
        self._next += 1

    def _finish(self) -> None:
        self._queue.put(None)
        self._thread.join()
        try:
            self._file.close()  # flushes: on a full disk this is where the last bytes fail
        except OSError as exc:
            if self._error is None:
                self._error = exc

    def close(self) -> None:
        self._finish()
        self._raise_pending()
        if self._next != len(self._order):
            raise RuntimeError(f"{self.path.name}: closed after {self._next} of {len(self._order)} tensors")

    def abort(self) -> None:
        """Stop after a failure elsewhere; the caller's exception is the one reported, not a second one from here."""
        self._finish()


class BufferPool:
    """A few reusable output buffers shared between the compute loop and the writer thread.

    Fresh multi-hundred-MB allocations cost a page fault per 4 KB on first touch, which on small
    machines takes longer than the merge arithmetic; recycling a fixed set also caps memory at
    `count` tensors in flight.
    """

    def __init__(self, count: int = 3) -> None:
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(count):
            self._free.put(torch.empty(0, dtype=torch.uint8))

    def take(self, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
        """A buffer viewed as `dtype[shape]`; blocks until the writer has returned one."""
        raw = self._free.get()
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if raw.numel() < nbytes:
            raw = torch.empty(nbytes, dtype=torch.uint8)
        view = raw[:nbytes].view(dtype).view(shape)
        view._hubtool_raw = raw  # type: ignore[attr-defined]  # keep the full buffer for give()
        return view

    def give(self, view: torch.Tensor) -> None:
        self._free.put(view._hubtool_raw)  # type: ignore[attr-defined]
