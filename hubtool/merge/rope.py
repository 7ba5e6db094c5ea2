"""RoPE scaling: parse `--rope TYPE:FACTOR[,key=value...]`, validate it, and write it into a config
so that every loader applies it.

transformers 5 reads `rope_parameters` and drops the legacy keys on save; transformers 4.x reads
only `rope_scaling` + `rope_theta` and silently loads a `rope_parameters`-only config UNSCALED.
A merged model must carry both, or half its users get a model that falls apart past 2k tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hubtool.errors import InputError

# Per type: required fields (beyond factor) and optional fields with their kind.
_FIELDS: dict[str, dict[str, tuple[bool, type]]] = {
    "linear": {},
    "dynamic": {"original_max_position_embeddings": (False, int)},
    "yarn": {
        "original_max_position_embeddings": (True, int),
        "beta_fast": (False, float),
        "beta_slow": (False, float),
        "attention_factor": (False, float),
        "mscale": (False, float),
        "mscale_all_dim": (False, float),
    },
    "llama3": {
        "original_max_position_embeddings": (True, int),
        "low_freq_factor": (True, float),
        "high_freq_factor": (True, float),
    },
}
ROPE_TYPES = tuple(_FIELDS)


@dataclass(frozen=True)
class RopeScaling:
    """A validated RoPE scaling choice."""

    rope_type: str
    factor: float
    extra: dict[str, Any] = field(default_factory=dict)

    def effective_context(self, original: int) -> int:
        return int(round(original * self.factor))


def _coerce(key: str, value: Any, kind: type, source: str) -> Any:
    try:
        if isinstance(value, bool):
            raise TypeError
        out = kind(float(value)) if kind is float else kind(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{source}: RoPE field {key}={value!r} must be a {kind.__name__}") from None
    if not math.isfinite(out):
        raise InputError(f"{source}: RoPE field {key}={value!r} must be a finite number")
    if out <= 0:
        raise InputError(f"{source}: RoPE field {key}={value!r} must be > 0")
    return out


def validate(rope_type: str, factor: Any, extra: dict[str, Any], *, source: str, original_ctx: int | None = None) -> RopeScaling:
    """Check a scaling spec against the fields its type needs; fill defaults a loader would assume."""
    if rope_type not in _FIELDS:
        raise InputError(f"{source}: unknown RoPE type {rope_type!r}; use one of {', '.join(ROPE_TYPES)}")
    factor = _coerce("factor", factor, float, source)
    if factor < 1.0:
        raise InputError(f"{source}: RoPE factor {factor} < 1 would shrink the context; use a factor >= 1 (e.g. linear:4 for 2048→8192)")
    spec = _FIELDS[rope_type]
    unknown = sorted(set(extra) - set(spec))
    if unknown:
        allowed = ", ".join(spec) or "none"
        raise InputError(f"{source}: RoPE type {rope_type!r} has no field(s) {', '.join(unknown)}; allowed: {allowed}")
    out: dict[str, Any] = {}
    for key, (required, kind) in spec.items():
        if key in extra:
            out[key] = _coerce(key, extra[key], kind, source)
        elif required and key == "original_max_position_embeddings" and original_ctx:
            out[key] = int(original_ctx)
        elif required:
            raise InputError(f"{source}: RoPE type {rope_type!r} needs {key}=... (e.g. --rope {rope_type}:{factor:g},{key}=...)")
    if rope_type == "llama3" and out["high_freq_factor"] <= out["low_freq_factor"]:
        raise InputError(f"{source}: llama3 RoPE needs high_freq_factor > low_freq_factor")
    if rope_type == "yarn" and "beta_fast" in out and "beta_slow" in out and out["beta_fast"] <= out["beta_slow"]:
        raise InputError(f"{source}: yarn RoPE needs beta_fast > beta_slow")
    return RopeScaling(rope_type, factor, out)


def parse_rope_arg(text: str, *, original_ctx: int | None = None, source: str | None = None) -> RopeScaling:
    """`linear:4`, `yarn:4,original_max_position_embeddings=4096,beta_fast=32`; `source` names where
    the text came from in errors (default `--rope TEXT`)."""
    if not isinstance(text, str):
        raise InputError(f"{source or '--rope'}: {text!r} must be text TYPE:FACTOR, e.g. linear:4")
    source = source or f"--rope {text}"
    head, _, rest = text.partition(",")
    rope_type, sep, factor = head.partition(":")
    if not sep or not factor:
        raise InputError(f"{source}: expected TYPE:FACTOR, e.g. --rope linear:4")
    extra: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"{source}: expected key=value after the factor, got {item!r}")
        extra[key.strip()] = value.strip()
    return validate(rope_type.strip().lower(), factor, extra, source=source, original_ctx=original_ctx)


def from_config(config: dict[str, Any], *, source: str = "config.json") -> RopeScaling | None:
    """Scaling already present in a config (either key style), or None for plain RoPE."""
    for key in ("rope_parameters", "rope_scaling"):  # transformers 5 style first, then 4.x
        params = config.get(key)
        if isinstance(params, dict) and (params.get("rope_type") or params.get("type")) not in (None, "default"):
            break
    else:
        return None
    rope_type = params.get("rope_type") or params.get("type")
    extra = {k: v for k, v in params.items() if k in _FIELDS.get(rope_type, {})}
    return validate(rope_type, params.get("factor", 1.0), extra, source=source, original_ctx=config.get("max_position_embeddings"))


def base_context(config: dict[str, Any]) -> int:
    """The context length the model was pre-trained with (before any scaling)."""
    scaling = from_config(config)
    ctx = int(config.get("max_position_embeddings") or 2048)
    if scaling is None:
        return ctx
    return int(scaling.extra.get("original_max_position_embeddings") or round(ctx / scaling.factor))


def apply_to_config(config: dict[str, Any], scaling: RopeScaling, *, max_position_embeddings: int | None = None) -> dict[str, Any]:
    """Return a copy of `config` that applies `scaling` in transformers 4.x and 5.x alike."""
    original = base_context(config)
    new = dict(config)
    theta = (config.get("rope_parameters") or {}).get("rope_theta") or config.get("rope_theta") or 10000.0
    params = {"rope_type": scaling.rope_type, "factor": scaling.factor, **scaling.extra}
    if scaling.rope_type == "dynamic" and "original_max_position_embeddings" not in params:
        params["original_max_position_embeddings"] = original
    new["rope_parameters"] = {**params, "rope_theta": theta}
    new["rope_scaling"] = {"type": scaling.rope_type, **params}
    new["rope_theta"] = theta
    target = max_position_embeddings if max_position_embeddings is not None else scaling.effective_context(original)
    if target < original:
        raise InputError(f"--max-position-embeddings {target} is below the base context {original}")
    new["max_position_embeddings"] = int(target)
    return new
