"""A GGUF file's size before it exists: the llama.cpp type each tensor gets, from the safetensors headers.

A nominal bits-per-weight times the parameter count misses what decides real sizes: llama.cpp keeps
the output matrix (and a tied embedding, which doubles as it) at Q6_K or better, gives half the
layers' attn_v/ffn_down more bits in *_M mixes, keeps 1-D tensors in F32, and falls back to a legacy
block type when a row length is not a multiple of the k-quant block (256): Gemma-3 270M's 640-wide
rows make its tied 262k-token embedding Q8_0, so its Q4_K_M file is 261 MB, not 163. The rules follow
llama.cpp's `llama_tensor_get_type` for the common types (simplified: the plan's estimates, within ~15 %).
"""

from __future__ import annotations

import re
from typing import Iterable

# bytes per block / elements per block of each ggml type (ggml's type traits)
BLOCK = {"F32": (4, 1), "F16": (2, 1), "BF16": (2, 1), "Q8_0": (34, 32), "Q4_0": (18, 32), "Q4_1": (20, 32),
         "Q5_0": (22, 32), "Q5_1": (24, 32), "Q2_K": (84, 256), "Q3_K": (110, 256), "Q4_K": (144, 256),
         "Q5_K": (176, 256), "Q6_K": (210, 256), "IQ4_NL": (18, 32), "IQ4_XS": (136, 256)}
# file type -> (default tensor type, attn_v/ffn_down type in the layers that get more bits, output type)
MIXES = {
    "Q8_0": ("Q8_0", "Q8_0", "Q8_0"), "F16": ("F16", "F16", "F16"), "BF16": ("BF16", "BF16", "BF16"),
    "Q4_0": ("Q4_0", "Q4_0", "Q6_K"), "Q4_1": ("Q4_1", "Q4_1", "Q6_K"), "Q5_0": ("Q5_0", "Q5_0", "Q6_K"),
    "Q5_1": ("Q5_1", "Q5_1", "Q6_K"), "Q6_K": ("Q6_K", "Q6_K", "Q6_K"),
    "Q5_K_S": ("Q5_K", "Q5_K", "Q6_K"), "Q5_K_M": ("Q5_K", "Q6_K", "Q6_K"),
    "Q4_K_S": ("Q4_K", "Q5_K", "Q6_K"), "Q4_K_M": ("Q4_K", "Q6_K", "Q6_K"),
    "Q3_K_S": ("Q3_K", "Q3_K", "Q6_K"), "Q3_K_M": ("Q3_K", "Q4_K", "Q6_K"), "Q3_K_L": ("Q3_K", "Q5_K", "Q6_K"),
    "Q2_K": ("Q2_K", "Q3_K", "Q6_K"), "IQ4_XS": ("IQ4_XS", "IQ4_XS", "Q6_K"), "IQ4_NL": ("IQ4_NL", "IQ4_NL", "Q6_K"),
}
# a k-quant whose rows are not a multiple of 256 falls back to this block type (llama.cpp's fallback)
FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL",
            "Q4_0": "F16", "Q4_1": "F16", "Q5_0": "F16", "Q5_1": "F16", "Q8_0": "F16", "IQ4_NL": "F16"}
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def tensor_type(name: str, shape: tuple[int, ...], gguf_type: str, *, n_layers: int, tied: bool) -> str:
    """The ggml type llama.cpp gives the HF tensor NAME of SHAPE in a GGUF of GGUF_TYPE."""
    default, more, output = MIXES.get(gguf_type, ("Q8_0", "Q8_0", "Q8_0"))
    if len(shape) < 2:
        return "F32"
    if name.endswith("lm_head.weight") or (tied and name.endswith("embed_tokens.weight")):
        kind = output
    else:
        kind = default
        m = _LAYER.search(name)
        if m and (name.endswith("v_proj.weight") or name.endswith("down_proj.weight")) and more_bits(int(m.group(1)), n_layers):
            kind = more
    row = int(shape[-1])
    while row % BLOCK[kind][1]:
        kind = FALLBACK.get(kind, "F16")
    return kind


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def tensor_bytes(n_elements: int, kind: str) -> int:
    size, per = BLOCK[kind]
    return n_elements * size // per


def estimate_gguf_bytes(tensors: Iterable[tuple[str, tuple[int, ...]]], gguf_type: str, *, n_layers: int, tied: bool,
                        vocab_size: int = 0, bpe: bool = False) -> int:
    """Estimated file size: every tensor at the type llama.cpp gives it, plus the tokenizer in the metadata."""
    tensors = list(tensors)
    if gguf_type not in MIXES:  # a type without rules here: its nominal bits per weight
        from hubtool.gguf.facts import NOMINAL_BPW

        params = sum(_count(shape) for _, shape in tensors)
        return int(params * NOMINAL_BPW.get(gguf_type, 8.0) / 8) + vocab_size * (24 + (20 if bpe else 0))
    total = 0
    for name, shape in tensors:
        n = 1
        for d in shape:
            n *= int(d)
        total += tensor_bytes(n, tensor_type(name, tuple(shape), gguf_type, n_layers=n_layers, tied=tied))
    # tokens (length-prefixed strings), scores and types per vocab entry, BPE merges when there are any
    return total + vocab_size * (24 + (20 if bpe else 0))
