"""Whole-model evaluation for custom-code models whose code can't be streamed block by block.

Some models' own code keeps its decoder blocks outside a ModuleList, or fails on the meta device;
hubtool.quality.stream can't hook such blocks one at a time. Here the whole model is loaded with its
own code in fp32 and each window runs through its plain forward, giving the same log-prob arrays as
the streamed path (same windows, shapes and vocabulary rows), at the memory cost `memory_estimate`
states in the plan. A GPTQ checkpoint is evaluated the same way, its linears dequantized into the
fp32 model (hubtool.quality.stream.gptq_dequantize owns the packing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hubtool.errors import InputError
from hubtool.quality.stream import BlockHook, NotStreamable, StreamingModel, Weights, WeightIndex, gptq_dequantize, stream_logprobs
from hubtool.progress import log

GB = 10**9


@dataclass(frozen=True)
class EvaluationMode:
    """How a model is evaluated: its plan line, and the RAM an in-memory evaluation needs (0 when streamed)."""

    line: str
    memory_bytes: int = 0


@lru_cache(maxsize=8)
def _mode(model_dir: str, context: int, trust_remote_code: bool, stamp: int) -> EvaluationMode:
    from hubtool.quality.stream import streaming_check

    try:
        return EvaluationMode(streaming_check(Path(model_dir), trust_remote_code=trust_remote_code))
    except NotStreamable as exc:
        reason = str(exc).split(": ", 1)[-1]
        return EvaluationMode(fallback_line(Path(model_dir), reason, context), memory_estimate(Path(model_dir), context))


def evaluation_mode(model_dir: Path, *, context: int, trust_remote_code: bool = False) -> EvaluationMode:
    """For the plan: how MODEL_DIR's code is evaluated block by block, or why it can't be and what evaluating it
    in memory costs (built once per folder on the meta device). Other refusals (custom code not trusted, no
    weights) are raised: the in-memory path can't help them."""
    folder = Path(model_dir).resolve()
    return _mode(str(folder), int(context), bool(trust_remote_code), (folder / "config.json").stat().st_mtime_ns)


def _config(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg.get("text_config") or cfg


def memory_estimate(model_dir: Path, context: int) -> int:
    """Bytes of RAM an in-memory evaluation of MODEL_DIR peaks at: fp32 weights (4 bytes a parameter, from the
    safetensors headers) + one window's activations (the [context, vocab] logits in fp32 and their fp64
    log-softmax, the hidden states of a block and its attention scores)."""
    index = WeightIndex(Path(model_dir))
    params = 0
    for name in index.where:
        size = 1
        for d in index.shape(name):
            size *= int(d)
        params += size
    cfg = _text_config(_config(model_dir))
    vocab = int(cfg.get("vocab_size") or 0)
    hidden = int(cfg.get("hidden_size") or cfg.get("n_embd") or 0)
    inter = int(cfg.get("intermediate_size") or 4 * hidden)
    heads = int(cfg.get("num_attention_heads") or cfg.get("n_head") or 1)
    activations = context * (vocab * (4 + 8 + 8) + 4 * (8 * hidden + 3 * inter)) + 4 * 2 * heads * context * context
    return int(4 * params + activations)


def fallback_line(model_dir: Path, reason: str, context: int) -> str:
    """The plan's `verify:` line for a model evaluated in memory."""
    cfg = _config(model_dir)
    custom = (cfg.get("auto_map") or {}).get("AutoModelForCausalLM")  # the class its own code builds
    arch = (str(custom).rpartition(".")[2] if isinstance(custom, str) else "") or ", ".join(cfg.get("architectures") or []) or "this model"
    reason = reason.split("; this ")[0]  # the cause, without stream.py's "can't be streamed" tail
    gb = memory_estimate(model_dir, context) / GB
    return (f"{arch}: can't be evaluated block by block ({reason}); evaluated in memory: about {gb:.3g} GB of RAM "
            f"(fp32 weights + one window's activations)")


def _load(config_dir: Path, weights: Weights, *, device: torch.device, trust_remote_code: bool) -> Any:
    """The whole model in fp32 with its own code: from_pretrained for an fp16 folder; for a GPTQ folder (or code
    from_pretrained can't build: it starts on the meta device) the model is built on the CPU from its config and
    its tensors are read from the safetensors, every packed Linear's weight the dequantized one."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not weights.gptq_bits:
        try:
            model = AutoModelForCausalLM.from_pretrained(weights.folder, trust_remote_code=trust_remote_code, dtype=torch.float32)
            return model.to(device).eval()
        except Exception as exc:  # e.g. code that fails on the meta device from_pretrained builds on: build it for real
            log(f"{weights.folder}: from_pretrained failed ({type(exc).__name__}); building the model from its config")
    config = AutoConfig.from_pretrained(config_dir, trust_remote_code=trust_remote_code)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    try:  # on the meta device, so the weights read below are the only copy in RAM
        from accelerate import init_empty_weights

        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except Exception:  # code that fails on the meta device: built for real (about twice the weights' RAM while loading)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    index = WeightIndex(weights.folder)
    state: dict[str, torch.Tensor] = {}
    for name in model.state_dict():
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if name in index:
            state[name] = index.get(name).float()
        elif weights.gptq_bits and prefix is not None and f"{prefix}.qweight" in index:
            get = lambda s: index.get(f"{prefix}.{s}")  # noqa: E731
            state[name] = gptq_dequantize(get("qweight"), get("qzeros"), get("scales"), get("g_idx"), int(weights.gptq_bits))
    missing = [n for n in model.state_dict() if n not in state]
    head = model.get_output_embeddings()
    tied = {f"{n}.weight" for n, m in model.named_modules() if m is head} if head is not None and (
        getattr(config, "tie_word_embeddings", False) or head.weight is model.get_input_embeddings().weight) else set()
    missing = [n for n in missing if n not in tied and not n.endswith("inv_freq")]
    if missing:
        raise InputError(f"{weights.folder}: tensor {missing[0]} missing from the safetensors; "
                         f"the checkpoint's names don't match {type(model).__name__} (re-save it with save_pretrained)")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise InputError(f"{weights.folder}: tensor {left[0]} missing from the safetensors; re-save the model with save_pretrained")
    return model.to(device).eval()


@torch.inference_mode()
def memory_logprobs(config_dir: Path, windows: list[list[int]], out: np.ndarray | None = None, *, make_out: Any = None, weights: Weights | None = None,
                    block_hook: BlockHook | None = None, device: str | None = None, trust_remote_code: bool = False) -> list[np.ndarray]:
    """Next-token log-softmax [len(w), vocab] (fp32) of every window through the whole model's own forward,
    one window at a time. BLOCK_HOOK (e.g. RTN) is applied once to the whole decoder. OUT as in stream_logprobs,
    or MAKE_OUT(vocab) makes it once the head's width is known."""
    config_dir = Path(config_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = _load(config_dir, weights or Weights(config_dir), device=dev, trust_remote_code=trust_remote_code)
    if block_hook is not None:
        block_hook("model", model)
    head = model.get_output_embeddings()
    vocab = int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)
    if out is None and make_out is not None:
        out = make_out(vocab)
    if out is None:
        out = np.empty((len(windows), max(map(len, windows)), vocab), dtype=np.float32)
    result = []
    for i, w in enumerate(windows):
        logits = model(input_ids=torch.tensor([w], device=dev), use_cache=False).logits[0, :, :vocab]
        out[i, : len(w), :vocab] = torch.log_softmax(logits.double(), dim=-1).float().cpu().numpy()
        del logits
        result.append(out[i, : len(w), :vocab])
    return result


def evaluate_logprobs(config_dir: Path, windows: list[list[int]], make_out: Any = None, *, weights: Weights | None = None,
                      block_hook: BlockHook | None = None, device: str | None = None, trust_remote_code: bool = False,
                      what: str = "model") -> list[np.ndarray]:
    """Log-probs of every window: block by block when the model's code allows it, else in memory (said once):
    code that can't be built for streaming, or custom code whose streamed forward fails.
    MAKE_OUT(vocab) gives the output array (e.g. a disk memmap) once the vocabulary width is known."""
    try:
        model = StreamingModel(Path(config_dir), weights, device=device, block_hook=block_hook, trust_remote_code=trust_remote_code)
    except NotStreamable as exc:
        reason = str(exc).split(": ", 1)[-1]
        log(f"{what}: can't be evaluated block by block ({reason}); evaluating it in memory")
        return memory_logprobs(config_dir, windows, make_out=make_out, weights=weights, block_hook=block_hook, device=device,
                               trust_remote_code=trust_remote_code)
    try:
        return stream_logprobs(model, windows, out=make_out(model.vocab_rows()) if make_out is not None else None)
    except (InputError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        if not _config(config_dir).get("auto_map"):
            raise  # transformers' own classes stream: a failure there is a bug to see, not to hide
        del model  # custom code whose blocks can't run one at a time (e.g. its forward reads another block's weights)
        log(f"{what}: its blocks can't be run one at a time ({type(exc).__name__}: {str(exc)[:200]}); evaluating it in memory")
    return memory_logprobs(config_dir, windows, make_out=make_out, weights=weights, block_hook=block_hook, device=device,
                           trust_remote_code=trust_remote_code)
