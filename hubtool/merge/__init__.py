"""Merging a LoRA adapter into its base: adapter reading, RoPE scaling, streaming shard writes.

The public API (`merge_adapter`, `check_merge`, ...) lives in `apply.py` and is re-exported here
lazily (PEP 562), so that `hubtool.merge.rope`, which argument parsing imports, doesn't pull in
torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubtool.merge.apply import PROVENANCE_FILE, MergeSummary, check_merge, merge_adapter, resolve_rope

__all__ = ["PROVENANCE_FILE", "MergeSummary", "check_merge", "merge_adapter", "resolve_rope"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hubtool.merge import apply

        return getattr(apply, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
