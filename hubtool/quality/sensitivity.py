"""How much the model's output reacts to noise on each layer: the diagonal Fisher of every linear
layer's outputs, measured in one forward+backward pass per calibration window.

Format-neutral measurement; the costs it weighs (e.g. GGUF per-tensor quantization error, in
hubtool/gguf/mix.py) belong to the format. Tensors are keyed by GGUF name, the names the mixes use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hubtool.progress import track


def output_fisher(model_dir: Path, text: str, *, arch_name: str, context: int = 512, max_tokens: int = 2048,
                  trust_remote_code: bool = False) -> dict[str, np.ndarray]:
    """Diagonal Fisher of every linear layer's outputs (GGUF tensor name -> per-output-channel
    E[(dL/dy)^2] per token), plus 'token_embd.weight:input' for the embedding output, from CALIBRATION text.

    Labels are drawn from the model's own next-token distribution (the true Fisher, whose
    quadratic form is the KL of a small perturbation)."""
    import torch

    from hubtool.gguf.calibration_pass import open_calibration_pass

    run = open_calibration_pass(Path(model_dir), text, arch_name=arch_name, context=context, max_tokens=max_tokens,
                                what="sensitivity pass", trust_remote_code=trust_remote_code)
    model = run.model
    model.requires_grad_(False)
    sums: dict[str, torch.Tensor] = {}
    tokens = [0]

    def collect(name: str, scale: float = 1.0):
        def on_grad(g: torch.Tensor) -> None:
            g = g.detach().reshape(-1, g.shape[-1]).float()
            sums[name] = sums.get(name, 0) + (g * g).sum(0) * scale
        return on_grad

    def on_output(name: str):
        def hook(_module, _inputs, out: torch.Tensor) -> None:  # None: the output itself is unchanged
            if out.requires_grad:
                out.register_hook(collect(name))
        return hook

    hooks = [module.register_forward_hook(on_output(name)) for name, module in run.linears]
    emb = model.get_input_embeddings()
    emb_scale = float(getattr(emb, "embed_scale", 1.0) or 1.0)  # Gemma scales the looked-up rows

    def emb_hook(_m, _i, out):
        out = out.requires_grad_(True) if not out.requires_grad else out
        out.register_hook(collect("token_embd.weight:input", emb_scale**2))
        return out

    hooks.append(emb.register_forward_hook(emb_hook))
    gen = torch.Generator().manual_seed(0)
    try:
        for window in track(run.windows, description="sensitivity (Fisher)"):
            logits = model(torch.tensor([window])).logits[0].float()
            with torch.no_grad():
                labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
            torch.nn.functional.cross_entropy(logits, labels, reduction="sum").backward()
            tokens[0] += len(window)
    finally:
        for h in hooks:
            h.remove()
    return {k: (v / max(tokens[0], 1)).numpy().astype(np.float64) for k, v in sums.items()}
