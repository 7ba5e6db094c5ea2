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
memory need is about one block; host RAM holds the fp16 model (see README).
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
from hubtool.model_dir import SAFE_INDEX, load_model_dir, read_json
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
        "true_sequential": preset.true_sequential,
        "static_groups": preset.static_groups,
        "lm_head": False,
        "pack_dtype": "int32",
    }


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
    cpus = os.cpu_count() or 1
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, min(12, (cpus + 1) // 2))))
    try:
        with stdout_to_stderr():  # its import prints a banner
            import gptqmodel
    except ImportError:
        raise InputError('GPTQ needs gptqmodel: pip install "hubtool[gptq]" (gptqmodel 7.6, optimum)') from None
    return gptqmodel


def quantize_gptq(
    model_dir: Path,
    out_dir: Path,
    preset: GPTQPreset,
    *,
    calibration: str = "builtin",
    device: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Quantize `model_dir` (fp16/bf16/fp32 safetensors) to a standard GPTQ folder at `out_dir`.

    Returns a summary: the preset fields, the calibration record, size_bytes and seconds.
    """
    import torch
    from transformers import AutoTokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    source = load_model_dir(model_dir)
    if source.config.get("quantization_config"):
        raise InputError(f"{model_dir}: already quantized ({source.config['quantization_config'].get('quant_method', '?')}); quantize the fp16 model")
    check_output_free(out_dir, overwrite=overwrite, inputs=(model_dir,))
    dev = resolve_device(device)
    gptqmodel = _gptqmodel()

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples, cal_desc = calibration_dataset(calibration, tokenizer, preset.samples, preset.seq_len)
    log(f"gptq: {preset.label} on {dev}, {cal_desc['samples']}x{preset.seq_len} calibration tokens ({cal_desc['source']})")

    start = time.monotonic()
    with staged_dir(out_dir, overwrite=overwrite, inputs=(model_dir,)) as tmp:
        raw = tmp / ".gptqmodel-raw"
        try:
            qcfg = gptqmodel.QuantizeConfig(
                bits=preset.bits,
                group_size=preset.group_size,
                desc_act=preset.desc_act,
                act_group_aware=False,  # GAR reorders groups: not the standard format; incompatible with desc_act
                sym=preset.sym,
                damp_percent=preset.damp_percent,
                true_sequential=preset.true_sequential,
                static_groups=preset.static_groups,
                # finished layers spill to disk beside the output (not /tmp, often a small tmpfs); removed with it
                offload_to_disk=True,
                offload_to_disk_path=str(tmp / ".gptqmodel-offload"),
            )
            with stdout_to_stderr(), _gptqmodel_logs_in(tmp / ".gptqmodel-logs"):
                model = gptqmodel.GPTQModel.load(str(model_dir), qcfg, dtype=compute_dtype(dev), device=dev)
                model.quantize(examples, batch_size=1, tokenizer=tokenizer)
                model.save(str(raw))
        except (RuntimeError, ValueError, torch.linalg.LinAlgError) as exc:
            raise QuantizeError(f"{model_dir}: gptqmodel failed ({str(exc).splitlines()[0][:300]}); try more calibration samples or a larger --damp-percent") from None
        del model
        seconds = time.monotonic() - start
        _write_clean(raw, tmp, source, preset, cal_desc)
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
    }


def _write_clean(raw: Path, out: Path, source: Any, preset: GPTQPreset, cal_desc: dict[str, Any]) -> None:
    """Keep gptqmodel's tensors, write our own configs, carry the source's tokenizer and generation files."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shards = sorted(raw.glob("*.safetensors"))
    if not shards:
        raise QuantizeError(f"gptqmodel wrote no safetensors into its output; see the log above")
    for shard in shards:
        # Re-save with a clean header: gptqmodel's metadata may carry versions/paths we do not publish.
        with safe_open(str(shard), framework="pt") as f:
            tensors = {name: _as_fp16(name, f.get_tensor(name)) for name in f.keys()}
        save_file(tensors, str(out / shard.name), metadata={"format": "pt"})
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
