"""Check a GPTQ folder against its fp16 source on held-out text — perplexity, KL and top-1 agreement —
and the same for plain round-to-nearest at the same bits/group, so GPTQ's gain is visible.

One model is in memory at a time: the reference logits go to a temporary memory-mapped file,
then each quantized model is compared window by window (hubtool.quality does the maths).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hubtool.errors import InputError, QuantizeError
from hubtool.gptq.quantize import _gptqmodel, read_gptq_info
from hubtool.progress import stdout_to_stderr
from hubtool.gptq.rtn import apply_rtn
from hubtool.model_dir import load_model_dir
from hubtool.progress import log, track
from hubtool.quality import RESULTS_FILE, compare_logits, merge_metrics, read_text_source, write_results


def eval_windows(tokenizer: Any, text: str, context: int, max_tokens: int) -> list[list[int]]:
    """Non-overlapping windows of `context` tokens (BOS first when the model uses one), up to max_tokens."""
    bos = getattr(tokenizer, "bos_token_id", None)
    body = context - 1 if bos is not None else context
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = min(len(ids) // body, max(1, max_tokens // context))
    if n == 0:
        raise InputError(f"held-out text has {len(ids)} tokens, fewer than one window of {context}; give more text or lower --context")
    return [([bos] if bos is not None else []) + ids[i * body : (i + 1) * body] for i in range(n)]


def _logits(model: Any, window: list[int]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model(torch.tensor([window], device=model.device)).logits[0]
    return out.float().cpu().numpy()


def _compare(model: Any, windows: list[list[int]], ref: np.ndarray, what: str) -> dict[str, float]:
    chunks = []
    for i, w in enumerate(track(windows, description=f"verify {what}")):
        test = _logits(model, w)
        if not np.isfinite(test).all():
            raise QuantizeError(f"{what}: non-finite logits on held-out text; the quantized model is broken, re-quantize with a larger damp_percent")
        chunks.append(compare_logits(ref[i], test, np.asarray(w)))
    return merge_metrics(chunks)


def _row(metrics: dict[str, float], **fields: Any) -> dict[str, Any]:
    return {**fields, **{k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}}


CPU_KERNEL_GROUP_SIZES = (32, 64, 128, 256)


def verify_gptq(
    quant_dir: Path,
    reference_dir: Path,
    *,
    text: str = "builtin:heldout",
    rtn: bool = True,
    results_path: Path | None = None,
    context: int = 512,
    max_tokens: int = 4096,
) -> list[dict[str, Any]]:
    """Rows (kind 'gptq' and, with rtn, 'rtn') of perplexity / kl_div / top1 vs the fp16 reference.

    Written into `results_path` (default: quant_dir/quality.json) with hubtool.quality.write_results.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quant_dir, reference_dir = Path(quant_dir), Path(reference_dir)
    info = read_gptq_info(quant_dir)
    ref_dir = load_model_dir(reference_dir, kind="reference model")
    if ref_dir.config.get("quantization_config"):
        raise InputError(f"{reference_dir}: is itself quantized; --reference must be the fp16 model the GPTQ was made from")
    bits, group = int(info["bits"]), int(info["group_size"])
    if not torch.cuda.is_available() and group not in CPU_KERNEL_GROUP_SIZES:
        # The checkpoint is valid (GPU kernels take it); only this machine can't run it. Say so up front
        # instead of failing deep inside torch after the fp16 reference pass.
        raise QuantizeError(
            f"{quant_dir}: group_size {group} can't be evaluated on CPU (torch's CPU int4 kernel takes "
            f"{', '.join(map(str, CPU_KERNEL_GROUP_SIZES))}); verify it on a CUDA machine or skip verify for this preset"
        )
    tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    windows = eval_windows(tokenizer, read_text_source(text), context, max_tokens)

    def load_ref() -> Any:
        return AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()

    with tempfile.TemporaryDirectory(prefix="hubtool-verify-") as scratch:
        ref_model = load_ref()
        n_params = sum(p.numel() for p in ref_model.parameters())
        first = _logits(ref_model, windows[0])
        vocab = first.shape[-1]
        ref = np.lib.format.open_memmap(Path(scratch) / "ref.npy", mode="w+", dtype=np.float32, shape=(len(windows), len(windows[0]), vocab))
        ref[0] = first
        for i, w in enumerate(track(windows[1:], description="verify fp16 reference"), 1):
            ref[i] = _logits(ref_model, w)
        del ref_model

        rows = []
        gptq_model = _load_gptq(quant_dir)
        meta = info.get("meta") or {}
        variant = meta.get("branch") or f"gptq-{bits}bit-{group}g"
        size = sum(p.stat().st_size for p in quant_dir.glob("*.safetensors"))
        metrics = _compare(gptq_model, windows, ref, "gptq")
        del gptq_model
        rows.append(_row(metrics, variant=variant, kind="gptq", bits=bits, group_size=group, desc_act=bool(info.get("desc_act")),
                         size_bytes=size, bits_per_weight=round(size * 8 / n_params, 3)))
        if rtn:
            rtn_model = load_ref()
            apply_rtn(rtn_model, bits, group)
            metrics = _compare(rtn_model, windows, ref, "rtn")
            del rtn_model
            rows.append(_row(metrics, variant=f"rtn-{bits}bit-{group}g-sym", kind="rtn", bits=bits, group_size=group))
        del ref

    results_path = Path(results_path) if results_path else quant_dir / RESULTS_FILE
    write_results(results_path, rows, reference="fp16", text=text, tokens=rows[0]["tokens"], context=context)
    for r in rows:
        log(f"verify {r['kind']}: ppl {r['perplexity']:.3f} (fp16 {r['ref_perplexity']:.3f}), KL {r['kl_div']:.4f}, top-1 {r['top1']:.3f}")
    return rows


def _load_gptq(quant_dir: Path) -> Any:
    """transformers + optimum + gptqmodel load (CPU needs all three); errors say what is missing."""
    import torch
    from transformers import AutoModelForCausalLM

    _gptqmodel()
    try:
        import optimum  # noqa: F401
    except ImportError:
        raise InputError('loading GPTQ in transformers needs optimum: pip install "hubtool[gptq]"') from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32  # CPU fp16 matmuls are very slow
    try:
        with stdout_to_stderr():
            return AutoModelForCausalLM.from_pretrained(quant_dir, device_map=device, dtype=dtype).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise QuantizeError(f"{quant_dir}: transformers could not load the GPTQ checkpoint ({str(exc).splitlines()[0][:300]})") from None

