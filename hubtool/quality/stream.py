"""Run a causal LM over held-out windows block by block, straight from its memory-mapped safetensors.

The model is built on the meta device from its config (transformers' own modules, rotary embedding
and masks: nothing architecture-specific is written here). All windows go through the base model's
own forward as one right-padded batch; a pre-hook on each decoder block materialises that block's
weights (fp32 compute) just before it runs and a post-hook drops them back to meta after it, so
host memory holds one block plus the activations, whatever the depth. The output head runs in
vocabulary chunks read as row slices of the checkpoint. On CUDA the blocks run on the GPU.
The calibration passes (hubtool.gguf.calibration_pass) run through the same blocks, the Fisher's backward too
(`recompute_in_backward`: each block recomputed from its saved input, one at a time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from hubtool.errors import InputError
from hubtool.model_dir import check_remote_code

BlockHook = Callable[[str, torch.nn.Module], None]


def _trim_heap() -> None:
    """Return the C heap's free pages to the OS (glibc malloc_trim; a no-op elsewhere). Block-sized buffers freed
    between blocks sit under glibc's raised mmap threshold, in a heap that small long-lived tensors fragment, so
    without this the process's RSS creeps up by tens of MB per block over a pass."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


class NotStreamable(InputError):
    """This model's code can't be evaluated block by block (hubtool.quality.in_memory evaluates it whole)."""


class WeightIndex:
    """Tensor name -> safetensors shard of a model folder; each read opens the shard, copies one
    tensor (or row slice) out of the memory map and closes it again, so mapped pages of blocks
    already done don't stay resident in this process (its RSS would otherwise grow with depth)."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        shards = sorted(self.folder.glob("*.safetensors"))
        if not shards:
            raise InputError(f"{folder}: no *.safetensors weights; pass a model folder saved with save_pretrained")
        self.where: dict[str, Path] = {}
        self._shapes: dict[str, list[int]] = {}
        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                for name in f.keys():
                    self.where[name] = shard
                    self._shapes[name] = list(f.get_slice(name).get_shape())

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def _open(self, name: str) -> Any:
        from safetensors import safe_open

        return safe_open(str(self.where[name]), framework="pt")

    def get(self, name: str) -> torch.Tensor:
        with self._open(name) as f:
            return f.get_tensor(name).clone()

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows START:STOP of a 2-D tensor without reading the rest."""
        with self._open(name) as f:
            return f.get_slice(name)[start:stop].clone()

    def shape(self, name: str) -> list[int]:
        return self._shapes[name]


def _unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words holding 32/bits codes each, low bits first (GPTQ packing), unpacked along DIM."""
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    if dim == 0:  # qweight [in/per, out] -> [in, out]
        codes = (packed.unsqueeze(1) >> shifts.view(1, per, 1)) & (2**bits - 1)
        return codes.reshape(packed.shape[0] * per, packed.shape[1])
    codes = (packed.unsqueeze(2) >> shifts.view(1, 1, per)) & (2**bits - 1)  # qzeros [groups, out/per] -> [groups, out]
    return codes.reshape(packed.shape[0], packed.shape[1] * per)


def gptq_dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor, bits: int) -> torch.Tensor:
    """[out, in] fp32 weight of a GPTQ v1 (`checkpoint_format: gptq`) linear: scale * (q - (zero + 1))."""
    if bits not in (2, 4, 8):
        raise InputError(f"GPTQ {bits}-bit checkpoints can't be evaluated block by block (2, 4 and 8 bits can)")
    q = _unpack(qweight.to(torch.int32), bits, 0)[: g_idx.numel()]
    zeros = _unpack(qzeros.to(torch.int32), bits, 1)[:, : scales.shape[1]] + 1  # v1 stores zero - 1
    g = g_idx.long()
    # integer codes minus zeros first (exact), one float conversion, then the scales in place: half the
    # memory passes of gathering float copies of both (the same values bit for bit)
    return (q - zeros.index_select(0, g)).float().mul_(scales.float().index_select(0, g)).t().contiguous()


@dataclass(frozen=True)
class Weights:
    """Where a module's tensors come from: a folder's safetensors, optionally GPTQ-packed linears."""

    folder: Path
    gptq_bits: int | None = None


def gptq_weights(folder: Path) -> Weights:
    """A GPTQ checkpoint folder as a weight source (linears dequantized as their block loads)."""
    cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("quantization_config") or {}
    if not cfg:
        qc = Path(folder) / "quantize_config.json"
        cfg = json.loads(qc.read_text(encoding="utf-8")) if qc.is_file() else {}
    fmt = cfg.get("checkpoint_format", "gptq")
    if fmt != "gptq":
        raise InputError(f"{folder}: checkpoint_format {fmt!r}; block-by-block evaluation reads the v1 'gptq' format hubtool writes")
    return Weights(Path(folder), int(cfg.get("bits", 4)))


class StreamingModel:
    """A causal LM from FOLDER's config with every weight left on the meta device until its block runs."""

    def __init__(self, config_dir: Path, weights: Weights | None = None, *, device: str | None = None,
                 dtype: torch.dtype = torch.float32, block_hook: BlockHook | None = None, trust_remote_code: bool = False) -> None:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.config_dir = Path(config_dir)
        self.weights = weights or Weights(self.config_dir)
        self.index = WeightIndex(self.weights.folder)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.block_hook = block_hook
        self._recomputed: set[int] = set()
        # a custom-code model (auto_map) is built from its own classes, only when the user trusts its code
        check_remote_code(self.config_dir, json.loads((self.config_dir / "config.json").read_text(encoding="utf-8")),
                          trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(self.config_dir, trust_remote_code=trust_remote_code)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        try:
            with init_empty_weights():
                self.model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
        except Exception as exc:  # the model's own code failed on the meta device
            raise NotStreamable(f"{self.config_dir / 'config.json'}: the model's code can't be built on the meta device "
                                f"({type(exc).__name__}: {str(exc)[:200]})") from None
        self.model.eval()
        self.names = {id(m): n for n, m in self.model.named_modules()}
        self.config = config
        self.base = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.base_model
        self.head = self.model.get_output_embeddings()
        self.embed = self.model.get_input_embeddings()
        self.blocks = self._find_blocks()
        self.tied = bool(getattr(config, "tie_word_embeddings", False)) or self._name(self.head) + ".weight" not in self.index
        for buf_name, buf in list(self.model.named_buffers()):  # rotary inv_freq etc. are computed, not loaded
            if buf.device.type == "meta":
                raise NotStreamable(f"{self.config_dir}: buffer {buf_name} has no value; this architecture can't be streamed")
        skip = {id(m) for m in (self.head, self.embed, *self.blocks)}
        for name, module in self.model.named_modules():  # everything outside blocks, embedding and head: norms (small)
            if id(module) in skip or any(name.startswith(self._name(b) + ".") for b in self.blocks):
                continue
            self._load(module, recurse=False)
        for block in self.blocks:
            block.register_forward_pre_hook(self._materialise)
            block.register_forward_hook(self._release)

    def _find_blocks(self) -> list[torch.nn.Module]:
        """The decoder's repeated blocks, found without knowing the architecture (custom code included): the
        ModuleList holding num_hidden_layers blocks (e.g. original Qwen's `transformer.h`), else the longest."""
        lists = [m for m in self.base.modules() if isinstance(m, torch.nn.ModuleList)]
        if not lists:
            raise NotStreamable(f"{self.config_dir}: no decoder block list found in {type(self.model).__name__}; "
                             "this model's code can't be evaluated block by block")
        depth = getattr(self.config, "num_hidden_layers", None)
        exact = [m for m in lists if len(m) == depth]
        return list(exact[0] if exact else max(lists, key=len))

    def _name(self, module: torch.nn.Module) -> str:
        return self.names[id(module)]

    def _tensor(self, module_name: str, param: str, shape: list[int] | None = None) -> torch.Tensor:
        full = f"{module_name}.{param}" if module_name else param
        if self._stored(full):
            return self._read(full)
        on_disk = self._checkpoint_layout(full, shape)
        if on_disk is not None:
            return on_disk
        raise InputError(f"{self.weights.folder}: tensor {full} missing from the safetensors; "
                         f"the checkpoint's names don't match {type(self.model).__name__} (re-save it with save_pretrained)")

    def _packed(self, name: str) -> str | None:
        """The GPTQ module prefix holding NAME (a Linear's `.weight`) packed, if this checkpoint has one."""
        if self.weights.gptq_bits and name.endswith(".weight") and f"{name[:-len('.weight')]}.qweight" in self.index:
            return name[: -len(".weight")]
        return None

    def _stored(self, name: str) -> bool:
        return name in self.index or self._packed(name) is not None

    def _rows(self, name: str) -> int:
        prefix = self._packed(name)
        return self.index.shape(name)[0] if prefix is None else self.index.shape(f"{prefix}.scales")[1]

    def _read(self, name: str) -> torch.Tensor:
        """NAME as stored, or dequantized from its GPTQ-packed Linear."""
        if name in self.index:
            return self.index.get(name)
        prefix = self._packed(name)
        assert prefix is not None
        get = lambda s: self.index.get(f"{prefix}.{s}")  # noqa: E731
        return gptq_dequantize(get("qweight"), get("qzeros"), get("scales"), get("g_idx"), int(self.weights.gptq_bits or 4))

    def _checkpoint_layout(self, full: str, shape: list[int] | None) -> torch.Tensor | None:
        """FULL as the checkpoint stores it under transformers' conversion mapping (the same owner the merge
        uses): a renamed tensor (Mixtral's `mlp.gate` is `block_sparse_moe.gate` on disk), or MoE experts
        that transformers 5 fuses into one 3-D parameter but the checkpoint keeps per expert (GPTQ-packed too)."""
        from hubtool.expert_layout import disk_name, per_expert_slices

        model_type = str(getattr(self.config, "model_type", ""))
        renamed = disk_name(model_type, full, self._stored)
        if renamed is not None:
            return self._read(renamed)
        if shape is None or len(shape) != 3:
            return None
        slices = per_expert_slices(model_type, full, shape[0], shape[1], self._stored, self._rows)
        pieces = [(x.name, x.expert, x.row_start, x.row_end) for x in slices] if slices is not None else self._linear_experts(full, shape)
        if pieces is None:
            return None
        fused: torch.Tensor | None = None
        for name, expert, start, stop in pieces:
            part = self._read(name)
            if fused is None:
                fused = torch.empty(shape, dtype=part.dtype)
            fused[expert, start:stop] = part
        return fused

    def _linear_experts(self, full: str, shape: list[int]) -> list[tuple[str, int, int, int]] | None:
        """Experts stored as one Linear each under the fused parameter's own names (what gptqmodel writes:
        `experts.N.gate_proj` + `experts.N.up_proj` for `experts.gate_up_proj`, `experts.N.down_proj`)."""
        owner, _, leaf = full.rpartition(".")
        parts = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}.get(leaf)
        if parts is None:
            return None
        pieces = []
        for e in range(shape[0]):
            row = 0
            for part in parts:
                name = f"{owner}.{e}.{part}.weight"
                if not self._stored(name):
                    return None
                n = self._rows(name)
                pieces.append((name, e, row, row + n))
                row += n
            if row != shape[1]:
                return None
        return pieces

    def _load(self, module: torch.nn.Module, *, recurse: bool = True) -> None:
        from accelerate.utils import set_module_tensor_to_device

        prefix = self._name(module)
        for name, meta_param in module.named_parameters(recurse=recurse):
            owner, _, leaf = name.rpartition(".")
            owner_name = f"{prefix}.{owner}" if owner and prefix else (owner or prefix)
            value = self._tensor(owner_name, leaf, list(meta_param.shape))
            set_module_tensor_to_device(module, name, self.device, value=value, dtype=self.dtype)

    def _materialise(self, block: torch.nn.Module, args: Any) -> None:
        _trim_heap()  # the previous block's weights and activations were freed: give their pages back first
        self._load(block)
        if self.block_hook is not None:
            self.block_hook(self._name(block), block)

    def _release(self, block: torch.nn.Module, args: Any, output: Any) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for name, _ in list(block.named_parameters()):
            set_module_tensor_to_device(block, name, "meta")

    def _on_meta(self, block: torch.nn.Module) -> bool:
        return any(p.device.type == "meta" for p in block.parameters())

    def recompute_in_backward(self) -> None:
        """Let autograd run through the blocks one at a time (the Fisher pass): with grad enabled, each block keeps
        only its input hidden states from the forward (activation checkpointing, torch.utils.checkpoint); the
        backward re-materialises the block, recomputes its forward from that input with grad, back-propagates
        through it and drops it. Without grad (inference_mode: the reference stage) blocks run exactly as before."""
        for block in self.blocks:
            if id(block) not in self._recomputed:
                self._recomputed.add(id(block))
                block.forward = self._checkpointed(block, block.forward)

    def _checkpointed(self, block: torch.nn.Module, inner: Callable[..., Any]) -> Callable[..., Any]:
        from torch.utils.checkpoint import checkpoint

        def forward(*args: Any, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return inner(*args, **kwargs)
            rest = args[1:]
            hidden = args[0] if args else kwargs.pop("hidden_states")

            def run(h: torch.Tensor) -> Any:
                again = self._on_meta(block)  # the backward's recompute: the forward's post-hook dropped the weights
                if again:
                    self._materialise(block, ())
                try:
                    return inner(h, *rest, **kwargs) if args else inner(hidden_states=h, **kwargs)
                finally:
                    if again:  # the recomputed graph holds the weights it needs until this block's backward is done
                        self._release(block, (), None)

            return checkpoint(run, hidden, use_reentrant=True, preserve_rng_state=False)

        return forward

    def forward_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Final (normed) hidden states [batch, len, hidden] of equal-length windows IDS, one pass over the blocks,
        under the caller's grad mode (with recompute_in_backward, a graph a backward can run block by block)."""
        return self.base(inputs_embeds=self.embeddings(ids), use_cache=False).last_hidden_state

    def embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of IDS through the model's own embedding module (Gemma-3 scales inside it),
        its matrix read once and dropped."""
        from accelerate.utils import set_module_tensor_to_device

        set_module_tensor_to_device(self.embed, "weight", self.device, value=self._tensor(self._name(self.embed), "weight"), dtype=self.dtype)
        try:
            return self.embed(ids.to(self.device))
        finally:
            set_module_tensor_to_device(self.embed, "weight", "meta")

    @torch.inference_mode()
    def hidden_states(self, windows: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
        """Final (normed) hidden states [n, max_len, hidden] of every window, one pass over the blocks."""
        lengths = [len(w) for w in windows]
        width = max(lengths)
        ids = torch.zeros(len(windows), width, dtype=torch.long)
        mask = torch.zeros(len(windows), width, dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, : len(w)] = torch.tensor(w)
            mask[i, : len(w)] = 1
        embeds = self.embeddings(ids)
        kw: dict[str, Any] = {"inputs_embeds": embeds, "use_cache": False}
        if min(lengths) != width:  # right padding: real positions never attend to it (causal), so no effect on them
            kw["attention_mask"] = mask.to(self.device)
        out = self.base(**kw)
        return out.last_hidden_state, lengths

    def vocab_rows(self) -> int:
        """Rows of the output head as stored (may exceed config.vocab_size by padding)."""
        name = self._name(self.embed) if self.tied else self._name(self.head)
        return self.index.shape(f"{name}.weight")[0] if f"{name}.weight" in self.index else int(self.config.vocab_size)

    def head_chunks(self, chunk_rows: int) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor | None]]:
        """(start, stop, weight rows, bias rows) of the output head in vocabulary chunks."""
        name = self._name(self.embed) if self.tied else self._name(self.head)
        vocab = self.index.shape(f"{name}.weight")[0] if f"{name}.weight" in self.index else int(self.config.vocab_size)
        bias_name = f"{self._name(self.head)}.bias"
        for start in range(0, vocab, chunk_rows):
            stop = min(vocab, start + chunk_rows)
            if f"{name}.weight" in self.index:
                w = self.index.rows(f"{name}.weight", start, stop)
            else:  # a quantized head: dequantize whole, then slice (rare: GPTQ keeps lm_head in 16 bit)
                w = self._tensor(name, "weight")[start:stop]
            b = self.index.rows(bias_name, start, stop) if bias_name in self.index else None
            yield start, stop, w.to(self.device, self.dtype), (b.to(self.device, self.dtype) if b is not None else None)


def _final_logit_transform(model: StreamingModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """Architecture extras applied to the head output (Gemma's soft-capping, Cohere/Granite scaling)."""
    cfg = model.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    divide = getattr(cfg, "logits_scaling", None)

    def f(x: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            x = x * scale
        if divide is not None:
            x = x / divide
        if cap is not None:
            x = torch.tanh(x / cap) * cap
        return x

    return f


def stream_logprobs(model: StreamingModel, windows: list[list[int]], out: np.ndarray | None = None, *,
                    chunk_rows: int = 8192) -> list[np.ndarray]:
    """Next-token log-softmax [len(w), vocab] (fp32) of every window.

    OUT, when given, is an array (e.g. a disk memmap) [n, max_len, vocab] the logits are built in,
    so only one head chunk of logits is in RAM at a time; each window's rows are then normalised in place.
    """
    hidden, lengths = model.hidden_states(windows)
    transform = _final_logit_transform(model)
    vocab = None
    with torch.inference_mode():
        for start, stop, w, b in model.head_chunks(chunk_rows):
            if out is None:
                out = np.empty((len(windows), max(lengths), model.vocab_rows()), dtype=np.float32)
            logits = transform(torch.nn.functional.linear(hidden, w, b))
            out[:, :, start:stop] = logits.float().cpu().numpy()
            vocab = stop
            del logits, w, b
    del hidden
    assert out is not None and vocab is not None
    result = []
    for i, n in enumerate(lengths):
        x = torch.from_numpy(np.asarray(out[i, :n, :vocab])).double()
        out[i, :n, :vocab] = torch.log_softmax(x, dim=-1).float().numpy()
        result.append(out[i, :n, :vocab])
    return result


def streaming_check(model_dir: Path, *, trust_remote_code: bool = False) -> str:
    """Build MODEL_DIR's model (its own classes for custom code) on the meta device and find what block-by-block
    evaluation needs: the decoder blocks, the embedding and the head. One line for the plan, or an error naming
    what this model's code lacks, before any heavy stage runs."""
    try:
        model = StreamingModel(Path(model_dir), device="cpu", trust_remote_code=trust_remote_code)
    except InputError:
        raise
    except Exception as exc:  # the model's own code failed to build on the meta device
        raise InputError(f"{Path(model_dir) / 'config.json'}: the model's code can't be built for block-by-block evaluation "
                         f"({type(exc).__name__}: {str(exc)[:200]}); set `verify: {{enabled: false}}` in release.yaml") from None
    blocks = model._name(model.blocks[0]).rpartition(".")[0]
    return (f"{type(model.model).__name__} evaluated block by block with its own classes: {len(model.blocks)} blocks ({blocks}), "
            f"embedding {model._name(model.embed)}, head {model._name(model.head)}{' (tied)' if model.tied else ''}")
