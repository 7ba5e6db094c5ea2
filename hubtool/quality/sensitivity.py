"""How much the model's output reacts to noise on each layer: the diagonal Fisher of every linear
layer's outputs, measured in one forward+backward pass per calibration window.

Format-neutral measurement; the costs it weighs (e.g. GGUF per-tensor quantization error, in
hubtool/gguf/mix.py) belong to the format. Tensors are keyed by GGUF name, the names the mixes use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from hubtool.progress import track

NOISE_TOKENS = 64  # tokens per window whose input noise is pushed through each linear (evenly spaced)


def output_fisher(model_dir: Path, text: str, *, arch_name: str, context: int = 512, max_tokens: int = 2048,
                  trust_remote_code: bool = False, input_noise: dict[str, Callable[[Any], Any]] | None = None,
                  noise_tokens: int = NOISE_TOKENS) -> dict[str, np.ndarray]:
    """Diagonal Fisher of every linear layer's outputs (GGUF tensor name -> per-output-channel
    E[(dL/dy)^2] per token), plus 'token_embd.weight:input' for the embedding output, from CALIBRATION text.

    Labels are drawn from the model's own next-token distribution (the true Fisher, whose
    quadratic form is the KL of a small perturbation).

    INPUT_NOISE (label -> function of a (tokens, k) float tensor returning it perturbed, e.g. how a
    runtime rounds activations before a quantized matmul): also 'NAME:input_noise:LABEL', each linear's
    per-output-channel E_t[(dL/dy_ti)^2 (W (f(x_t) - x_t))_i^2] over NOISE_TOKENS evenly spaced tokens of
    each window: half its sum is the predicted KL of that perturbation. Weighted token by token, not
    Fisher-mean x noise-mean: the noise concentrates on a few tokens (the BOS attention sink's huge
    activations) where the loss hardly reacts. A label 'L@256' applies to rows divisible by 256.
    """
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

    noise_sums: dict[str, torch.Tensor] = {}
    noise_count = [0]

    def output_noise(name: str, module: Any, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(sampled token rows, {key: (W dx)^2 at those rows}) for each perturbation that applies."""
        with torch.no_grad():
            x = x.detach().reshape(-1, x.shape[-1]).float()
            idx = torch.linspace(0, x.shape[0] - 1, min(noise_tokens, x.shape[0])).round().long().unique()
            x = x[idx]
            w = module.weight.detach().float()
            out = {}
            for label, fn in (input_noise or {}).items():
                block = int(label.partition("@")[2] or 1)
                if x.shape[1] % block == 0:
                    dy = (fn(x) - x) @ w.T
                    out[f"{name}:input_noise:{label.partition('@')[0]}"] = dy * dy
            if name == run.linears[0][0]:
                noise_count[0] += len(idx)
            return idx, out

    def weigh_noise(idx: torch.Tensor, dy2: dict[str, torch.Tensor]):
        def on_grad(g: torch.Tensor) -> None:
            g2 = g.detach().reshape(-1, g.shape[-1]).float()[idx] ** 2
            for key, d in dy2.items():
                noise_sums[key] = noise_sums.get(key, 0) + (g2 * d).sum(0)
        return on_grad

    def on_output(name: str, module: Any):
        def hook(_module, inputs, out: torch.Tensor) -> None:  # None: the output itself is unchanged
            if out.requires_grad:
                out.register_hook(collect(name))
                if input_noise:
                    out.register_hook(weigh_noise(*output_noise(name, module, inputs[0])))
        return hook

    hooks = [module.register_forward_hook(on_output(name, module)) for name, module in run.linears]
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
    out = {k: (v / max(tokens[0], 1)).numpy().astype(np.float64) for k, v in sums.items()}
    out.update({k: (v / max(noise_count[0], 1)).numpy().astype(np.float64) for k, v in noise_sums.items()})
    return out
