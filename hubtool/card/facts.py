"""What a model folder says about itself: architecture, RoPE scaling, quantization, files.

Cards state these facts from the artifact being published rather than from what the user
remembers, so a card cannot claim 4-bit/32g when the folder holds 8-bit/128g.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubtool.card.prompt_format import read_chat_template
from hubtool.errors import CardError
from hubtool.gguf import facts as gguf_facts
from hubtool.gguf.facts import NOMINAL_BPW as GGUF_NOMINAL_BPW  # noqa: F401  (compose.py and release/plan.py read it here)

GGUF_USE_CASE: dict[str, str] = {
    "F32": "full precision, for re-quantizing",
    "F16": "full precision, for re-quantizing",
    "BF16": "full precision, for re-quantizing",
    "Q8_0": "very large, extremely low quality loss",
    "Q6_K": "very large, extremely low quality loss",
    "Q5_K_M": "large, very low quality loss - recommended",
    "Q5_K_S": "large, low quality loss - recommended",
    "Q5_1": "legacy; prefer Q5_K_M",
    "Q5_0": "legacy; prefer Q4_K_M",
    "Q4_K_M": "medium, balanced quality - recommended",
    "Q4_K_S": "small, greater quality loss",
    "Q4_1": "legacy; prefer Q4_K_M",
    "Q4_0": "legacy; prefer Q4_K_M",
    "Q3_K_L": "small, substantial quality loss",
    "Q3_K_M": "very small, high quality loss",
    "Q3_K_S": "very small, high quality loss",
    "Q2_K": "smallest, significant quality loss - not recommended for most purposes",
}


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json as a dict, {} when the folder has none (a GGUF-only folder)."""
    return _read_json(Path(model_dir) / "config.json") or {}


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CardError(f"{path}: not valid JSON ({exc}); restore it from the model's output folder") from None


def rope_facts(config: dict[str, Any], context_length: int | None = None) -> dict[str, Any] | None:
    """RoPE scaling and the context it buys, or None for unscaled RoPE.

    Reads transformers 5 `rope_parameters` and legacy `rope_scaling`. `max_position_embeddings`
    is taken as the scaled context (what llama.cpp and TGI use as the trained context) unless
    `original_max_position_embeddings` says more.
    """
    params = config.get("rope_parameters") or config.get("rope_scaling")
    if not isinstance(params, dict) or "factor" not in params:
        legacy = config.get("rope_scaling")
        params = legacy if isinstance(legacy, dict) and "factor" in legacy else None
    if not params:
        return None
    rope_type = params.get("rope_type") or params.get("type") or "default"
    try:
        factor = float(params["factor"])
    except (TypeError, ValueError):
        return None
    if rope_type == "default" or factor == 1.0:
        return None
    max_pos = config.get("max_position_embeddings")
    original = params.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
    effective = context_length
    if effective is None:
        candidates = [int(v) for v in (max_pos, original * factor if original else None) if v]
        effective = max(candidates) if candidates else None
    base = original or (int(max_pos / factor) if max_pos else None)
    return {
        "type": str(rope_type),
        "factor": int(factor) if factor.is_integer() else factor,
        "base_context": int(base) if base else None,
        "effective_context": int(effective) if effective else None,
    }


def gptq_facts(model_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The GPTQ settings saved with the checkpoint (config.json quantization_config or quantize_config.json)."""
    side = _read_json(Path(model_dir) / "quantize_config.json")
    side = side if isinstance(side, dict) else {}
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or str(qc.get("quant_method", "gptq")).lower() != "gptq":
        qc = side or None
    if not isinstance(qc, dict):
        return None
    # hubtool's quantize step records branch and calibration in quantize_config.json "meta"
    meta = side.get("meta") if isinstance(side.get("meta"), dict) else {}
    cal = meta.get("calibration") if isinstance(meta.get("calibration"), dict) else {}
    return {
        "bits": qc.get("bits"),
        "group_size": qc.get("group_size"),
        "desc_act": qc.get("desc_act"),
        "damp_percent": qc.get("damp_percent"),
        "mse": qc.get("mse"),  # hubtool >= issue 18 records the clipping search and group-aware ordering too
        "act_group_aware": qc.get("act_group_aware"),
        "sym": qc.get("sym"),
        "checkpoint_format": qc.get("checkpoint_format"),
        "branch": meta.get("branch"),
        "dataset": cal.get("description") or cal.get("name"),
        "seq_len": cal.get("seq_len"),
        "unquantized": [str(n) for n in meta.get("unquantized") or []],  # decoder weights/experts gptqmodel left in fp16
    }


def adapter_facts(model_dir: Path) -> dict[str, Any] | None:
    """LoRA settings from adapter_config.json."""
    ac = _read_json(Path(model_dir) / "adapter_config.json")
    if not isinstance(ac, dict):
        return None
    targets = ac.get("target_modules")
    if isinstance(targets, list):
        targets = sorted(str(t) for t in targets)
    return {
        "peft_type": ac.get("peft_type"),
        "r": ac.get("r"),
        "lora_alpha": ac.get("lora_alpha"),
        "target_modules": targets,
        "base_model_name_or_path": ac.get("base_model_name_or_path"),
    }


gguf_type_from_name = gguf_facts.type_from_name  # compose.py reads it here


def gguf_models(model_dir: Path) -> list[list[Path]]:
    """The GGUF models in a folder, each as its list of files (split models have several); no imatrix files."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(Path(model_dir).glob("*.gguf")):
        if gguf_facts.is_imatrix(path.name):
            continue
        shard = gguf_facts.parse_shard(path.name)
        key = f"{shard.stem}-of-{shard.count:05d}" if shard else path.name
        groups.setdefault(key, []).append(path)
    return list(groups.values())


def gguf_file_facts(path: Path, parts: list[Path] | None = None) -> dict[str, Any]:
    """Type, size and (when the gguf package can read it) exact bits per weight of one GGUF model.

    For a split model PATH is the first part and PARTS all of them: sizes and tensor counts add up.
    """
    path = Path(path)
    parts = [Path(p) for p in parts] if parts else [path]
    size = sum(p.stat().st_size for p in parts)
    shard = gguf_facts.parse_shard(path.name)
    pattern = shard.glob if shard else path.name
    facts: dict[str, Any] = {"file": path.name, "type": gguf_facts.type_from_name(path.name), "size_bytes": size,
                             "parts": len(parts), "download": pattern}
    info = _read_gguf(path)
    if len(parts) > 1 and info.get("n_elements"):
        more = [_read_gguf(p) for p in parts]
        info["n_elements"] = sum(m.get("n_elements") or 0 for m in more)
        info["n_bytes"] = sum(m.get("n_bytes") or 0 for m in more)
    if info.get("n_elements"):
        # over tensor data, as llama.cpp and the quality rows count it (not the file with its tokenizer and metadata)
        facts["bits_per_weight"] = round(info["n_bytes"] * 8 / info["n_elements"], 2)
    for key in ("chat_template", "context_length", "config"):
        if info.get(key):
            facts[key] = info[key]
    if facts["type"] is None and info.get("file_type"):
        facts["type"] = info["file_type"]
    return facts


def _read_gguf(path: Path) -> dict[str, Any]:
    """Tensor element count, chat template and file type from GGUF metadata; {} without the gguf extra or for an unreadable file."""
    try:
        from gguf import Keys  # optional: ships with the gguf extra

        from hubtool.gguf.header import read_header

        header = read_header(path)  # llama.cpp's parser (string arrays, the vocabulary, are not needed here)
    except Exception:
        return {}
    out: dict[str, Any] = {"n_elements": sum(t.n_elements for t in header.tensors), "n_bytes": sum(t.n_bytes for t in header.tensors)}
    values: dict[str, Any] = dict(header.metadata)
    if values.get(Keys.Tokenizer.CHAT_TEMPLATE):
        out["chat_template"] = values[Keys.Tokenizer.CHAT_TEMPLATE]
    if values.get(Keys.General.FILE_TYPE) is not None and (ftype := gguf_facts.file_type_name(values[Keys.General.FILE_TYPE])):
        out["file_type"] = ftype
    arch = values.get(Keys.General.ARCHITECTURE)
    keys = gguf_facts.config_keys(str(arch)) if arch else {}
    config = {name: values[key] for key, name in keys.items() if key in values}
    if config:
        out["config"] = config
        out["context_length"] = config.get("max_position_embeddings")
    return out


def gguf_config(files: list[dict[str, Any]]) -> dict[str, Any]:
    """A config.json-like dict from the first readable GGUF file (a folder without config.json)."""
    for f in files:
        cfg = dict(f.get("config") or {})
        if not cfg:
            continue
        if cfg.get("rope_factor"):
            cfg["rope_scaling"] = {"rope_type": cfg.pop("rope_type", "linear"), "factor": cfg.pop("rope_factor")}
            if cfg.get("original_max_position_embeddings"):
                cfg["rope_scaling"]["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
        return cfg
    return {}


def weights_size(model_dir: Path) -> int | None:
    """Bytes of safetensors weights in the folder."""
    files = list(Path(model_dir).glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) if files else None


def kv_cache_bytes(config: dict[str, Any], context: int) -> int | None:
    """f16 K+V cache for `context` tokens: what llama.cpp allocates on top of the weights."""
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return 2 * layers * context * kv_heads * head_dim * 2


def model_facts(model_dir: Path) -> dict[str, Any]:
    """Everything the card renderer reads from MODEL_DIR, in one dict."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CardError(f"{model_dir}: model directory not found; pass the folder the card describes")
    ggufs = [gguf_file_facts(group[0], group) for group in gguf_models(model_dir)]
    config = read_config(model_dir) or gguf_config(ggufs)
    chat_template = read_chat_template(model_dir)
    if chat_template is None:
        chat_template = next((g["chat_template"] for g in ggufs if g.get("chat_template")), None)
    archs = config.get("architectures") or []
    return {
        "config": config,
        "architecture": archs[0] if archs else None,
        "model_type": config.get("model_type"),
        "max_position_embeddings": config.get("max_position_embeddings"),
        "gptq": gptq_facts(model_dir, config),
        "adapter": adapter_facts(model_dir),
        "gguf_files": ggufs,
        "chat_template": chat_template,
        "weights_size": weights_size(model_dir),
    }
