"""Quality gates: floors on finished verification rows that fail a release before anything is pushed.

A verify step that measures top-1 agreement 0.000 and exits 0 is a silent pass: a broken quant,
or a GGUF checked against the wrong `--reference`, would be published with a card that shows the
damning numbers. The gates turn those numbers into an error. Defaults are loose on purpose: they
must never trip on a sound quant of any type hubtool offers (measured on SmolLM2-135M and the
tests' tiny models, see README "Quality gates"), and still catch a mismatched reference (top-1
near 1/vocab, KL of several nats). A release can tighten or relax them in release.yaml:

    verify: {gates: {min_top1: 0.8, max_kl: 0.2, max_ppl_ratio: 1.2}}   # null drops one; gates: false drops all

Defaults: 0.45 / 1.0 / 2.0 for 4 bits and up; 0.25 / 2.5 / 5.0 for IQ1-IQ3, Q2_K, Q3_K and GPTQ <= 3 bits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable

from hubtool.errors import InputError, QuantizeError

GATED_KINDS = ("gguf", "gptq")  # `rtn` rows are a baseline for comparison, not something we publish


@dataclass(frozen=True)
class Gates:
    """Floors/ceilings per verified artifact; None disables that check.

    `tiered` (the defaults): artifacts of 3 bits or fewer per weight are held to LOW_BIT_GATES,
    since a sound 2-bit quant of a small model is far from fp16. A user's own numbers apply to
    every artifact (tiered=False)."""

    # Measured on sound quants (README "Quality gates"): the worst 4-bit-or-more type on SmolLM2-135M, Q4_0,
    # has top-1 0.791, KL 0.149, ppl ratio 1.10; even IQ2_XS has 0.675 / 0.333 / 1.32. A mismatched reference: top-1 ~0.002.
    min_top1: float | None = 0.45
    max_kl: float | None = 1.0
    max_ppl_ratio: float | None = 2.0  # quant perplexity / fp16 perplexity
    enabled: bool = True
    tiered: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"min_top1": self.min_top1, "max_kl": self.max_kl, "max_ppl_ratio": self.max_ppl_ratio, "enabled": self.enabled}


DEFAULT_GATES = Gates()
# The worst sound quant measured, IQ1_S of SmolLM2-135M: top-1 0.501, KL 0.810, ppl ratio 2.19.
LOW_BIT_GATES = Gates(min_top1=0.25, max_kl=2.5, max_ppl_ratio=5.0, tiered=False)
LOW_BIT_GGUF = re.compile(r"^(IQ1|IQ2|IQ3|Q2_K|Q3_K)")
_KEYS = ("min_top1", "max_kl", "max_ppl_ratio")


def is_low_bit(row: dict[str, Any]) -> bool:
    """GGUF types of ~3 bits or fewer per weight, GPTQ with bits <= 3."""
    variant = str(row.get("variant") or "")
    if row.get("kind") == "gguf":
        return bool(LOW_BIT_GGUF.match(variant.upper()))
    bits = row.get("bits")
    if bits is None:
        m = re.search(r"(\d+)\s*-?bit", variant)
        bits = int(m.group(1)) if m else None
    return isinstance(bits, int) and bits <= 3


def gates_for(row: dict[str, Any], gates: Gates) -> Gates:
    return LOW_BIT_GATES if gates.tiered and is_low_bit(row) else gates


def gates_from_config(data: Any, *, source: str) -> Gates:
    """`verify.gates` of release.yaml: None = defaults, false = off, or a mapping overriding some keys."""
    if data is None or data is True:
        return DEFAULT_GATES
    if data is False:
        return replace(DEFAULT_GATES, enabled=False)
    if not isinstance(data, dict):
        raise InputError(f"{source}: must be a mapping like {{min_top1: 0.5, max_kl: 1.0, max_ppl_ratio: 2.0}}, or false")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise InputError(f"{source}: unknown gate {unknown[0]!r}; allowed: {', '.join(_KEYS)}")
    values: dict[str, float | None] = {}
    for key, value in data.items():
        values[key] = check_gate_value(key, value, source=f"{source}.{key}")
    return replace(DEFAULT_GATES, tiered=False, **values)


def check_gate_value(key: str, value: Any, *, source: str) -> float | None:
    """One gate value: a finite number in its range, or None to drop the check."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{source}: {value!r} must be a number (or null to drop this gate)")
    if key == "min_top1" and not 0 <= value <= 1:
        raise InputError(f"{source}: {value!r} must be between 0 and 1 (a fraction of tokens)")
    if key == "max_kl" and value <= 0:
        raise InputError(f"{source}: {value!r} must be > 0 (nats per token)")
    if key == "max_ppl_ratio" and value < 1:
        raise InputError(f"{source}: {value!r} must be >= 1 (quant perplexity / fp16 perplexity)")
    return float(value)


def gates_from_flags(min_top1: float | None, max_kl: float | None, max_ppl_ratio: float | None, *, off: bool) -> Gates:
    """The verify commands' --min-top1/--max-kl/--max-ppl-ratio/--no-gates (unset flags keep defaults)."""
    if off:
        return replace(DEFAULT_GATES, enabled=False)
    values = {}
    for key, value in (("min_top1", min_top1), ("max_kl", max_kl), ("max_ppl_ratio", max_ppl_ratio)):
        if value is not None:
            values[key] = check_gate_value(key, value, source=f"--{key.replace('_', '-')}")
    return replace(DEFAULT_GATES, tiered=not values, **values)


def failures(row: dict[str, Any], gates: Gates) -> list[str]:
    """What row breaks, each with the measured number and the limit ('top-1 0.004 < 0.40')."""
    out = []
    top1, kl, ppl, ref = row.get("top1"), row.get("kl_div"), row.get("perplexity"), row.get("ref_perplexity")
    if gates.min_top1 is not None and isinstance(top1, (int, float)) and not top1 >= gates.min_top1:
        out.append(f"top-1 {top1:.3f} < {gates.min_top1:g}")
    if gates.max_kl is not None and isinstance(kl, (int, float)) and not kl <= gates.max_kl:
        out.append(f"KL {kl:.4f} > {gates.max_kl:g}")
    if gates.max_ppl_ratio is not None and isinstance(ppl, (int, float)) and isinstance(ref, (int, float)) and ref > 0:
        ratio = ppl / ref
        if not ratio <= gates.max_ppl_ratio:
            out.append(f"perplexity {ppl:.3f} = {ratio:.2f}x fp16's {ref:.3f} > {gates.max_ppl_ratio:g}x")
    return out


def check_rows(rows: Iterable[dict[str, Any]], gates: Gates, *, how_to_change: str) -> None:
    """QuantizeError naming every artifact that fails its gates, with the numbers; `how_to_change`
    says where this command's gates are set (release.yaml key or verify flags)."""
    if not gates.enabled:
        return
    bad = []
    for row in rows:
        if row.get("kind") not in GATED_KINDS:
            continue
        broken = failures(row, gates_for(row, gates))
        if broken:
            bad.append(f"{row.get('kind')} {row.get('variant')}: {', '.join(broken)}")
    if bad:
        raise QuantizeError(
            f"quality gate failed: {'; '.join(bad)}. A broken quant, or verified against the wrong reference model? "
            f"Check the reference; to accept these numbers change the gates ({how_to_change})"
        )
