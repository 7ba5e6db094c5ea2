"""A PEFT LoRA adapter folder, indexed by the base-model tensor each piece modifies.

PEFT saves keys like `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`; we map
them back to the base tensor `model.layers.0.self_attn.q_proj.weight` with the scale PEFT would
use (alpha/r, rsLoRA alpha/sqrt(r), per-module rank_pattern / alpha_pattern), so the merge can
walk the *base* checkpoint and look up what to add to each tensor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from hubtool.errors import InputError, MergeError
from hubtool.model_dir import read_json

PREFIX = "base_model.model."
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B|lora_magnitude_vector(?:\.weight)?)$"
)


@dataclass
class LoraModule:
    """One adapted module: delta = scale * B @ A (transposed for embeddings / fan_in_fan_out)."""

    module: str
    a_key: str | None = None
    b_key: str | None = None
    magnitude_key: str | None = None
    embedding: bool = False
    scale: float = 0.0
    rank: int = 0
    alpha: float = 0.0
    parameter: bool = False  # PEFT `target_parameters`: LoRA on a bare (often 3-D expert) parameter named `module`
    experts: int = 1  # parameter LoRA: lora_A is [rank·experts, in], lora_B [out, rank·experts]

    @property
    def weight_name(self) -> str:
        """The base tensor (in-memory parameter name for `target_parameters` LoRA) this module changes."""
        return self.module if self.parameter else f"{self.module}.weight"

    def expert_factors(self, a: torch.Tensor, b: torch.Tensor, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B_e [out, r], A_e [r, in]) of one expert, in PEFT ParamWrapper's layout (A rows expert-major, B columns rank-major)."""
        a_e = a.reshape(self.experts, self.rank, a.shape[-1])[expert]
        b_e = b.reshape(b.shape[0], self.rank, self.experts)[:, :, expert]
        return b_e, a_e


@dataclass
class Adapter:
    path: Path
    config: dict[str, Any]
    modules: dict[str, LoraModule]  # base weight name -> module
    replacements: dict[str, str]  # base tensor name -> adapter key (modules_to_save, resized embeddings)
    fan_in_fan_out: bool = False
    use_dora: bool = False
    _handle: Any = field(default=None, repr=False)

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._handle.get_tensor(key)
        except SafetensorError as exc:
            raise InputError(f"{self.path / 'adapter_model.safetensors'}: cannot read {key!r} ({exc}); the file is corrupt") from None

    def shape(self, key: str) -> list[int]:
        return list(self._handle.get_slice(key).get_shape())


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's own rank_pattern/alpha_pattern matching, so we agree with merge_and_unload."""
    if not patterns:
        return default
    from peft.utils.other import get_pattern_key

    key = get_pattern_key(list(patterns), module)
    return patterns.get(key, default) if key in patterns else default


def module_parameters(base_dir: Path, *, trust_remote_code: bool = False) -> dict[str, list[tuple[str, list[int]]]]:
    """Module -> its own parameters (name, shape) in registration order, as the base model holds them in memory.

    PEFT's `target_parameters` name in-memory parameters (transformers 5 fuses MoE experts into 3-D
    tensors the checkpoint doesn't have), so we build the model's skeleton on the meta device: no
    weights are read or allocated, whatever the model's size.
    """
    import transformers

    config = transformers.AutoConfig.from_pretrained(base_dir, trust_remote_code=trust_remote_code)
    archs = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, archs[0], None) if archs and not trust_remote_code else None
    with torch.device("meta"):
        if model_class is not None:
            model = model_class(config)
        else:
            model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    out: dict[str, list[tuple[str, list[int]]]] = {}
    for module_name, module in model.named_modules():
        params = [(n, list(p.shape)) for n, p in module.named_parameters(recurse=False)]
        if params:
            out[module_name] = params
    return out


def _target_parameter(module: str, targets: list[str], params: dict[str, list[tuple[str, list[int]]]]) -> tuple[str, list[int]] | None:
    """(parameter name, in-memory shape) a `target_parameters` LoRA key belongs to, or None for an ordinary module LoRA.

    PEFT matches `module.param` against the targets (exact or dotted suffix) and wraps each match of one
    module in its own ParamWrapper, in the module's parameter order: the first is innermost
    (`experts.base_layer.lora_A`), the last outermost (`experts.lora_A`).
    """
    depth = 0
    while module.endswith(".base_layer"):
        module, depth = module[: -len(".base_layer")], depth + 1
    matched = [(name, shape) for name, shape in params.get(module, [])
               if any(f"{module}.{name}" == t or f"{module}.{name}".endswith("." + t) for t in targets)]
    if not matched:
        return None
    if depth >= len(matched):
        raise MergeError(f"adapter key {module}{'.base_layer' * depth}: more nested LoRA wrappers than target_parameters match on {module}")
    name, shape = matched[len(matched) - 1 - depth]
    return f"{module}.{name}", shape


def _number(value: Any, *, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > 0 and (not integer or float(value).is_integer())


def _check_config(config: dict[str, Any], cfg_path: Path) -> None:
    """The values the merge arithmetic uses, checked up front: a string `r` or a list-valued
    alpha_pattern must be an error naming the field, not a traceback or a silently ignored pattern."""
    if "r" in config and not _number(config["r"], integer=True):
        raise InputError(f"{cfg_path}: r = {config['r']!r} must be a positive integer (the LoRA rank, e.g. 8)")
    if "lora_alpha" in config and not _number(config["lora_alpha"], integer=False):
        raise InputError(f"{cfg_path}: lora_alpha = {config['lora_alpha']!r} must be a positive number (e.g. 16)")
    for key, integer in (("rank_pattern", True), ("alpha_pattern", False)):
        pattern = config.get(key)
        if pattern in (None, {}):
            continue
        if not isinstance(pattern, dict):
            raise InputError(f"{cfg_path}: {key} must be a mapping of module name to {'rank' if integer else 'alpha'} "
                             f"(e.g. {{\"q_proj\": 16}}), got a {type(pattern).__name__}")
        for module, value in pattern.items():
            if not _number(value, integer=integer):
                raise InputError(f"{cfg_path}: {key}[{module!r}] = {value!r} must be a positive {'integer' if integer else 'number'}")
    for key in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if key in config and not isinstance(config[key], bool) and config[key] is not None:
            raise InputError(f"{cfg_path}: {key} = {config[key]!r} must be true or false")


def load_adapter(path: Path | str, *, base_dir: Path | None = None, trust_remote_code: bool = False) -> Adapter:
    """Open a PEFT LoRA/DoRA adapter folder with clear errors for what we can't merge.

    BASE_DIR is needed only for `target_parameters` adapters, whose keys name in-memory parameters.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: adapter directory not found")
    cfg_path = path / "adapter_config.json"
    if not cfg_path.is_file():
        raise InputError(f"{path}: no adapter_config.json; point at a PEFT adapter folder (PeftModel.save_pretrained output)")
    config = read_json(cfg_path)
    if not isinstance(config, dict):
        raise InputError(f"{cfg_path}: expected a JSON object (PEFT's LoraConfig), got a {type(config).__name__}; re-save the adapter")
    _check_config(config, cfg_path)
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InputError(f"{cfg_path}: peft_type {peft_type} is not supported; hubtool merges LoRA, rsLoRA and DoRA adapters")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise InputError(
                f"{path / 'adapter_model.bin'}: pickle adapter weights are not read; re-save with "
                "`PeftModel.save_pretrained(dir, safe_serialization=True)`"
            )
        raise InputError(f"{path}: no adapter_model.safetensors found")
    try:
        handle = safe_open(str(weights), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{weights}: not a valid safetensors file ({exc}); re-save the adapter") from None

    r_default = config.get("r", 8)
    alpha_default = float(config.get("lora_alpha", r_default))
    rslora = bool(config.get("use_rslora", False))
    target_parameters = [str(t) for t in (config.get("target_parameters") or [])]
    params: dict[str, list[tuple[str, list[int]]]] = {}
    if target_parameters:
        if base_dir is None:
            raise MergeError(f"{cfg_path}: target_parameters LoRA needs the base model to place its parameters")
        params = module_parameters(Path(base_dir), trust_remote_code=trust_remote_code)
    param_shapes: dict[str, list[int]] = {}
    modules: dict[str, LoraModule] = {}
    replacements: dict[str, str] = {}
    for key in handle.keys():
        if not key.startswith(PREFIX):
            raise InputError(f"{weights}: unexpected tensor {key!r} (PEFT keys start with {PREFIX!r}); is this a PEFT adapter?")
        inner = key[len(PREFIX) :]
        if ".lora_" in inner and ".lora_B.bias" in inner:
            raise MergeError(f"{weights}: {key} is a LoRA bias (lora_bias=True), which hubtool does not merge yet")
        match = _LORA_KEY.match(inner)
        if match is None:
            # modules_to_save (full replacement) or an embedding layer saved whole (resized vocab).
            # With a resized vocab PEFT also saves its wrapper's internals: the frozen original_module
            # (never merged) and a modules_to_save copy (used only when the plain key is absent).
            if ".original_module." in inner:
                continue
            target = inner.replace(".base_layer.", ".").replace(".modules_to_save.", ".")
            if target not in replacements or ".modules_to_save." not in inner:
                replacements[target] = key
            continue
        module, part = match["module"], match["part"]
        found = _target_parameter(module, target_parameters, params) if target_parameters else None
        if found is not None:
            param_shapes[found[0]] = found[1]
            entry = modules.setdefault(found[0], LoraModule(module=found[0], parameter=True))
        else:
            entry = modules.setdefault(f"{module}.weight", LoraModule(module=module))
        if part in ("lora_A.weight", "lora_embedding_A"):
            entry.a_key = key
            entry.embedding = part == "lora_embedding_A"
        elif part in ("lora_B.weight", "lora_embedding_B"):
            entry.b_key = key
        else:
            entry.magnitude_key = key
    use_dora = bool(config.get("use_dora", False))
    for name, entry in modules.items():
        if entry.a_key is None or entry.b_key is None:
            raise InputError(f"{weights}: {entry.module} has lora_{'A' if entry.a_key is None else 'B'} missing; the adapter file is incomplete")
        for key in (entry.a_key, entry.b_key, entry.magnitude_key):
            kind = handle.get_slice(key).get_dtype() if key is not None else "F32"
            if kind not in FLOAT_DTYPES:
                raise InputError(f"{weights}: {key} is {kind}; LoRA factors are floating point ({', '.join(FLOAT_DTYPES)}): the adapter "
                                 "file is corrupt or was written wrong, re-save it with PeftModel.save_pretrained")
        if use_dora and entry.magnitude_key is None:
            raise InputError(f"{weights}: adapter_config.json says use_dora: true but {entry.module} has no lora_magnitude_vector; "
                             "merging it as plain LoRA would be wrong: re-save the complete DoRA adapter (PeftModel.save_pretrained)")
        r = _pattern_value(config.get("rank_pattern") or {}, entry.module, r_default)
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, entry.module, alpha_default))
        a_shape = list(handle.get_slice(entry.a_key).get_shape())
        b_shape = list(handle.get_slice(entry.b_key).get_shape())
        actual = a_shape[0]
        if entry.parameter:  # ParamWrapper stacks one rank-r factor per expert
            shape = param_shapes[entry.module]
            experts = shape[0] if len(shape) == 3 else 1
            if a_shape[0] != int(r) * experts or b_shape[-1] != a_shape[0]:
                raise MergeError(f"{weights}: {entry.module} (target_parameters, {experts} experts of {shape[1:] or shape}) has lora_A "
                                 f"{a_shape}, lora_B {b_shape}; expected [r·experts, in] and [out, r·experts] with r={r}; fix r/rank_pattern")
            entry.experts, actual = experts, int(r)
        elif actual != int(r):
            raise MergeError(f"{weights}: {entry.a_key} has rank {actual} but adapter_config.json says r={r} for {entry.module}; fix r/rank_pattern")
        if not entry.parameter and b_shape[-1] != actual:
            raise MergeError(f"{weights}: rank mismatch in {entry.module}: lora_A is {a_shape}, lora_B is {b_shape}")
        entry.rank, entry.alpha = actual, alpha
        entry.scale = alpha / math.sqrt(actual) if rslora else alpha / actual
    return Adapter(
        path=path,
        config=config,
        modules=modules,
        replacements=replacements,
        fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
        use_dora=use_dora,
        _handle=handle,
    )
