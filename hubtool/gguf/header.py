"""A GGUF file's header — every metadata key and the tensor table — read by ggml's own C parser.

gguf-py's `GGUFReader` builds a numpy view for every element of every array field: ~3 s for the
49k-token vocabulary and merges of SmolLM2, per file, longer than llama.cpp takes to evaluate a
window. llama.cpp's `gguf_init_from_file` (in the libggml-base that llama-cpp-python ships, the
parser llama.cpp itself loads the file with) reads the same header in milliseconds; this module
binds the few functions of `gguf.h` it needs with ctypes and returns the values gguf-py's
`ReaderField.contents()` gives (Python ints, floats of the stored float32, bools, str, lists).
String arrays (the vocabulary, merges) are read only when asked for: nothing in verify needs them.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from hubtool.errors import InputError

GGML_MAX_DIMS = 4  # ggml.h: gguf_get_tensor_ne returns this many

# gguf.h `enum gguf_type` -> the getter of one scalar value and its ctypes return type
_STRING, _ARRAY, _BOOL = 8, 9, 7
_SCALARS: dict[int, tuple[str, Any]] = {
    0: ("u8", ctypes.c_uint8), 1: ("i8", ctypes.c_int8), 2: ("u16", ctypes.c_uint16), 3: ("i16", ctypes.c_int16),
    4: ("u32", ctypes.c_uint32), 5: ("i32", ctypes.c_int32), 6: ("f32", ctypes.c_float), 7: ("bool", ctypes.c_bool),
    10: ("u64", ctypes.c_uint64), 11: ("i64", ctypes.c_int64), 12: ("f64", ctypes.c_double),
}


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]  # gguf.h `struct gguf_init_params`


@dataclass(frozen=True)
class GgufTensorInfo:
    name: str
    ggml_type: int
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GgufHeader:
    path: Path
    metadata: Mapping[str, Any]  # key -> value; string arrays only when read with strings=True
    tensors: tuple[GgufTensorInfo, ...]

    @property
    def tensor_names(self) -> list[str]:
        return [t.name for t in self.tensors]


@functools.lru_cache(maxsize=1)
def _lib() -> Any:
    """libggml-base from llama-cpp-python's own lib folder, with the gguf.h signatures used here."""
    import llama_cpp
    from llama_cpp._ctypes_extensions import load_shared_library

    from hubtool.gguf.llama_log import install

    install()  # the parser's complaints go through hubtool's routing of ggml's log (errors always shown)
    lib = load_shared_library("ggml-base", Path(llama_cpp.__file__).parent / "lib")
    ctx, i64, c_str = ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p
    sigs: dict[str, tuple[list[Any], Any]] = {
        "gguf_init_from_file": ([c_str, _InitParams], ctx),
        "gguf_free": ([ctx], None),
        "gguf_get_n_kv": ([ctx], i64),
        "gguf_get_key": ([ctx, i64], c_str),
        "gguf_get_kv_type": ([ctx, i64], ctypes.c_int),
        "gguf_get_arr_type": ([ctx, i64], ctypes.c_int),
        "gguf_get_arr_n": ([ctx, i64], ctypes.c_size_t),
        "gguf_get_arr_data": ([ctx, i64], ctypes.c_void_p),
        "gguf_get_arr_str": ([ctx, i64, ctypes.c_size_t], c_str),
        "gguf_get_val_str": ([ctx, i64], c_str),
        "gguf_get_n_tensors": ([ctx], i64),
        "gguf_get_tensor_name": ([ctx, i64], c_str),
        "gguf_get_tensor_ne": ([ctx, i64], ctypes.POINTER(ctypes.c_int64)),
        "gguf_get_tensor_type": ([ctx, i64], ctypes.c_int),
        "gguf_get_tensor_size": ([ctx, i64], ctypes.c_size_t),
    }
    sigs.update({f"gguf_get_val_{name}": ([ctx, i64], ctype) for name, ctype in _SCALARS.values()})
    for fn, (args, res) in sigs.items():
        getattr(lib, fn).argtypes = args
        getattr(lib, fn).restype = res
    return lib


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8")


def _value(lib: Any, ctx: int, i: int, strings: bool) -> tuple[bool, Any]:
    """(present, value) of key I: arrays of strings are skipped unless STRINGS (the key's own verdict)."""
    kind = lib.gguf_get_kv_type(ctx, i)
    if kind == _STRING:
        return True, _text(lib.gguf_get_val_str(ctx, i))
    if kind in _SCALARS:
        value = getattr(lib, f"gguf_get_val_{_SCALARS[kind][0]}")(ctx, i)
        return True, bool(value) if kind == _BOOL else value
    if kind != _ARRAY:
        return False, None
    item, n = lib.gguf_get_arr_type(ctx, i), lib.gguf_get_arr_n(ctx, i)
    if item == _STRING:
        return (True, [_text(lib.gguf_get_arr_str(ctx, i, j)) for j in range(n)]) if strings else (False, None)
    if item not in _SCALARS or n == 0:
        return item in _SCALARS, []
    ctype = ctypes.c_int8 if item == _BOOL else _SCALARS[item][1]  # gguf.h: bool arrays are stored as int8
    values = list((ctype * n).from_address(lib.gguf_get_arr_data(ctx, i)))
    return True, [bool(v) for v in values] if item == _BOOL else values


def read_header(path: Path, *, strings: bool | tuple[str, ...] = False) -> GgufHeader:
    """Metadata and tensor table of one GGUF file (no tensor data read); a one-line InputError for anything llama.cpp can't parse.

    STRINGS: read arrays of strings too (True), or those whose key starts with one of these prefixes
    (("general.",): the tags and languages, not the 150k tokenizer strings)."""
    lib = _lib()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found; pass an existing .gguf file")
    ctx = lib.gguf_init_from_file(str(path).encode(), _InitParams(True, None))
    if not ctx:
        raise InputError(f"{path}: not a valid GGUF file (llama.cpp's gguf parser refused it); re-export it with `hubtool quantize gguf`")
    try:
        meta: dict[str, Any] = {}
        for i in range(lib.gguf_get_n_kv(ctx)):
            key = _text(lib.gguf_get_key(ctx, i))
            present, value = _value(lib, ctx, i, strings if isinstance(strings, bool) else key.startswith(strings))
            if present:
                meta[key] = value
        tensors = []
        for i in range(lib.gguf_get_n_tensors(ctx)):
            ne = lib.gguf_get_tensor_ne(ctx, i)
            n_el = 1
            for d in range(GGML_MAX_DIMS):
                n_el *= int(ne[d])
            tensors.append(GgufTensorInfo(_text(lib.gguf_get_tensor_name(ctx, i)), int(lib.gguf_get_tensor_type(ctx, i)),
                                          n_el, int(lib.gguf_get_tensor_size(ctx, i))))
        return GgufHeader(path, meta, tuple(tensors))
    finally:
        lib.gguf_free(ctx)
