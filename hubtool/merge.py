"""Streaming LoRA merge: W' = W + scale · B·A, one tensor at a time, shard by shard.

Each output tensor is computed in float32 from the memory-mapped base tensor and the adapter's
low-rank factors, cast to the output dtype, checked, and streamed into its shard. Peak memory is
a few copies of the largest single tensor, not the model, so a 70B merge fits in a small box.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hubtool import __version__
from hubtool.adapter import Adapter, LoraModule, load_adapter
from hubtool.atomic import check_output_free, staged_dir
from hubtool.errors import InputError, MergeError
from hubtool.hashing import sha256_file
from hubtool.model_dir import SAFE_INDEX, SAFE_SINGLE, TOKENIZER_FILES, ModelDir, load_model_dir
from hubtool.progress import log, track
from hubtool.rope import RopeScaling, apply_to_config, base_context, from_config
from hubtool.shard_writer import BufferPool, ShardWriter

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
FP16_MAX = 65504.0
PROVENANCE_FILE = "hubtool.json"


@dataclass
class MergeSummary:
    out_dir: Path
    tensors: int
    merged_modules: int
    replaced_tensors: list[str]
    bytes_written: int
    seconds: float
    rope: dict[str, Any] | None
    config_changes: dict[str, Any] = field(default_factory=dict)


def _nonfinite_factor(adapter: Adapter, mod: LoraModule) -> str | None:
    """Which adapter tensor carries NaN/Inf (checked only after a merged tensor came out non-finite)."""
    for key in (mod.a_key, mod.b_key, mod.magnitude_key):
        if key is not None and not torch.isfinite(adapter.get(key)).all():
            return key
    return None


def _merge_into(adapter: Adapter, mod: LoraModule, weight: torch.Tensor, w: torch.Tensor) -> None:
    """w ← W + scale·B·A in float32 (w: a reused fp32 buffer shaped like W; shapes checked by _plan).
    DoRA then rescales each output row to its learned magnitude."""
    a = adapter.get(mod.a_key).float()  # type: ignore[arg-type]
    b = adapter.get(mod.b_key).float()  # type: ignore[arg-type]
    w.copy_(weight)
    if mod.embedding or adapter.fan_in_fan_out:  # stored transposed: add (B·A)ᵀ = Aᵀ·Bᵀ
        w.addmm_(a.T, b.T, alpha=mod.scale)
    else:
        w.addmm_(b, a, alpha=mod.scale)  # in place: no [out, in] temporary for the delta
    if mod.magnitude_key is not None:
        if mod.embedding:
            raise MergeError(f"{adapter.path}: DoRA on embedding {mod.module} is not supported")
        magnitude = adapter.get(mod.magnitude_key).float()
        rows = w.T if adapter.fan_in_fan_out else w
        norm = torch.linalg.vector_norm(rows, dim=1)
        rows.mul_((magnitude / norm).unsqueeze(1))


def _check_range(name: str, t: torch.Tensor, dtype: torch.dtype, source: str, *, adapter: Adapter, mod: LoraModule | None) -> None:
    """Refuse NaN/Inf and values float16 can't hold. aminmax is one fast pass and propagates NaN."""
    lo, hi = (float(v) for v in torch.aminmax(t))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = _nonfinite_factor(adapter, mod) if mod is not None else None
        if bad:
            raise MergeError(f"{adapter.path}: adapter tensor {bad} contains NaN/Inf; the adapter is corrupt or training diverged")
        raise MergeError(f"{source}: tensor {name} has NaN/Inf values; the input is corrupt or training diverged")
    if dtype == torch.float16 and max(hi, -lo) > FP16_MAX:
        raise MergeError(
            f"{source}: tensor {name} has values up to {max(hi, -lo):.4g}, beyond float16's ±{FP16_MAX:.0f}; merge with --dtype bfloat16"
        )


def _plan(base: ModelDir, adapter: Adapter, dtype: torch.dtype) -> tuple[dict[str, list[tuple[str, torch.dtype, list[int]]]], dict[str, Any]]:
    """Output layout per shard (names, dtypes, shapes) and config changes, validated before writing."""
    missing = [m.weight_name for m in adapter.modules.values() if m.weight_name not in base.weight_map]
    if missing:
        raise MergeError(
            f"{adapter.path}: adapter targets {missing[0]}"
            + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
            + f", which the base model at {base.path} does not have; use the base model the adapter was trained on"
        )
    config_changes: dict[str, Any] = {}
    new_tensors = [n for n in adapter.replacements if n not in base.weight_map]
    for name in new_tensors:
        if name == "lm_head.weight" and base.config.get("tie_word_embeddings", False):
            config_changes["tie_word_embeddings"] = False  # the adapter trained its own head: untie
        else:
            raise MergeError(f"{adapter.path}: adapter saves a full {name} but the base model has no such tensor; use the matching base model")
    plan: dict[str, list[tuple[str, torch.dtype, list[int]]]] = {}
    for shard in base.shard_files:
        entries = []
        for name in base.tensor_names_in(shard):
            src_dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}.get(base.tensor_dtype(name))
            out_dtype = dtype if src_dtype is not None else None
            if out_dtype is None:
                raise MergeError(f"{base.path / shard}: tensor {name} has dtype {base.tensor_dtype(name)}; hubtool merges float16/bfloat16/float32 checkpoints only (is the base quantized?)")
            shape = adapter.shape(adapter.replacements[name]) if name in adapter.replacements else base.tensor_shape(name)
            if name in adapter.replacements:
                base_shape = base.tensor_shape(name)
                if shape[1:] != base_shape[1:]:
                    raise MergeError(f"{adapter.path}: saved {name} is {shape}, base is {base_shape}; only the vocabulary dimension may differ")
            entries.append((name, out_dtype, shape))
        plan[shard] = entries
    last = base.shard_files[-1]
    for name in new_tensors:
        plan[last].append((name, dtype, adapter.shape(adapter.replacements[name])))
    # Vocabulary resized by the adapter (added tokens): embeddings/head come whole from the adapter.
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        if key in adapter.replacements:
            vocab = adapter.shape(adapter.replacements[key])[0]
            if vocab != base.config.get("vocab_size"):
                config_changes["vocab_size"] = vocab
    for name, mod in adapter.modules.items():
        shape = next(s for entries in plan.values() for n, _, s in entries if n == name)
        b_shape, a_shape = adapter.shape(mod.b_key), adapter.shape(mod.a_key)  # type: ignore[arg-type]
        delta_shape = [a_shape[1], b_shape[0]] if (mod.embedding or adapter.fan_in_fan_out) else [b_shape[0], a_shape[1]]
        if delta_shape != list(shape):
            raise MergeError(
                f"{adapter.path}: shape mismatch for {name}: adapter gives {delta_shape}, base is {list(shape)}; "
                "was this adapter trained on a different base model?"
            )
    return plan, config_changes


def _header_sha256(path: Path) -> str:
    """Fingerprint of a shard's safetensors header (names, dtypes, shapes, offsets) without reading GBs."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return hashlib.sha256(f.read(n)).hexdigest()


def _provenance(base: ModelDir, adapter: Adapter, dtype: str, rope: RopeScaling | None) -> dict[str, Any]:
    adapter_files = sorted(p for p in adapter.path.iterdir() if p.is_file())
    return {
        "tool": "hubtool",
        "version": __version__,
        "operation": "merge",
        "dtype": dtype,
        "rope": None if rope is None else {"type": rope.rope_type, "factor": rope.factor, **rope.extra},
        "base": {
            "name": base.path.name,
            "config_sha256": sha256_file(base.path / "config.json"),
            "shards": [
                {"file": s, "size": (base.path / s).stat().st_size, "header_sha256": _header_sha256(base.path / s)}
                for s in base.shard_files
            ],
        },
        "adapter": {
            "name": adapter.path.name,
            "files": {p.name: sha256_file(p) for p in adapter_files},
            "config": {k: adapter.config.get(k) for k in ("r", "lora_alpha", "use_rslora", "use_dora", "target_modules", "modules_to_save", "rank_pattern", "alpha_pattern", "fan_in_fan_out", "base_model_name_or_path")},
        },
    }


def _copy_aux(base: ModelDir, adapter_dir: Path, out: Path) -> None:
    """Tokenizer from the adapter when it has one (added tokens), else the base; card likewise."""
    adapter_has_tokenizer = any((adapter_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))
    tok_src = adapter_dir if adapter_has_tokenizer else base.path
    for name in TOKENIZER_FILES:
        if (tok_src / name).is_file():
            shutil.copy2(tok_src / name, out / name)
    extra_dir = tok_src / "additional_chat_templates"
    if extra_dir.is_dir():
        shutil.copytree(extra_dir, out / "additional_chat_templates")
    for name in ("generation_config.json", "README.md"):
        src = adapter_dir / name if (adapter_dir / name).is_file() else base.path / name
        if src.is_file():
            shutil.copy2(src, out / name)


def resolve_rope(base_config: dict[str, Any], adapter_dir: Path, rope: RopeScaling | str | None) -> RopeScaling | None:
    """Explicit --rope wins; else a scaling recorded in the adapter folder's config.json (training runs save one)."""
    from hubtool.rope import parse_rope_arg

    if isinstance(rope, str):
        return parse_rope_arg(rope, original_ctx=base_context(base_config))
    if rope is not None:
        return rope
    cfg = adapter_dir / "config.json"
    if cfg.is_file():
        found = from_config(json.loads(cfg.read_text(encoding="utf-8")), source=str(cfg))
        if found is not None and found != from_config(base_config):
            log(f"RoPE scaling {found.rope_type} x{found.factor:g} taken from {cfg}")
            return found
    return None


def _write_shards(base: ModelDir, adapter: Adapter, plan: dict[str, list[tuple[str, torch.dtype, list[int]]]], tmp: Path) -> tuple[dict[str, str], int]:
    """Compute and stream every output tensor; returns (weight_map, bytes written)."""
    weight_map: dict[str, str] = {}
    written = 0
    items = [(shard, entry) for shard, entries in plan.items() for entry in entries]
    # Reused memory: one fp32 scratch for the merge math, a few output buffers cycling through the writer.
    scratch = torch.empty(0, dtype=torch.float32)
    pool = BufferPool(count=3)
    writer: ShardWriter | None = None
    try:
        for i, (shard, (name, out_dtype, shape)) in enumerate(track(items, description="merging")):
            if i + 1 < len(items) and items[i + 1][1][0] in base.weight_map:
                base.prefetch(items[i + 1][1][0])  # disk reads of the next tensor overlap this one's math
            if writer is None or writer.path.name != shard:
                if writer is not None:
                    writer.close()
                    written += writer.data_bytes
                writer = ShardWriter(tmp / shard, plan[shard])
            source = str(base.path / shard)
            if name in adapter.replacements:
                tensor = adapter.get(adapter.replacements[name])
                source = str(adapter.path / "adapter_model.safetensors")
            else:
                tensor = base.get_tensor(name)  # memory-mapped: pages are read as they are used
                base.close()  # the mmap goes once this tensor is dropped, so touched pages don't pile up in RSS
            mod = adapter.modules.get(name)
            if mod is not None:
                numel = tensor.numel()
                if scratch.numel() < numel:
                    scratch = torch.empty(numel, dtype=torch.float32)
                merged = scratch[:numel].view(tensor.shape)
                _merge_into(adapter, mod, tensor, merged)
                tensor = merged
            _check_range(name, tensor, out_dtype, source, adapter=adapter, mod=mod)
            if tensor.dtype == out_dtype:
                writer.write(name, tensor)
            else:
                out = pool.take(shape, out_dtype)
                out.copy_(tensor)
                writer.write(name, out, on_written=lambda out=out: pool.give(out))
                del out
            weight_map[name] = shard
            del tensor
        assert writer is not None
        writer.close()
        written += writer.data_bytes
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return weight_map, written


def merge_adapter(
    base_dir: Path | str,
    adapter_dir: Path | str,
    out_dir: Path | str,
    *,
    dtype: str = "float16",
    rope: RopeScaling | str | None = None,
    max_position_embeddings: int | None = None,
    overwrite: bool = False,
) -> MergeSummary:
    """Merge a LoRA/DoRA adapter into its base, streaming, into a new model folder at OUT."""
    start = time.monotonic()
    out_dir = Path(out_dir)
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    check_output_free(out_dir, overwrite=overwrite, inputs=(base_dir, adapter_dir))
    base = load_model_dir(base_dir, kind="base model")
    adapter = load_adapter(adapter_dir)
    torch_dtype = DTYPES[dtype]
    scaling = resolve_rope(base.config, adapter.path, rope)
    if max_position_embeddings is not None and scaling is None:
        raise InputError("--max-position-embeddings needs --rope: raising the context without RoPE scaling breaks the model past its trained length")
    plan, config_changes = _plan(base, adapter, torch_dtype)

    config = dict(base.config)
    config.update(config_changes)
    config["dtype"] = dtype
    config["torch_dtype"] = dtype  # transformers 4.x name
    if scaling is not None:
        config = apply_to_config(config, scaling, max_position_embeddings=max_position_embeddings)

    total = sum(len(v) for v in plan.values())
    single = list(plan) == [SAFE_SINGLE]
    with staged_dir(out_dir, overwrite=overwrite, inputs=(base_dir, adapter_dir)) as tmp:
        weight_map, written = _write_shards(base, adapter, plan, tmp)
        if not single:
            index = {"metadata": {"total_size": written}, "weight_map": weight_map}
            (tmp / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _copy_aux(base, adapter.path, tmp)
        provenance = _provenance(base, adapter, dtype, scaling)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return MergeSummary(
        out_dir=out_dir,
        tensors=total,
        merged_modules=len(adapter.modules),
        replaced_tensors=sorted(adapter.replacements),
        bytes_written=written,
        seconds=time.monotonic() - start,
        rope=provenance["rope"],
        config_changes={**config_changes, **({"max_position_embeddings": config["max_position_embeddings"]} if scaling else {})},
    )
