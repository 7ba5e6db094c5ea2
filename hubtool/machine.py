"""What this machine lets the process use, for the scheduler and the engines' thread counts."""

from __future__ import annotations

import os


def cores() -> int:
    """CPU cores this process may use (the affinity mask: a container's or `taskset`'s limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
