"""Where a fused 3-D expert parameter lives on disk.

transformers 5 holds MoE experts as one parameter per projection (`mlp.experts.gate_up_proj`,
[experts, out, in]) and PEFT's `target_parameters` trains LoRA on exactly that, while most
checkpoints (and transformers 5's own `save_pretrained`) store one Linear weight per expert
(`block_sparse_moe.experts.3.w1.weight`). transformers' checkpoint conversion mapping is the
authority on how the two correspond (which per-expert tensors are stacked, which are concatenated
along the output rows, which module names were renamed), so we read it rather than keep a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class ExpertSlice:
    """Rows [row_start, row_end) of expert `expert`'s [out, in] delta land in on-disk tensor `name`."""

    name: str
    expert: int
    row_start: int
    row_end: int


def _conversions(model_type: str) -> list[Any]:
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:  # transformers 4: parameters and checkpoints share one layout
        return []
    return list(get_checkpoint_conversion_mapping(model_type) or [])


def _patterns(transform: Any, which: str) -> list[str]:
    value = getattr(transform, f"_original_{which}_patterns", None) or getattr(transform, f"{which}_patterns", [])
    return [value] if isinstance(value, str) else list(value)


def per_expert_slices(
    model_type: str, param: str, experts: int, out_rows: int, has: Callable[[str], bool], rows_of: Callable[[str], int]
) -> list[ExpertSlice] | None:
    """The on-disk pieces of fused parameter PARAM (EXPERTS × OUT_ROWS × in), or None when the mapping doesn't say.

    `has(name)` tells whether the base checkpoint holds a tensor, `rows_of(name)` its first dimension.
    """
    transforms = _conversions(model_type)
    renames = [(s, t) for tr in transforms if type(tr).__name__ == "WeightRenaming"
               for s, t in zip(_patterns(tr, "source"), _patterns(tr, "target"))]
    for tr in transforms:
        if type(tr).__name__ != "WeightConverter":
            continue
        ops = [type(op).__name__ for op in getattr(tr, "operations", [])]
        if not ops or ops[0] != "MergeModulelist":
            continue
        for target in _patterns(tr, "target"):
            suffix = target.lstrip(".")
            if not (param == suffix or param.endswith("." + suffix)):
                continue
            prefix = param[: len(param) - len(suffix)]
            slices: list[ExpertSlice] = []
            for e in range(experts):
                row = 0
                for source in _patterns(tr, "source"):
                    name = _on_disk(prefix + source.lstrip(".").replace("*", str(e)), renames, has)
                    if name is None:
                        return None
                    n = rows_of(name)
                    slices.append(ExpertSlice(name, e, row, row + n))
                    row += n
                if row != out_rows:
                    return None
            return slices
    return None


def disk_name(model_type: str, name: str, has: Callable[[str], bool]) -> str | None:
    """An in-memory parameter NAME as the checkpoint spells it (Mixtral's `mlp.gate` is `block_sparse_moe.gate` on disk)."""
    renames = [(s, t) for tr in _conversions(model_type) if type(tr).__name__ == "WeightRenaming"
               for s, t in zip(_patterns(tr, "source"), _patterns(tr, "target"))]
    return _on_disk(name, renames, has)


def _on_disk(name: str, renames: list[tuple[str, str]], has: Callable[[str], bool]) -> str | None:
    """NAME as the checkpoint spells it: as is, or with one of the mapping's renames undone."""
    if has(name):
        return name
    for source, target in renames:
        if target in name and not any(c in source + target for c in "()[]\\^$+?|"):
            candidate = name.replace(target, source)
            if has(candidate):
                return candidate
    return None
