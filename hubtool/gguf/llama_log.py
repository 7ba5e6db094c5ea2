"""llama.cpp's log, routed by its real levels: errors always reach stderr, the rest only with --verbose.

llama-cpp-python's own callback maps ggml's log levels by an older enum (INFO=1, WARN=2, ERROR=3);
the ggml it loads numbers them DEBUG=1, INFO=2, WARN=3, ERROR=4, so its filter lets every warning
through (`n_ctx_seq (512) > n_ctx_train (0)` for a vocab-only load, `using full-size SWA cache` for
Gemma) and hides real errors. hubtool installs this callback wherever it loads llama.cpp.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

# ggml.h `enum ggml_log_level` of the ggml llama-cpp-python ships
LEVEL_ERROR = 4
LEVEL_CONT = 5

_state: dict[str, Any] = {"callback": None, "last": 0}


def _emit(level: int, text: bytes) -> None:
    from hubtool.progress import library_output_discarded

    if level != LEVEL_CONT:
        _state["last"] = level
    if _state["last"] == LEVEL_ERROR or not library_output_discarded():
        print((text or b"").decode("utf-8", "replace"), end="", file=sys.stderr, flush=True)


def callback() -> Any:
    """The ctypes callback (kept alive here: llama.cpp holds only its address)."""
    import llama_cpp

    if _state["callback"] is None:
        @llama_cpp.llama_log_callback
        def _cb(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            _emit(int(level), text)

        _state["callback"] = _cb
    return _state["callback"]


def install() -> None:
    """Route llama.cpp's log through `_emit` (after llama_cpp's import installed its own)."""
    import llama_cpp

    llama_cpp.llama_log_set(callback(), ctypes.c_void_p(0))
