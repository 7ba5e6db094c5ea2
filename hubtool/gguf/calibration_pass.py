"""The start both per-tensor statistics over calibration text share (the importance matrix in
gguf/imatrix.py, the output Fisher in quality/sensitivity.py): the fp16 model loaded in fp32 (its
own code too, with trust_remote_code), its tokenizer, the text cut into windows, and every
`nn.Linear` named as its GGUF weight tensor (gguf-py's tensor-name map for the llama.cpp
architecture), so both statistics key the same tensors the quantizer sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtool.errors import InputError


def gguf_arch(arch_name: str) -> Any:
    """gguf-py's MODEL_ARCH for a llama.cpp architecture name ('llama', 'gemma3', ...)."""
    import gguf

    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch_name not in by_name:
        raise InputError(f"{arch_name}: unknown llama.cpp architecture for the calibration pass")
    return by_name[arch_name]


@dataclass(frozen=True)
class CalibrationPass:
    """A loaded model ready for one statistic's pass: model (fp32, eval, CPU), tokenizer, windows, linears."""

    model: Any
    tokenizer: Any
    windows: tuple[tuple[int, ...], ...]  # BOS-led token windows (hubtool.text_windows' rule)
    linears: tuple[tuple[str, Any], ...]  # (GGUF tensor name, the nn.Linear module) for every mapped linear


def open_calibration_pass(model_dir: Path, text: str, *, arch_name: str, context: int, max_tokens: int, what: str,
                          trust_remote_code: bool = False) -> CalibrationPass:
    """Load MODEL_DIR for a WHAT pass ('importance matrix', 'sensitivity pass') over the first
    MAX_TOKENS of TEXT in CONTEXT-token windows (fewer when the model's config allows fewer positions).
    Refuses a text under 16 tokens."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtool.text_windows import bos_id, encode, windows

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    ids = encode(tok, text, max_tokens=max_tokens)
    if len(ids) < 16:
        raise InputError(f"calibration text: {len(ids)} tokens is too short for the {what}; give at least a few paragraphs")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code).eval()
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None) or 0
    longest = [getattr(model.config, k, None) for k in ("max_position_embeddings", "seq_length", "n_positions")]
    context = min([context] + [int(n) for n in longest if isinstance(n, int) and n > 1])  # a window the model accepts
    tmap = gguf.get_tensor_name_map(gguf_arch(arch_name), int(n_layers))
    linears = []
    for mod_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            gguf_name = tmap.get_name(mod_name + ".weight", try_suffixes=(".weight",))
            if gguf_name:
                linears.append((gguf_name, module))
    if not linears:
        raise InputError(f"{model_dir}: no linear layer maps to a llama.cpp {arch_name} tensor; the {what} would be empty")
    return CalibrationPass(model, tok, tuple(tuple(w) for w in windows(ids, context, bos_id(tok))), tuple(linears))
