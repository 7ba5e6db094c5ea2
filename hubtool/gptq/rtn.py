"""Plain round-to-nearest (RTN) at GPTQ's bits/group on the same symmetric grid: the baseline
that shows what GPTQ's error correction buys. Weights are fake-quantized in place (quantize then
dequantize), which gives exactly the numbers a packed RTN checkpoint would compute with.
Streaming evaluation applies it to one decoder block at a time, as the block is loaded.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def rtn_dequantized(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Symmetric RTN of a [out, in] weight per group of `group_size` input columns (-1: per row).

    Grid as GPTQ's sym mode: scale = 2*max|w| / (2^bits - 1), zero = 2^(bits-1), q in [0, 2^bits - 1].
    """
    out_f, in_f = weight.shape
    g = in_f if group_size == -1 else group_size
    if in_f % g:
        raise ValueError(f"input width {in_f} is not a multiple of group size {g}")
    maxq = 2**bits - 1
    w = weight.float().reshape(out_f, in_f // g, g)
    xmax = w.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(xmax > 0, 2 * xmax / maxq, torch.ones_like(xmax))
    zero = (maxq + 1) / 2
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return ((q - zero) * scale).reshape(out_f, in_f).to(weight.dtype)


def apply_rtn(model: Any, bits: int, group_size: int) -> list[str]:
    """Fake-quantize every Linear in the decoder blocks (what GPTQ quantizes: not embeddings or lm_head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    done = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                module.weight.copy_(rtn_dequantized(module.weight, bits, group_size))
                done.append(name)
    return done


def rtn_block_hook(bits: int, group_size: int) -> Callable[[str, torch.nn.Module], None]:
    """A StreamingModel block hook that fake-quantizes each decoder block's Linears as it is loaded."""

    def hook(name: str, block: torch.nn.Module) -> None:
        apply_rtn(block, bits, group_size)

    return hook
