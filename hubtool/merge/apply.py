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
from hubtool.merge.adapter import Adapter, LoraModule, load_adapter
from hubtool.atomic import check_output_free, staged_dir
from hubtool.errors import InputError, MergeError
from hubtool.hashing import sha256_file
from hubtool.model_dir import SAFE_INDEX, SAFE_SINGLE, TOKENIZER_FILES, ModelDir, load_model_dir, remote_code_files
from hubtool.progress import log, track
from hubtool.merge.rope import RopeScaling, apply_to_config, base_context, from_config
from hubtool.merge.shard_writer import BufferPool, ShardWriter

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


@dataclass(frozen=True)
class Delta:
    """One low-rank update landing in one base tensor."""

    mod: LoraModule
    expert: int | None = None  # target_parameters LoRA stored per expert on disk: this expert's delta
    rows: tuple[int, int] | None = None  # ... and the rows of it this tensor holds (gate/up halves of gate_up_proj)
    transposed: bool = False  # fused 3-D base tensor stored [experts, in, out]


def _add_delta(adapter: Adapter, d: Delta, w: torch.Tensor) -> None:
    """w += scale·B·A for one delta, in place, in float32."""
    mod = d.mod
    a = adapter.get(mod.a_key).float()  # type: ignore[arg-type]
    b = adapter.get(mod.b_key).float()  # type: ignore[arg-type]
    if not mod.parameter:
        if mod.embedding or adapter.fan_in_fan_out:  # stored transposed: add (B·A)ᵀ = Aᵀ·Bᵀ
            w.addmm_(a.T, b.T, alpha=mod.scale)
        else:
            w.addmm_(b, a, alpha=mod.scale)  # in place: no [out, in] temporary for the delta
        return
    if d.expert is not None:  # one expert's Linear (or a row block of it) in a per-expert checkpoint
        b_e, a_e = mod.expert_factors(a, b, d.expert)
        lo, hi = d.rows if d.rows is not None else (0, b_e.shape[0])
        w.addmm_(b_e[lo:hi], a_e, alpha=mod.scale)
    elif w.dim() == 2:  # a 2-D parameter targeted by name: an ordinary B·A
        w.addmm_(b, a, alpha=mod.scale)
    else:
        for e in range(mod.experts):
            b_e, a_e = mod.expert_factors(a, b, e)
            (w[e].T if d.transposed else w[e]).addmm_(b_e, a_e, alpha=mod.scale)


def _merge_into(adapter: Adapter, deltas: list[Delta], weight: torch.Tensor, w: torch.Tensor) -> None:
    """w ← W + Σ scale·B·A in float32 (w: a reused fp32 buffer shaped like W; shapes checked by _plan).
    DoRA then rescales each output row to its learned magnitude."""
    w.copy_(weight)
    for d in deltas:
        _add_delta(adapter, d, w)
        mod = d.mod
        if mod.magnitude_key is not None:
            if mod.embedding:
                raise MergeError(f"{adapter.path}: DoRA on embedding {mod.module} is not supported")
            magnitude = adapter.get(mod.magnitude_key).float()
            rows = w.T if adapter.fan_in_fan_out else w
            norm = torch.linalg.vector_norm(rows, dim=1)
            rows.mul_((magnitude / norm).unsqueeze(1))


# A trained LoRA nudges its base weights: a merged tensor whose largest value is this many times the
# base tensor's (floor 0.01) comes from a corrupt or mis-scaled adapter, not from fine-tuning.
UPDATE_RATIO_MAX = 100.0


def _check_range(name: str, t: torch.Tensor, dtype: torch.dtype, source: str, *, adapter: Adapter, mod: LoraModule | None,
                 base_peak: float | None = None) -> None:
    """Refuse NaN/Inf, updates out of all proportion to the base weights (blaming the adapter), and values
    float16 can't hold. aminmax is one fast pass and propagates NaN."""
    lo, hi = (float(v) for v in torch.aminmax(t))
    weights = adapter.path / "adapter_model.safetensors"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = _nonfinite_factor(adapter, mod) if mod is not None else None
        if bad:
            raise MergeError(f"{adapter.path}: adapter tensor {bad} contains NaN/Inf; the adapter is corrupt or training diverged")
        if mod is not None and base_peak is not None and math.isfinite(base_peak):
            raise MergeError(f"{weights}: the update to {name} ({mod.module}, scale {mod.scale:g}) overflows to Inf; the adapter's "
                             "factors or lora_alpha are far off (corrupt or mis-scaled), re-save it or fix lora_alpha in adapter_config.json")
        raise MergeError(f"{source}: tensor {name} has NaN/Inf values; the input is corrupt or training diverged")
    peak = max(hi, -lo)
    if mod is not None and base_peak is not None and peak > UPDATE_RATIO_MAX * max(base_peak, 0.01):
        raise MergeError(f"{weights}: the update to {name} ({mod.module}, scale {mod.scale:g}) reaches {peak:.4g}, "
                         f"{peak / max(base_peak, 1e-30):.3g}x the base tensor's largest value {base_peak:.4g}; the adapter's factors or "
                         "lora_alpha are far off (corrupt or mis-scaled), re-save it or fix lora_alpha in adapter_config.json")
    if dtype == torch.float16 and max(hi, -lo) > FP16_MAX:
        raise MergeError(
            f"{source}: tensor {name} has values up to {max(hi, -lo):.4g}, beyond float16's ±{FP16_MAX:.0f}; merge with --dtype bfloat16"
        )


@dataclass
class MergePlan:
    """Everything the merge will write, validated from headers before any tensor is computed."""

    layout: dict[str, list[tuple[str, torch.dtype, list[int]]]]  # shard -> (name, dtype, shape)
    config_changes: dict[str, Any]
    deltas: dict[str, list[Delta]]  # output tensor -> low-rank updates added to it
    replacements: dict[str, str]  # output tensor -> adapter key saved whole (modules_to_save, resized vocab)
    sources: dict[str, str]  # output tensor -> the base tensor it starts from (itself, unless a copy)
    notes: list[str] = field(default_factory=list)


def _missing(adapter: Adapter, names: list[str], base: ModelDir) -> MergeError:
    return MergeError(
        f"{adapter.path}: adapter targets {names[0]}"
        + (f" (+{len(names) - 1} more)" if len(names) > 1 else "")
        + f", which the base model at {base.path} does not have; use the base model the adapter was trained on"
    )


def _resolve_deltas(base: ModelDir, adapter: Adapter) -> dict[str, list[Delta]]:
    """Base tensor -> the LoRA updates it receives, for plain modules and `target_parameters` experts alike."""
    from hubtool.expert_layout import disk_name, per_expert_slices

    deltas: dict[str, list[Delta]] = {}
    missing: list[str] = []
    for mod in adapter.modules.values():
        name = mod.weight_name
        a_shape, b_shape = adapter.shape(mod.a_key), adapter.shape(mod.b_key)  # type: ignore[arg-type]
        if not mod.parameter:
            if name not in base.weight_map:
                missing.append(name)
                continue
            shape = base.tensor_shape(name)
            delta_shape = [a_shape[1], b_shape[0]] if (mod.embedding or adapter.fan_in_fan_out) else [b_shape[0], a_shape[1]]
            if delta_shape != shape:
                raise MergeError(f"{adapter.path}: shape mismatch for {name}: adapter gives {delta_shape}, base is {shape}; "
                                 "was this adapter trained on a different base model?")
            deltas.setdefault(name, []).append(Delta(mod))
            continue
        out_rows, in_cols = b_shape[0], a_shape[1]
        model_type = str(base.config.get("model_type", ""))
        name = disk_name(model_type, name, lambda n: n in base.weight_map) or name
        if name in base.weight_map:  # the checkpoint stores the (fused) parameter itself
            shape = base.tensor_shape(name)
            if mod.experts == 1 and shape == [out_rows, in_cols]:
                deltas.setdefault(name, []).append(Delta(mod))
            elif shape == [mod.experts, out_rows, in_cols] or shape == [mod.experts, in_cols, out_rows]:
                deltas.setdefault(name, []).append(Delta(mod, transposed=shape != [mod.experts, out_rows, in_cols]))
            else:
                raise MergeError(f"{adapter.path}: {name} (target_parameters) gives {mod.experts} experts of [{out_rows}, {in_cols}], "
                                 f"base is {shape}; was this adapter trained on a different base model?")
            continue
        slices = per_expert_slices(model_type, name, mod.experts, out_rows, has=lambda n: n in base.weight_map,
                                   rows_of=lambda n: base.tensor_shape(n)[0])
        if slices is None:
            raise MergeError(
                f"{adapter.path}: adapter trains expert parameter {name} (target_parameters, {mod.experts} experts); "
                f"the base checkpoint at {base.path} stores it neither fused nor in a per-expert layout that transformers' "
                f"conversion mapping for model_type {model_type!r} describes; merge with PEFT's merge_and_unload instead"
            )
        for sl in slices:
            shape = base.tensor_shape(sl.name)
            if shape != [sl.row_end - sl.row_start, in_cols]:
                raise MergeError(f"{adapter.path}: {name} expert {sl.expert} maps to {sl.name} {shape}, expected "
                                 f"[{sl.row_end - sl.row_start}, {in_cols}]; was this adapter trained on a different base model?")
            deltas.setdefault(sl.name, []).append(Delta(mod, expert=sl.expert, rows=(sl.row_start, sl.row_end)))
    if missing:
        raise _missing(adapter, missing, base)
    return deltas


def _embedding_names(base: ModelDir) -> tuple[str | None, str]:
    """(input embedding tensor, output head tensor) as this checkpoint names them."""
    embed = next((n for n in base.weight_map if n.endswith(("embed_tokens.weight", ".wte.weight", "word_embeddings.weight"))), None)
    head = next((n for n in ("lm_head.weight", "output.weight") if n in base.weight_map), "lm_head.weight")
    return embed, head


def _plan(base: ModelDir, adapter: Adapter, dtype: torch.dtype) -> MergePlan:
    """Output layout per shard (names, dtypes, shapes), updates per tensor and config changes, validated before writing."""
    deltas = _resolve_deltas(base, adapter)
    replacements = dict(adapter.replacements)
    sources = {n: n for n in base.weight_map}
    config_changes: dict[str, Any] = {}
    notes: list[str] = []
    n_expert = sum(1 for m in adapter.modules.values() if m.parameter)
    if n_expert:
        notes.append(f"{n_expert} target_parameters LoRA(s) on expert weights -> {sum(1 for ds in deltas.values() for d in ds if d.mod.parameter)} base tensors")

    # Tied embeddings: the head is the embedding, so whatever the adapter does to one must be decided for the other.
    embed, head = _embedding_names(base)
    tied = bool(base.config.get("tie_word_embeddings", head not in base.weight_map))
    head_touched = head in replacements or head in deltas
    if tied and embed is not None and not head_touched and (embed in deltas or embed in replacements):
        same_vocab = embed not in replacements or adapter.shape(replacements[embed])[0] == base.tensor_shape(embed)[0]
        if embed in replacements and embed not in deltas and same_vocab and not adapter.config.get("ensure_weight_tying", False):
            # modules_to_save on a tied embedding trains a copy; the head kept the original weights (PEFT's
            # merge_and_unload leaves them so). Untie and keep that head, rather than silently swapping it.
            config_changes["tie_word_embeddings"] = False
            sources[head] = embed
            notes.append(f"modules_to_save on tied {embed}: untied, {head} keeps the base embedding as trained")
        else:
            # LoRA on a tied embedding changes the shared matrix: the head changes with it (PEFT merges the same way).
            if head in base.weight_map:  # a redundant stored copy of the head must not stay stale
                deltas[head] = list(deltas.get(embed, []))
                if embed in replacements:
                    replacements[head] = replacements[embed]
            notes.append(f"tied embeddings: {head} follows the merged {embed}")
    new_tensors = [n for n in replacements if n not in base.weight_map]
    for name in new_tensors:
        if name == head and tied:
            config_changes["tie_word_embeddings"] = False  # the adapter trained its own head: untie
            notes.append(f"adapter saves its own {head}: untied")
        else:
            raise MergeError(f"{adapter.path}: adapter saves a full {name} but the base model has no such tensor; use the matching base model")
    layout: dict[str, list[tuple[str, torch.dtype, list[int]]]] = {}
    for shard in base.shard_files:
        entries = []
        for name in base.tensor_names_in(shard):
            src_dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}.get(base.tensor_dtype(name))
            if src_dtype is None:
                raise MergeError(f"{base.path / shard}: tensor {name} has dtype {base.tensor_dtype(name)}; hubtool merges float16/bfloat16/float32 checkpoints only (is the base quantized?)")
            shape = adapter.shape(replacements[name]) if name in replacements else base.tensor_shape(name)
            if name in replacements:
                base_shape = base.tensor_shape(name)
                if shape[1:] != base_shape[1:]:
                    raise MergeError(f"{adapter.path}: saved {name} is {shape}, base is {base_shape}; only the vocabulary dimension may differ")
            entries.append((name, dtype, shape))
        layout[shard] = entries
    last = base.shard_files[-1]
    for name in new_tensors:
        layout[last].append((name, dtype, adapter.shape(replacements[name])))
    if sources.get(head, head) != head and head not in base.weight_map:
        layout[last].append((head, dtype, base.tensor_shape(sources[head])))
    # Vocabulary resized by the adapter (added tokens): embeddings/head come whole from the adapter.
    for key in (embed, head):
        if key is not None and key in replacements:
            vocab = adapter.shape(replacements[key])[0]
            if vocab != base.config.get("vocab_size"):
                config_changes["vocab_size"] = vocab
    for name, ds in deltas.items():
        if name in replacements and ds and not ds[0].mod.embedding:
            raise MergeError(f"{adapter.path}: {name} is both saved whole (modules_to_save) and LoRA-adapted; re-save the adapter")
    return MergePlan(layout, config_changes, deltas, replacements, sources, notes)


def check_merge(base_dir: Path | str, adapter_dir: Path | str, *, dtype: str = "float16", trust_remote_code: bool = False) -> str:
    """Plan-time check: the adapter maps onto the base (plain, fused, tied and expert layouts), from headers only."""
    base = load_model_dir(base_dir, kind="base model", trust_remote_code=trust_remote_code)
    adapter = load_adapter(adapter_dir, base_dir=base.path, trust_remote_code=trust_remote_code)
    plan = _plan(base, adapter, DTYPES.get(dtype, torch.float16))
    base.close()
    n = sum(len(ds) for ds in plan.deltas.values())
    text = f"{len(adapter.modules)} LoRA module(s) -> {n} update(s) in {len(plan.deltas)} base tensor(s)"
    if plan.replacements:
        text += f", {len(plan.replacements)} saved whole"
    return "; ".join([text, *plan.notes])


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
    for code in remote_code_files(base.path, base.config):  # custom-code models load only with their modules
        if not (out / code.name).exists():
            shutil.copy2(code, out / code.name)
    extra_dir = tok_src / "additional_chat_templates"
    if extra_dir.is_dir():
        shutil.copytree(extra_dir, out / "additional_chat_templates")
    for name in ("generation_config.json", "README.md"):
        src = adapter_dir / name if (adapter_dir / name).is_file() else base.path / name
        if src.is_file():
            shutil.copy2(src, out / name)


def resolve_rope(base_config: dict[str, Any], adapter_dir: Path, rope: RopeScaling | str | None) -> RopeScaling | None:
    """Explicit --rope wins; else a scaling recorded in the adapter folder's config.json (training runs save one)."""
    from hubtool.merge.rope import parse_rope_arg

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


def _write_shards(base: ModelDir, adapter: Adapter, mplan: MergePlan, tmp: Path) -> tuple[dict[str, str], int]:
    """Compute and stream every output tensor; returns (weight_map, bytes written)."""
    plan = mplan.layout
    weight_map: dict[str, str] = {}
    written = 0
    items = [(shard, entry) for shard, entries in plan.items() for entry in entries]
    # Reused memory: one fp32 scratch for the merge math, a few output buffers cycling through the writer.
    scratch = torch.empty(0, dtype=torch.float32)
    pool = BufferPool(count=3)
    writer: ShardWriter | None = None
    try:
        for i, (shard, (name, out_dtype, shape)) in enumerate(track(items, description="merging")):
            nxt = mplan.sources.get(items[i + 1][1][0]) if i + 1 < len(items) else None
            if nxt is not None:
                base.prefetch(nxt)  # disk reads of the next tensor overlap this one's math
            if writer is None or writer.path.name != shard:
                if writer is not None:
                    writer.close()
                    written += writer.data_bytes
                writer = ShardWriter(tmp / shard, plan[shard])
            source = str(base.path / shard)
            if name in mplan.replacements:
                tensor = adapter.get(mplan.replacements[name])
                source = str(adapter.path / "adapter_model.safetensors")
            else:
                tensor = base.get_tensor(mplan.sources[name])  # memory-mapped: pages are read as they are used
                base.close()  # the mmap goes once this tensor is dropped, so touched pages don't pile up in RSS
            deltas = mplan.deltas.get(name, [])
            mod = deltas[0].mod if deltas else None
            base_peak = None
            if deltas:
                base_peak = float(tensor.abs().max()) if tensor.numel() else 0.0
                numel = tensor.numel()
                if scratch.numel() < numel:
                    scratch = torch.empty(numel, dtype=torch.float32)
                merged = scratch[:numel].view(tensor.shape)
                _merge_into(adapter, deltas, tensor, merged)
                tensor = merged
            _check_range(name, tensor, out_dtype, source, adapter=adapter, mod=mod, base_peak=base_peak)
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
    trust_remote_code: bool = False,
) -> MergeSummary:
    """Merge a LoRA/DoRA adapter into its base, streaming, into a new model folder at OUT."""
    start = time.monotonic()
    out_dir = Path(out_dir)
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    check_output_free(out_dir, overwrite=overwrite, inputs=(base_dir, adapter_dir))
    base = load_model_dir(base_dir, kind="base model", trust_remote_code=trust_remote_code)
    adapter = load_adapter(adapter_dir, base_dir=base.path, trust_remote_code=trust_remote_code)
    torch_dtype = DTYPES[dtype]
    scaling = resolve_rope(base.config, adapter.path, rope)
    if max_position_embeddings is not None and scaling is None:
        raise InputError("--max-position-embeddings needs --rope: raising the context without RoPE scaling breaks the model past its trained length")
    mplan = _plan(base, adapter, torch_dtype)
    plan, config_changes = mplan.layout, mplan.config_changes
    for note in mplan.notes:
        log(f"merge: {note}")

    config = dict(base.config)
    config.update(config_changes)
    config["dtype"] = dtype
    config["torch_dtype"] = dtype  # transformers 4.x name
    if scaling is not None:
        config = apply_to_config(config, scaling, max_position_embeddings=max_position_embeddings)

    total = sum(len(v) for v in plan.values())
    single = list(plan) == [SAFE_SINGLE]
    with staged_dir(out_dir, overwrite=overwrite, inputs=(base_dir, adapter_dir)) as tmp:
        weight_map, written = _write_shards(base, adapter, mplan, tmp)
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
