"""How much the model's output reacts to noise on each layer: the diagonal Fisher of every linear
layer's outputs, measured in one forward+backward pass over the calibration windows.

The model streams block by block (hubtool.gguf.calibration_pass): the forward keeps only each block's
input hidden states (tokens x hidden per block), the loss gradient is taken at the head (computed in
vocabulary chunks), and the backward re-materialises the blocks in reverse, one at a time, recomputing
each from its saved input (hubtool.quality.stream.StreamingModel.recompute_in_backward).

Format-neutral measurement; the costs it weighs (e.g. GGUF per-tensor quantization error, in
hubtool/gguf/mix.py) belong to the format. Tensors are keyed by GGUF name, the names the mixes use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from hubtool.gguf.calibration_pass import CalibrationPass, run_calibration

NOISE_TOKENS = 64  # tokens per window whose input noise is pushed through each linear (evenly spaced)


def output_fisher(model_dir: Path, text: str, *, arch_name: str, context: int = 512, max_tokens: int = 2048,
                  trust_remote_code: bool = False, device: str = "cpu", batch_tokens: int = 2048, chunk_rows: int = 8192,
                  in_memory: bool = False, input_noise: dict[str, Callable[[Any], Any]] | None = None,
                  noise_tokens: int = NOISE_TOKENS) -> dict[str, np.ndarray]:
    """Diagonal Fisher of every linear layer's outputs (GGUF tensor name -> per-output-channel
    E[(dL/dy)^2] per token), plus 'token_embd.weight:input' for the embedding output, from CALIBRATION text.

    Labels are drawn from the model's own next-token distribution (the true Fisher, whose
    quadratic form is the KL of a small perturbation). Streamed on DEVICE, BATCH_TOKENS tokens of
    equal-length windows per pass over the blocks, the head in CHUNK_ROWS-row vocabulary chunks;
    IN_MEMORY loads the model whole (the fallback for code that can't be streamed).

    INPUT_NOISE (label -> function of a (tokens, k) float tensor returning it perturbed, e.g. how a
    runtime rounds activations before a quantized matmul): also 'NAME:input_noise:LABEL', each linear's
    per-output-channel E_t[(dL/dy_ti)^2 (W (f(x_t) - x_t))_i^2] over NOISE_TOKENS evenly spaced tokens of
    each window: half its sum is the predicted KL of that perturbation. Weighted token by token, not
    Fisher-mean x noise-mean: the noise concentrates on a few tokens (the BOS attention sink's huge
    activations) where the loss hardly reacts. A label 'L@256' applies to rows divisible by 256.
    """
    return run_calibration(lambda run: _fisher(run, batch_tokens, chunk_rows, input_noise, noise_tokens), Path(model_dir), text,
                           in_memory=in_memory,
                           arch_name=arch_name, context=context, max_tokens=max_tokens, what="sensitivity pass",
                           trust_remote_code=trust_remote_code, device=device)


def _fisher(run: CalibrationPass, batch_tokens: int, chunk_rows: int, input_noise: dict[str, Callable[[Any], Any]] | None,
            noise_tokens: int) -> dict[str, np.ndarray]:
    import torch

    model = run.model
    model.requires_grad_(False)
    sums: dict[str, torch.Tensor] = {}
    tokens = 0

    def collect(name: str, scale: float = 1.0):
        def on_grad(g: torch.Tensor) -> None:
            g = g.detach().reshape(-1, g.shape[-1]).float()
            sums[name] = sums.get(name, 0) + (g * g).sum(0) * scale
        return on_grad

    noise_sums: dict[str, torch.Tensor] = {}
    noise_count = [0]

    def output_noise(name: str, module: Any, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(sampled token rows, {key: (W dx)^2 at those rows}) for each perturbation that applies:
        NOISE_TOKENS evenly spaced rows per window of the batch."""
        with torch.no_grad():
            idx = _noise_rows(x, noise_tokens)
            x = x.detach().reshape(-1, x.shape[-1]).float()[idx]
            w = module.weight.detach().float()
            out = {key: dy * dy for key, dy in _input_noise(name, x, input_noise or {}, lambda dx: dx @ w.T)}
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
            if out.requires_grad:  # not in a streamed block's first (no-grad) forward: in its recompute
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

    def sample(logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # on the CPU generator, whatever the device: the same draws everywhere
            probs = torch.softmax(logits, -1).cpu()
            return torch.multinomial(probs, 1, generator=gen)[:, 0].to(logits.device)

    batches = run.batches(batch_tokens)
    if run.stream is not None:
        run.stream.recompute_in_backward()
    try:
        for batch in run.progress(batches, "sensitivity (Fisher)", passes=2):
            ids = torch.tensor(batch, device=run.device)
            if run.stream is None:
                logits = model(ids).logits[0].float()
                torch.nn.functional.cross_entropy(logits, sample(logits), reduction="sum").backward()
            else:
                hidden = run.stream.forward_hidden(ids)  # blocks keep their inputs only
                head_hook = collect(run.head[0]) if run.head is not None else None
                head_noise = (lambda h, g: _head_noise(run.stream, run.head[0], h, g, input_noise, noise_tokens, chunk_rows, noise_sums)) \
                    if input_noise and run.head is not None else None
                grad = torch.stack([_head_grad(run.stream, h.detach(), sample, head_hook, chunk_rows, head_noise) for h in hidden])
                hidden.backward(grad)  # block by block, in reverse
            tokens += sum(len(w) for w in batch)
    finally:
        for h in hooks:
            h.remove()
    out = {k: (v / max(tokens, 1)).cpu().numpy().astype(np.float64) for k, v in sums.items()}
    out.update({k: (v / max(noise_count[0], 1)).cpu().numpy().astype(np.float64) for k, v in noise_sums.items()})
    return out


def _noise_rows(x: Any, noise_tokens: int) -> Any:
    """Row indices of X ([windows, tokens, k] or [tokens, k]) flattened: NOISE_TOKENS evenly spaced tokens of
    each window, so a batch of windows samples the tokens the windows one at a time would."""
    import torch

    windows, length = (x.shape[0], x.shape[1]) if x.dim() == 3 else (1, x.shape[0])
    per = torch.linspace(0, length - 1, min(noise_tokens, length)).round().long().unique()
    return (torch.arange(windows)[:, None] * length + per[None, :]).reshape(-1)


def _input_noise(name: str, x: Any, input_noise: dict[str, Callable[[Any], Any]], apply: Callable[[Any], Any]) -> Any:
    """('NAME:input_noise:LABEL', APPLY(perturbed X - X)) for each perturbation whose block divides X's rows."""
    for label, fn in input_noise.items():
        block = int(label.partition("@")[2] or 1)
        if x.shape[1] % block == 0:
            yield f"{name}:input_noise:{label.partition('@')[0]}", apply(fn(x) - x)


def _head_noise(stream: Any, name: str, hidden: Any, g: Any, input_noise: dict[str, Callable[[Any], Any]], noise_tokens: int,
                chunk_rows: int, noise_sums: dict[str, Any]) -> None:
    """The head's input-noise term for one window (HIDDEN [len, hidden], G its logits' gradient), in vocabulary
    chunks: what the in-memory head's hooks add, without the whole head in memory."""
    import torch

    idx = _noise_rows(hidden, noise_tokens)
    g2 = g[idx].float() ** 2
    with torch.no_grad():
        for key, dx in _input_noise(name, hidden[idx].float(), input_noise, lambda dx: dx):
            total = torch.zeros(g.shape[1], dtype=torch.float32, device=g.device)
            for start, stop, w, _ in stream.head_chunks(chunk_rows):
                dy = dx @ w.float().T
                total[start:stop] = (g2[:, start:stop] * dy * dy).sum(0)
            noise_sums[key] = noise_sums.get(key, 0) + total


def _head_grad(stream: Any, hidden: torch.Tensor, sample: Callable[[torch.Tensor], torch.Tensor],
               head_hook: Callable[[torch.Tensor], None] | None, chunk_rows: int,
               head_noise: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """d loss / d HIDDEN [len, hidden] of one window, the loss the cross-entropy of labels SAMPLEd from its own
    logits; the head (and its logit transform: Gemma's soft-capping) in CHUNK_ROWS-row vocabulary chunks, its
    output gradient handed to HEAD_HOOK as the in-memory model's head hook would see it."""
    import torch

    from hubtool.quality.stream import _final_logit_transform

    raw = torch.empty(hidden.shape[0], stream.vocab_rows(), device=hidden.device, dtype=torch.float32)
    with torch.no_grad():
        for start, stop, w, b in stream.head_chunks(chunk_rows):
            raw[:, start:stop] = torch.nn.functional.linear(hidden, w, b)
    raw.requires_grad_(True)
    with torch.enable_grad():
        logits = _final_logit_transform(stream)(raw).float()
        torch.nn.functional.cross_entropy(logits, sample(logits), reduction="sum").backward()
    g = raw.grad
    assert g is not None
    if head_hook is not None:
        head_hook(g)
    if head_noise is not None:
        head_noise(hidden, g)
    out = torch.zeros_like(hidden)
    with torch.no_grad():
        for start, stop, w, _ in stream.head_chunks(chunk_rows):
            out += g[:, start:stop] @ w
    return out
