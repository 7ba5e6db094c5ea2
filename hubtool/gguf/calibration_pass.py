"""The start both per-tensor statistics over calibration text share (the importance matrix in
gguf/imatrix.py, the output Fisher in quality/sensitivity.py): the fp16 model in fp32 (its own code
too, with trust_remote_code), its tokenizer, the text cut into windows, and every `nn.Linear` named
as its GGUF weight tensor (gguf-py's tensor-name map for the llama.cpp architecture), so both
statistics key the same tensors the quantizer sees.

The model is streamed block by block (hubtool.quality.stream.StreamingModel: built on the meta device,
one decoder block's weights in memory at a time), so a pass's peak RSS does not grow with depth. Only a
model whose code can't be streamed (hubtool.quality.in_memory's reasons: no decoder block list, code
that fails on the meta device, custom blocks that can't run one at a time) is loaded whole, as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from hubtool.errors import InputError
from hubtool.progress import log, track

T = TypeVar("T")


def gguf_arch(arch_name: str) -> Any:
    """gguf-py's MODEL_ARCH for a llama.cpp architecture name ('llama', 'gemma3', ...)."""
    import gguf

    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch_name not in by_name:
        raise InputError(f"{arch_name}: unknown llama.cpp architecture for the calibration pass")
    return by_name[arch_name]


@dataclass(frozen=True)
class CalibrationPass:
    """A model ready for one statistic's pass: model (fp32, eval), tokenizer, windows, linears.

    STREAM is the block-by-block runner (MODEL's weights stay on the meta device outside it); None when
    the model is loaded whole. HEAD is (GGUF name, module) of the output head when it maps to a tensor
    (it is also in LINEARS): a streamed pass computes the head itself, in vocabulary chunks."""

    model: Any
    tokenizer: Any
    windows: tuple[tuple[int, ...], ...]  # BOS-led token windows (hubtool.text_windows' rule)
    linears: tuple[tuple[str, Any], ...]  # (GGUF tensor name, the nn.Linear module) for every mapped linear
    stream: Any = None  # hubtool.quality.stream.StreamingModel, or None (in memory)
    head: tuple[str, Any] | None = None
    device: str = "cpu"

    def batches(self, tokens: int) -> list[list[tuple[int, ...]]]:
        """Consecutive windows of equal length (no padding), up to TOKENS tokens a batch (one window at least);
        one window a batch when the model is loaded whole (its full logits are computed per window)."""
        out: list[list[tuple[int, ...]]] = []
        for w in self.windows:
            if out and self.stream is not None and len(out[-1][0]) == len(w) and (len(out[-1]) + 1) * len(w) <= tokens:
                out[-1].append(w)
            else:
                out.append([w])
        return out

    def progress(self, batches: list[T], description: str, *, passes: int = 1) -> Iterator[T]:
        """BATCHES, with progress lines: per block materialised when streamed (PASSES loads of each block a batch)."""
        if self.stream is None:
            yield from track(batches, description=description)
            return
        ticks = track(range(len(batches) * len(self.stream.blocks) * passes), description=f"{description}, block by block")
        self.stream.block_hook = lambda _name, _block: next(ticks, None)
        try:
            yield from batches
        finally:
            self.stream.block_hook = None
        for _ in ticks:  # the last progress line, once every batch is done
            pass


def open_calibration_pass(model_dir: Path, text: str, *, arch_name: str, context: int, max_tokens: int, what: str,
                          trust_remote_code: bool = False, device: str = "cpu", in_memory: bool = False) -> CalibrationPass:
    """MODEL_DIR ready for a WHAT pass ('importance matrix', 'sensitivity pass') over the first
    MAX_TOKENS of TEXT in CONTEXT-token windows (fewer when the model's config allows fewer positions),
    streamed block by block on DEVICE unless IN_MEMORY (or the model's code can't be streamed).
    Refuses a text under 16 tokens."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtool.quality.stream import NotStreamable, StreamingModel
    from hubtool.text_windows import bos_id, encode, windows

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    ids = encode(tok, text, max_tokens=max_tokens)
    if len(ids) < 16:
        raise InputError(f"calibration text: {len(ids)} tokens is too short for the {what}; give at least a few paragraphs")
    stream = None
    if not in_memory:
        try:
            stream = StreamingModel(Path(model_dir), device=device, trust_remote_code=trust_remote_code)
        except NotStreamable as exc:
            log(f"{what}: can't stream {model_dir} block by block ({str(exc).split(': ', 1)[-1]}); loading it whole")
    if stream is not None:
        model = stream.model
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
        model = model.to(device).eval()
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None) or 0
    longest = [getattr(model.config, k, None) for k in ("max_position_embeddings", "seq_length", "n_positions")]
    context = min([context] + [int(n) for n in longest if isinstance(n, int) and n > 1])  # a window the model accepts
    tmap = gguf.get_tensor_name_map(gguf_arch(arch_name), int(n_layers))
    linears = []
    head_module = model.get_output_embeddings()
    head = None
    for mod_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            gguf_name = tmap.get_name(mod_name + ".weight", try_suffixes=(".weight",))
            if gguf_name:
                linears.append((gguf_name, module))
                if module is head_module:
                    head = (gguf_name, module)
    if not linears:
        raise InputError(f"{model_dir}: no linear layer maps to a llama.cpp {arch_name} tensor; the {what} would be empty")
    return CalibrationPass(model, tok, tuple(tuple(w) for w in windows(ids, context, bos_id(tok))), tuple(linears),
                           stream=stream, head=head, device=str(device))


def run_calibration(compute: Callable[[CalibrationPass], T], model_dir: Path, text: str, *, in_memory: bool = False, **kw: Any) -> T:
    """COMPUTE over open_calibration_pass(MODEL_DIR, TEXT, **KW): streamed, or loaded whole when IN_MEMORY, when
    the model's code can't be built for streaming, or when custom code (auto_map) fails block by block (said once)."""
    run = open_calibration_pass(Path(model_dir), text, in_memory=in_memory, **kw)
    if run.stream is None:
        return compute(run)
    try:
        return compute(run)
    except (InputError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        if not config.get("auto_map"):
            raise  # transformers' own classes stream: a failure there is a bug to see, not to hide
        log(f"{kw.get('what', 'calibration pass')}: {model_dir}'s blocks can't be run one at a time "
            f"({type(exc).__name__}: {str(exc)[:200]}); loading it whole")
    del run
    return compute(open_calibration_pass(Path(model_dir), text, in_memory=True, **kw))
