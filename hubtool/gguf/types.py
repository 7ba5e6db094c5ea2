"""The GGUF output types hubtool offers: llama.cpp's quantization list, parsed from `--types`."""

from __future__ import annotations

import math

from hubtool.errors import InputError

# Written by the converter itself (no quantizer pass needed when it is the base type).
FLOAT_TYPES = ("F16", "BF16")

# llama.cpp's quantize list (llama_ftype LLAMA_FTYPE_MOSTLY_<TYPE>), best to smallest.
QUANT_TYPES = (
    "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
    "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "Q2_K_S",
    "IQ4_XS", "IQ4_NL", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS",
    "IQ1_M", "IQ1_S",
)
ALL_TYPES = FLOAT_TYPES + QUANT_TYPES


def needs_imatrix(gguf_type: str) -> bool:
    """IQ types (and Q2_K_S) are only usable with an importance matrix; llama.cpp's own quantize tool refuses them too."""
    return gguf_type.startswith("IQ") or gguf_type == "Q2_K_S"


def parse_types(spec: str | list[str], *, source: str = "--types") -> list[str]:
    """'f16,q8_0,q4_k_m' -> ['F16', 'Q8_0', 'Q4_K_M'], rejecting unknown names with the full list."""
    if not isinstance(spec, (str, list, tuple)) or not all(isinstance(i, str) for i in ([spec] if isinstance(spec, str) else spec)):
        raise InputError(f"{source}: {spec!r} must be a list of GGUF type names, e.g. [q4_k_m, q8_0]")
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        t = item.strip().upper()
        if not t:
            continue
        if t not in ALL_TYPES:
            raise InputError(f"{source}: unknown GGUF type {item.strip()!r}; choose from {', '.join(ALL_TYPES)}")
        if t not in out:
            out.append(t)
    if not out:
        raise InputError(f"{source}: no GGUF types given; e.g. q4_k_m,q8_0")
    return out


def llama_ftype(gguf_type: str) -> int:
    """The llama_ftype value the C quantizer takes for this type."""
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type}", None)
    if value is None:
        raise InputError(f"{gguf_type}: not supported by the installed llama-cpp-python {llama_cpp.__version__}; upgrade it")
    return int(value)


def parse_size(spec: str | int, *, source: str = "--split-max-size") -> int:
    """'48G' / '500M' / '100K' / bytes -> bytes (decimal units, like llama.cpp's --split-max-size). '0' disables."""
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise InputError(f"{source}: {spec!r} is not a size; use e.g. 48G, 500M or 0 to disable")
    s = str(spec).strip().upper().removesuffix("B")
    mult = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}.get(s[-1:], 1)
    number = s[:-1] if s[-1:] in "KMGT" and s[-1:] else s
    try:
        value = float(number)
    except ValueError:
        raise InputError(f"{source}: {spec!r} is not a size; use e.g. 48G, 500M or 0 to disable") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{source}: {spec!r} must be a finite size >= 0, e.g. 48G, or 0 to disable")
    if 0 < value * mult < 1000:
        raise InputError(f"{source}: {spec!r} is under 1 kB, smaller than any GGUF header; use e.g. 48G, or 0 to disable")
    return int(value * mult)
