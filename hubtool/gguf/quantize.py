"""Quantize a base GGUF to one llama.cpp type with the real C quantizer (llama_model_quantize)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from hubtool.errors import InputError, QuantizeError
from hubtool.gguf.types import llama_ftype, needs_imatrix
from hubtool.progress import log

_TENSOR_PROGRESS = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]")


def require_llama_cpp() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise InputError(
            "llama-cpp-python is not installed; run `CMAKE_ARGS=-DGGML_NATIVE=OFF pip install 'hubtool[gguf]'`"
        ) from None


@contextlib.contextmanager
def _quantizer_log(gguf_type: str) -> Iterator[list[str]]:
    """Route llama.cpp's log while quantizing: per-tensor lines become a progress line every few
    seconds, error lines are collected for the exception message; the rest is dropped."""
    import llama_cpp

    errors: list[str] = []
    last = [0.0]

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        text = text or b""
        if level >= 3:  # ggml's WARN (3) and ERROR (4)
            errors.append(text.decode("utf-8", "replace").strip())
        m = _TENSOR_PROGRESS.search(text)
        if m and time.monotonic() - last[0] > 5:
            last[0] = time.monotonic()
            log(f"quantize {gguf_type}: tensor {int(m.group(1))}/{int(m.group(2))}")

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield errors
    finally:
        from hubtool.gguf.llama_log import install

        install()


def _imatrix_array(imatrix: dict[str, np.ndarray]):  # -> ctypes array, kept alive by the caller
    """llama.cpp's `llama_model_imatrix_data[]`: (tensor name, float*, size) rows ending in a NULL name."""
    import llama_cpp

    rows = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    keep = []
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        arr = np.ascontiguousarray(values, dtype=np.float32)
        keep.append(arr)
        rows[i].name = name.encode()
        rows[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        rows[i].size = arr.size
    rows[len(imatrix)].name = None
    return rows, keep


def quantize_gguf(src: Path, dst: Path, gguf_type: str, *, imatrix: dict[str, np.ndarray] | None = None, nthread: int | None = None) -> Path:
    """Write DST as GGUF_TYPE quantized from SRC (an F16/BF16 GGUF, first shard if split)."""
    require_llama_cpp()
    import llama_cpp

    if needs_imatrix(gguf_type) and not imatrix:
        raise InputError(
            f"{gguf_type}: this type needs an importance matrix; pass --imatrix FILE or --calibration TEXT (or pick a K-quant such as Q4_K_M)"
        )
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_ftype(gguf_type)
    params.nthread = nthread or os.cpu_count() or 1
    keep = None
    if imatrix:
        rows, keep = _imatrix_array(imatrix)
        params.imatrix = ctypes.cast(rows, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    with _quantizer_log(gguf_type) as errors:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    del keep
    if rc != 0 or not dst.is_file():
        why = " ".join(e for e in errors if e)[-300:] or f"code {rc}"
        raise QuantizeError(f"{src}: llama.cpp could not quantize to {gguf_type} ({why})")
    return dst
