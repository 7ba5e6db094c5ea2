"""Quantize a base GGUF to one llama.cpp type with the real C quantizer (llama_model_quantize)."""

from __future__ import annotations

import contextlib
import ctypes
import re
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from hubtool.errors import InputError, QuantizeError
from hubtool.gguf.types import llama_ftype, needs_imatrix
from hubtool.machine import threads
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
def _quantizer_log(gguf_type: str, transcript: list[bytes] | None = None) -> Iterator[list[str]]:
    """Route llama.cpp's log while quantizing: per-tensor lines become a progress line every few
    seconds, error lines are collected for the exception message; the rest is dropped (or kept
    whole in TRANSCRIPT, which a dry run parses for the types it would write)."""
    import llama_cpp

    errors: list[str] = []
    last = [0.0]

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        text = text or b""
        if transcript is not None:
            transcript.append(text)
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


def _overrides_array(tensor_types: list[tuple[str, str]]):  # -> ctypes array, kept alive by the caller
    """llama.cpp's `llama_model_tensor_override[]` (what llama-quantize builds from --tensor-type):
    (regex, ggml type) rows ending in a NULL pattern; the first matching regex wins."""
    import gguf
    import llama_cpp

    rows = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
    for i, (pattern, type_name) in enumerate(tensor_types):
        try:
            qtype = gguf.GGMLQuantizationType[type_name.upper()]
        except KeyError:
            raise InputError(f"tensor type override {pattern}={type_name}: unknown ggml type {type_name!r}") from None
        rows[i].pattern = pattern.encode()
        rows[i].type = int(qtype)
    rows[len(tensor_types)].pattern = None
    return rows


def _params(gguf_type: str, imatrix: dict[str, np.ndarray] | None, nthread: int | None, tensor_types: list[tuple[str, str]] | None):
    """(llama_model_quantize_params, the ctypes buffers it points into: keep them alive until the call returns)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_ftype(gguf_type)
    params.nthread = nthread or threads()
    keep: list = []
    if imatrix:
        rows, arrays = _imatrix_array(imatrix)
        keep += [rows, arrays]
        params.imatrix = ctypes.cast(rows, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    if tensor_types:
        overrides = _overrides_array(tensor_types)
        keep.append(overrides)
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    return params, keep


def quantize_gguf(src: Path, dst: Path, gguf_type: str, *, imatrix: dict[str, np.ndarray] | None = None, nthread: int | None = None,
                  tensor_types: list[tuple[str, str]] | None = None) -> Path:
    """Write DST as GGUF_TYPE quantized from SRC (an F16/BF16 GGUF, first shard if split).

    TENSOR_TYPES: (regex, ggml type) overrides, llama-quantize's `--tensor-type` (a tuned mix's recipe).
    """
    require_llama_cpp()
    import llama_cpp

    if needs_imatrix(gguf_type) and not imatrix:
        raise InputError(
            f"{gguf_type}: this type needs an importance matrix; pass --imatrix FILE or --calibration TEXT (or pick a K-quant such as Q4_K_M)"
        )
    params, keep = _params(gguf_type, imatrix, nthread, tensor_types)
    with _quantizer_log(gguf_type) as errors:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    del keep
    if rc != 0 or not dst.is_file():
        why = " ".join(e for e in errors if e)[-300:] or f"code {rc}"
        raise QuantizeError(f"{src}: llama.cpp could not quantize to {gguf_type} ({why})")
    return dst


# One main-loop line of llama.cpp's quantizer in dry-run mode: name, source type, then the new type when it changes.
_PLAN_LINE = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+-\s+\[[^\]]*\],\s+type =\s*(\w+),\s+size =\s*[\d.]+ MiB(?: ->\s*[\d.]+ MiB \((\w+)\))?")


def planned_tensor_types(src: Path, gguf_type: str, *, imatrix: dict[str, np.ndarray] | None = None,
                         tensor_types: list[tuple[str, str]] | None = None) -> dict[str, str]:
    """Tensor name -> the ggml type (gguf-py's name, e.g. 'Q4_K') llama.cpp would write for GGUF_TYPE,
    from a `dry_run` of the real quantizer: its own mix rules and shape fallbacks, nothing written."""
    require_llama_cpp()
    import llama_cpp

    params, keep = _params(gguf_type, imatrix, 1, tensor_types)
    params.dry_run = True
    transcript: list[bytes] = []
    with _quantizer_log(gguf_type, transcript) as errors:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), b"", ctypes.byref(params))
    del keep
    text = b"".join(transcript).decode("utf-8", "replace")
    plan = {m.group(1): (m.group(3) or m.group(2)).upper() for m in _PLAN_LINE.finditer(text)}
    if rc != 0 or not plan:
        why = " ".join(e for e in errors if e)[-300:] or f"code {rc}"
        raise QuantizeError(f"{src}: llama.cpp's dry run for {gguf_type} failed ({why})")
    return plan
