"""Quantize a model folder to GPTQ with gptqmodel, then rewrite the output into the clean standard
format that transformers/optimum, vLLM, TGI and ExLlama all read:

* weights: `qweight` int32 [in/8·bits/4, out], `qzeros` int32 [groups, out/8] (v1 zero points),
  `scales` fp16 [groups, out], `g_idx` int32 [in] for every quantized Linear;
* `config.json` = the source config (RoPE scaling in both key styles survives untouched) plus a
  `quantization_config` with `quant_method: gptq`, `checkpoint_format: gptq`;
* `quantize_config.json` with the same settings and a `meta` block recording the preset and the
  calibration used (gptqmodel's own `meta` holds a temp path and machine details: dropped);
* tokenizer, chat template and generation_config copied from the source.

gptqmodel quantizes layer by layer (one decoder block on the accelerator at a time), so GPU
memory need is about one block; host RAM holds the fp16 model (see README). It runs in a child
process (gptq/worker.py): its loader patches transformers process-wide.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from hubtool import __version__
from hubtool.atomic import check_output_free, staged_dir
from hubtool.errors import InputError, QuantizeError
from hubtool.gptq.calibration import calibration_dataset
from hubtool.gptq.presets import GPTQPreset
from hubtool.machine import threads
from hubtool.model_dir import SAFE_INDEX, load_model_dir, read_json
from hubtool import progress
from hubtool.progress import log, stdout_to_stderr

QUANTIZE_CONFIG = "quantize_config.json"


def resolve_device(device: str | None) -> str:
    """'cuda' when present (or asked for), else 'cpu'; asking for a missing GPU is a clear error."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu") and not device.startswith("cuda:"):
        raise InputError(f"--device {device}: expected cuda, cuda:N or cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU visible to torch; use --device cpu or install a CUDA build of torch")
    return device


def compute_dtype(device: str) -> Any:
    """fp16 on GPUs; fp32 on CPU, where fp16 matmuls are ~50x slower (measured: 68 s vs 0.85 s).

    The checkpoint is fp16 either way: scales come out fp16 and other tensors are cast on save.
    """
    import torch

    return torch.float32 if device == "cpu" else torch.float16


def quantization_config(preset: GPTQPreset) -> dict[str, Any]:
    """The `quantization_config` block loaders read (standard GPTQ, v1 zero points)."""
    return {
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "bits": preset.bits,
        "group_size": preset.group_size,
        "desc_act": preset.desc_act,
        "sym": preset.sym,
        "damp_percent": preset.damp_percent,
        "damp_auto_increment": preset.damp_auto_increment,
        "mse": preset.mse,
        "act_group_aware": preset.act_group_aware,
        "true_sequential": preset.true_sequential,
        "static_groups": preset.static_groups,
        "lm_head": False,
        "pack_dtype": "int32",
    }


def gptqmodel_options(preset: GPTQPreset) -> dict[str, Any]:
    """The QuantizeConfig arguments for PRESET: every setting explicit, so gptqmodel's own defaults
    (act_group_aware on, damp 0.05) never decide a weight. None of them changes the tensor layout:
    the output stays `checkpoint_format: gptq` (v1 zero points), which `_write_clean` records."""
    return dict(
        bits=preset.bits,
        group_size=preset.group_size,
        desc_act=preset.desc_act,
        # GAR processes groups in importance order but keeps each column in its natural group
        # (g_idx = i // group_size): a standard desc_act=false checkpoint. gptqmodel forbids it with desc_act.
        act_group_aware=preset.act_group_aware,
        sym=preset.sym,
        damp_percent=preset.damp_percent,
        damp_auto_increment=preset.damp_auto_increment,
        mse=preset.mse,
        true_sequential=preset.true_sequential,
        static_groups=preset.static_groups,
    )


@contextlib.contextmanager
def _gptqmodel_logs_in(folder: Path) -> Iterator[None]:
    """gptqmodel 7.6 writes per-run logs to ./logs in the caller's cwd; keep them inside our temp output."""
    try:
        from gptqmodel.looper import loop_processor
    except ImportError:  # layout changed: nothing to redirect
        yield
        return
    saved = loop_processor._PROJECT_LOG_DIR
    loop_processor._PROJECT_LOG_DIR = folder
    try:
        yield
    finally:
        loop_processor._PROJECT_LOG_DIR = saved


def _gptqmodel() -> Any:
    # gptqmodel sizes its CPU worker pool at import; below 2 workers it fails on small machines.
    cpus = threads()
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, min(12, (cpus + 1) // 2))))
    try:
        with stdout_to_stderr():  # its import prints a banner
            import gptqmodel
    except ImportError:
        raise InputError('GPTQ needs gptqmodel: pip install "hubtool[gptq]" (gptqmodel 7.6, optimum)') from None
    return gptqmodel


def gptq_model_types() -> dict[str, Any]:
    """config.json `model_type` -> gptqmodel's model definition class, as the installed gptqmodel registers them."""
    _gptqmodel()
    from gptqmodel.models.auto import MODEL_MAP

    return dict(MODEL_MAP)


def _unmatched_modules(definition: Any, weight_names: list[str]) -> list[str]:
    """Decoder modules gptqmodel's definition quantizes that the checkpoint doesn't have under any of their names.

    gptqmodel splits some fused projections (Phi-3's gate_up_proj into gate_proj/up_proj); transformers
    then cannot load the result. Nested (MoE expert) trees and optional/skipped entries are not checked.
    """
    import re

    tree = getattr(definition, "module_tree", None)
    if not isinstance(tree, list) or not tree or not isinstance(tree[-1], dict):
        return []
    prefix = r"\.".join(re.escape(p) for p in tree[:-1] if isinstance(p, str) and p != "#")
    missing = []
    for parent, children in tree[-1].items():
        if not isinstance(children, tuple):
            continue
        parents = parent.split(":")[0].split("|")
        for child in children:
            spec = str(child).split(":")
            if any(flag in ("!", "?") for flag in spec[1:]):
                continue
            names = spec[0].split("|")
            pattern = re.compile(rf"^{prefix}\.\d+\.({'|'.join(map(re.escape, parents))})\.({'|'.join(map(re.escape, names))})\.weight$")
            if not any(pattern.match(n) for n in weight_names):
                missing.append(f"{parents[0]}.{names[0]}")
    return missing


def check_gptq_architecture(config: dict[str, Any], *, source: Path, weight_names: list[str] | None = None) -> str:
    """gptqmodel's definition for this model's `model_type`, or an error naming the architecture.

    gptqmodel would otherwise fall back to guessing the layer tree, which fails (or quantizes the
    wrong modules) an hour into a run; we refuse up front instead.
    """
    model_type = str((config.get("text_config") or {}).get("model_type") or config.get("model_type") or "")
    archs = ", ".join(config.get("architectures") or []) or "unknown architecture"
    supported = gptq_model_types()
    definition = supported.get(model_type.lower()) or supported.get(str(config.get("model_type", "")).lower())
    if definition is not None:
        missing = _unmatched_modules(definition, weight_names or [])
        if weight_names and missing:
            raise InputError(
                f"{Path(source) / 'config.json'}: gptqmodel {_gptqmodel().__version__}'s {definition.__name__} quantizes "
                f"{', '.join(missing)}, which {archs} checkpoints do not have (fused in this layout); its output would not "
                "load in transformers — drop gptq from --quants for this model"
            )
        return definition.__name__
    raise InputError(
        f"{Path(source) / 'config.json'}: {archs} (model_type {model_type or 'missing'!r}) is not supported by the installed "
        f"gptqmodel {_gptqmodel().__version__}; drop gptq from --quants, or pick a model whose type is one of: {', '.join(sorted(supported))}"
    )


def quantize_gptq(
    model_dir: Path,
    out_dir: Path,
    preset: GPTQPreset,
    *,
    calibration: str = "builtin",
    device: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Quantize `model_dir` (fp16/bf16/fp32 safetensors) to a standard GPTQ folder at `out_dir`.

    Returns a summary: the preset fields, the calibration record, size_bytes and seconds.
    """
    from transformers import AutoTokenizer

    # imported here, not at module level: `python -m hubtool.gptq.worker` must not find itself already
    # imported by its package (runpy warns about that on every GPTQ run)
    from hubtool.gptq.worker import GPTQJob, run_gptq_job

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    source = load_model_dir(model_dir, trust_remote_code=trust_remote_code)
    if source.config.get("quantization_config"):
        raise InputError(f"{model_dir}: already quantized ({source.config['quantization_config'].get('quant_method', '?')}); quantize the fp16 model")
    check_output_free(out_dir, overwrite=overwrite, inputs=(model_dir,))
    dev = resolve_device(device)

    check_gptq_architecture(source.config, source=model_dir, weight_names=source.tensor_names())
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=source.remote_code)
    examples, cal_desc = calibration_dataset(calibration, tokenizer, preset.samples, preset.seq_len)
    log(f"gptq: {preset.label} on {dev}, {cal_desc['samples']}x{preset.seq_len} calibration tokens ({cal_desc['source']})")

    start = time.monotonic()
    with staged_dir(out_dir, overwrite=overwrite, inputs=(model_dir,)) as tmp:
        raw = tmp / ".gptqmodel-raw"
        job = GPTQJob(
            model_dir=str(model_dir), raw_dir=str(raw), offload_dir=str(tmp / ".gptqmodel-offload"),
            log_dir=str(tmp / ".gptqmodel-logs"), device=dev,
            quantize_config=gptqmodel_options(preset), mse_grid=preset.mse_grid,
            # finished layers spill to disk beside the output (not /tmp, often a small tmpfs); removed with it
            examples=examples, trust_remote_code=source.remote_code, quiet=progress.library_output_discarded(),
        )
        used = run_gptq_job(job, tmp)
        seconds = time.monotonic() - start
        _check_settings_used(job.quantize_config, used)
        _check_raw_format(raw)
        unquantized = _unquantized(source, raw)
        if unquantized:
            log(f"gptq: warning: {len(unquantized)} decoder weight(s) left unquantized by gptqmodel: {', '.join(unquantized[:8])}"
                + (" …" if len(unquantized) > 8 else "") + " (recorded in quantize_config.json and the card)")
        _write_clean(raw, tmp, source, preset, cal_desc, unquantized)
        shutil.rmtree(raw)
        shutil.rmtree(tmp / ".gptqmodel-offload", ignore_errors=True)
        shutil.rmtree(tmp / ".gptqmodel-logs", ignore_errors=True)
        size = sum(p.stat().st_size for p in tmp.glob("*.safetensors"))
    log(f"gptq: wrote {out_dir} ({size / 1e6:.1f} MB) in {seconds:.0f} s")
    return {
        "preset": preset.to_dict(),
        "calibration": cal_desc,
        "device": dev.split(":")[0],
        "size_bytes": size,
        "seconds": round(seconds, 1),
        "out_dir": str(out_dir),
        "gptqmodel_settings": used,
    }


def _check_settings_used(asked: dict[str, Any], used: dict[str, Any]) -> None:
    """Every setting of the preset must be what gptqmodel's QuantizeConfig holds: the card records the
    preset, so a setting gptqmodel silently dropped or resolved differently would make the card wrong."""
    differ = [f"{k} {asked[k]!r} -> {used.get(k)!r}" for k in asked if used.get(k) != asked[k]]
    if differ:
        raise QuantizeError(f"gptqmodel changed the preset's settings ({'; '.join(differ)}); the card would misdescribe the "
                            "weights — adjust the preset, or report this with `hubtool --version`")


def _check_raw_format(raw: Path) -> None:
    """gptqmodel must have written v1 GPTQ tensors: `_write_clean` declares `checkpoint_format: gptq`,
    and a v2 (or other) layout under that label would load with off-by-one zero points everywhere."""
    path = raw / QUANTIZE_CONFIG
    conf = read_json(path) if path.is_file() else {}
    found = {str(conf[k]).lower() for k in ("checkpoint_format", "format") if k in conf}
    if found != {"gptq"}:
        raise QuantizeError(f"gptqmodel wrote format {', '.join(sorted(found)) or '(none)'} instead of gptq (v1); "
                            "hubtool publishes only the standard layout — report this with `hubtool --version`")


def _unquantized(source: Any, raw: Path) -> list[str]:
    """Decoder Linear weights (MoE experts included) that gptqmodel left in floating point.

    gptqmodel may rename (Mixtral w1 -> gate_proj) or split (gate_up_proj) modules, so experts are
    matched by layer and expert index, other weights by their module name.
    """
    import re

    from safetensors import safe_open

    quantized: set[str] = set()
    for shard in raw.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as f:
            quantized |= {k[: -len(".qweight")] for k in f.keys() if k.endswith(".qweight")}
    expert_re = re.compile(r"\.layers\.(\d+)\..*?experts\.(\d+)\.")
    quant_experts = {(m.group(1), m.group(2)) for n in quantized if (m := expert_re.search(n + "."))}
    missing = []
    for name in source.tensor_names():
        if ".layers." not in name or not name.endswith(".weight") or len(source.tensor_shape(name)) != 2:
            continue
        m = expert_re.search(name)
        if m:
            if (m.group(1), m.group(2)) not in quant_experts:
                missing.append(f"layer {m.group(1)} expert {m.group(2)}")
        elif name.endswith("proj.weight") and name[: -len(".weight")] not in quantized and not any(q.startswith(name.rsplit(".", 2)[0] + ".") for q in quantized):
            missing.append(name[: -len(".weight")])
    return list(dict.fromkeys(missing))


def _write_clean(raw: Path, out: Path, source: Any, preset: GPTQPreset, cal_desc: dict[str, Any], unquantized: list[str] | None = None) -> None:
    """Keep gptqmodel's tensors, write our own configs, carry the source's tokenizer and generation files."""
    import torch
    from safetensors import safe_open

    from hubtool.merge.shard_writer import DTYPE_NAMES, ShardWriter

    shards = sorted(raw.glob("*.safetensors"))
    if not shards:
        raise QuantizeError(f"gptqmodel wrote no safetensors into its output; see the log above")
    for shard in shards:
        # Re-save with a clean header: gptqmodel's metadata may carry versions/paths we do not publish.
        # One tensor at a time (a 70B checkpoint is one ~35 GB shard), not the whole shard in RAM.
        with safe_open(str(shard), framework="pt") as f:
            names = sorted(f.keys())
            plan = []
            for name in names:
                sl = f.get_slice(name)
                dtype = {v: k for k, v in DTYPE_NAMES.items()}[sl.get_dtype()]
                plan.append((name, torch.float16 if dtype.is_floating_point else dtype, list(sl.get_shape())))
            writer = ShardWriter(out / shard.name, plan)
            try:
                for name in names:
                    writer.write(name, _as_fp16(name, f.get_tensor(name)))
            except BaseException:
                writer.abort()
                raise
            writer.close()
    if (raw / SAFE_INDEX).is_file():
        index = json.loads((raw / SAFE_INDEX).read_text(encoding="utf-8"))
        clean_index = {"metadata": {"total_size": sum((out / s.name).stat().st_size for s in shards)}, "weight_map": index["weight_map"]}
        (out / SAFE_INDEX).write_text(json.dumps(clean_index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    qconf = quantization_config(preset)
    config = dict(source.config)
    config["quantization_config"] = qconf
    config["dtype"] = "float16"
    if "torch_dtype" in config:
        config["torch_dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    import gptqmodel

    meta = {
        "quantizer": [f"hubtool:{__version__}", f"gptqmodel:{gptqmodel.__version__}"],
        "preset": preset.name,
        "branch": preset.branch,
        "calibration": {**cal_desc, "samples": cal_desc["samples"], "seq_len": preset.seq_len},
        # the clipping search's grid is no QuantizeConfig field (hubtool/gptq/search.py): recorded here, not for loaders
        **({"mse_grid": preset.mse_grid} if preset.mse else {}),
        **({"unquantized": unquantized} if unquantized else {}),
    }
    (out / QUANTIZE_CONFIG).write_text(json.dumps({**qconf, "meta": meta}, indent=2) + "\n", encoding="utf-8")

    for f in source.aux_files():
        dest = out / f.relative_to(source.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)


def _as_fp16(name: str, tensor: Any) -> Any:
    """Unquantized float tensors (embeddings, norms, lm_head) stored fp16, as the format expects."""
    import torch

    if not tensor.is_floating_point() or tensor.dtype == torch.float16:
        return tensor
    out = tensor.to(torch.float16)
    if not torch.isfinite(out).all():
        raise QuantizeError(f"{name}: values overflow fp16; this model needs a bf16 GPTQ export, which hubtool does not write")
    return out


def read_gptq_info(quant_dir: Path) -> dict[str, Any]:
    """The quantize_config.json of a hubtool GPTQ folder (settings + meta.preset/branch/calibration), for cards."""
    path = Path(quant_dir) / QUANTIZE_CONFIG
    if not path.is_file():
        raise InputError(f"{quant_dir}: no {QUANTIZE_CONFIG}; point at the output of `hubtool quantize gptq`")
    info = read_json(path)
    if not isinstance(info, dict) or "bits" not in info or "group_size" not in info:
        raise InputError(f"{path}: has no bits/group_size; re-run `hubtool quantize gptq`")
    return info
