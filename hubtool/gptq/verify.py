"""Check a GPTQ folder against its fp16 source on held-out text — perplexity, KL and top-1 agreement —
and the same for plain round-to-nearest at the same bits/group, so GPTQ's gain is visible.

Everything streams block by block (hubtool.quality.stream): the fp16 reference log-probs come from a
cached reference folder (computed here when none is given), the GPTQ checkpoint's linears are
dequantized one block at a time, and RTN quantizes each fp16 block as it loads. Host memory holds
about one decoder block plus the activations, whatever the model's depth.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hubtool.errors import InputError, QuantizeError
from hubtool.quality.reference import Reference, compute_reference, gptq_windows
from hubtool.gptq.quantize import read_gptq_info
from hubtool.model_dir import load_model_dir
from hubtool.progress import log
from hubtool.quality.metrics import compare_logits, merge_metrics
from hubtool.quality.results import RESULTS_FILE, write_results
from hubtool.quality.texts import read_text_source, text_label

eval_windows = gptq_windows  # the window rule GPTQ rows have always used


def _compare(logprobs: list[np.ndarray], windows: list[list[int]], ref: Reference, what: str) -> dict[str, float]:
    chunks = []
    for w, test in zip(windows, logprobs):
        if not np.isfinite(test).all():
            raise QuantizeError(f"{what}: non-finite logits on held-out text; the quantized model is broken, re-quantize with a larger damp_percent")
        chunks.append(compare_logits(ref.logprobs(w), test, np.asarray(w)))
    return merge_metrics(chunks)


def _row(metrics: dict[str, float], **fields: Any) -> dict[str, Any]:
    return {**fields, **{k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}}


def _param_count(folder: Path) -> int:
    """Parameters of a model from its safetensors headers (no weights read)."""
    from safetensors import safe_open

    n = 0
    for shard in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                size = 1
                for d in f.get_slice(name).get_shape():
                    size *= int(d)
                n += size
    return n


def _stream(config_dir: Path, windows: list[list[int]], scratch: Path, **kw: Any) -> list[np.ndarray]:
    from hubtool.quality.in_memory import evaluate_logprobs

    def make_out(vocab: int) -> np.ndarray:
        return np.lib.format.open_memmap(scratch / "test.npy", mode="w+", dtype=np.float32, shape=(len(windows), max(map(len, windows)), vocab))

    return evaluate_logprobs(config_dir, windows, make_out, **kw)


def verify_gptq(
    quant_dir: Path,
    reference_dir: Path,
    *,
    text: str = "builtin:heldout",
    rtn: bool = True,
    results_path: Path | None = None,
    context: int = 512,
    max_tokens: int = 4096,
    reference: Reference | None = None,
    trust_remote_code: bool = False,
    force_context: bool = False,
    exact_tokens: bool = False,
) -> list[dict[str, Any]]:
    """Rows (kind 'gptq' and, with rtn, 'rtn') of perplexity / kl_div / top1 vs the fp16 reference.

    REFERENCE: precomputed fp16 log-probs covering these windows (a release computes them once for
    every row); without it they are computed here. Written into `results_path` (default:
    quant_dir/quality.json) with hubtool.quality.results.write_results.
    """
    from transformers import AutoTokenizer

    from hubtool.quality.stream import gptq_weights
    from hubtool.gptq.rtn import rtn_block_hook

    from hubtool.atomic import check_writable_file
    from hubtool.options import check_context, check_tokens_in_text
    from hubtool.text_windows import encode

    quant_dir, reference_dir = Path(quant_dir), Path(reference_dir)
    info = read_gptq_info(quant_dir)
    check_writable_file(Path(results_path) if results_path else quant_dir / RESULTS_FILE, flag="--results")
    ref_dir = load_model_dir(reference_dir, kind="reference model", trust_remote_code=trust_remote_code)
    if ref_dir.config.get("quantization_config"):
        raise InputError(f"{reference_dir}: is itself quantized; --reference must be the fp16 model the GPTQ was made from")
    check_context(context, source="--context", trained=ref_dir.config.get("max_position_embeddings"),
                  config=reference_dir / "config.json", force=force_context)
    bits, group = int(info["bits"]), int(info["group_size"])
    tokenizer = AutoTokenizer.from_pretrained(reference_dir, trust_remote_code=trust_remote_code)
    body = read_text_source(text)
    if exact_tokens:  # --max-tokens given: bounded by what the text holds
        check_tokens_in_text(max_tokens, available=len(encode(tokenizer, body, max_tokens=max_tokens)), source="--max-tokens", text=text)
    windows = eval_windows(tokenizer, body, context, max_tokens)
    weights = gptq_weights(quant_dir)

    with tempfile.TemporaryDirectory(prefix="hubtool-verify-") as tmp:
        scratch = Path(tmp)
        if reference is None or not reference.covers(windows):
            reference = compute_reference(reference_dir, windows, scratch / "reference", trust_remote_code=trust_remote_code)
        n_params = _param_count(reference_dir)
        rows = []
        meta = info.get("meta") or {}
        variant = meta.get("branch") or f"gptq-{bits}bit-{group}g"
        size = sum(p.stat().st_size for p in quant_dir.glob("*.safetensors"))
        log(f"verify gptq: {variant}, block by block")
        metrics = _compare(_stream(quant_dir, windows, scratch, weights=weights, trust_remote_code=trust_remote_code), windows, reference, "gptq")
        rows.append(_row(metrics, variant=variant, kind="gptq", bits=bits, group_size=group, desc_act=bool(info.get("desc_act")),
                         size_bytes=size, bits_per_weight=round(size * 8 / n_params, 3)))
        if rtn:
            log(f"verify rtn: {bits}-bit {group}g, block by block")
            metrics = _compare(_stream(reference_dir, windows, scratch, block_hook=rtn_block_hook(bits, group), trust_remote_code=trust_remote_code), windows, reference, "rtn")
            rows.append(_row(metrics, variant=f"rtn-{bits}bit-{group}g-sym", kind="rtn", bits=bits, group_size=group))

    results_path = Path(results_path) if results_path else quant_dir / RESULTS_FILE
    write_results(results_path, rows, reference="fp16", text=text_label(text), tokens=rows[0]["tokens"], context=context)
    for r in rows:
        log(f"verify {r['kind']}: ppl {r['perplexity']:.3f} (fp16 {r['ref_perplexity']:.3f}), KL {r['kl_div']:.4f}, top-1 {r['top1']:.3f}")
    return rows
