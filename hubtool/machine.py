"""What this machine lets the process use, for the scheduler and the engines' thread counts."""

from __future__ import annotations

import os
import sys

THREADS_ENV = "HUBTOOL_THREADS"  # the share of the cores a concurrent release gave this stage (inherited by its engines)
# read at start-up by the OpenMP/BLAS pools of torch (gptqmodel's child process too) and numpy
_POOL_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cores() -> int:
    """CPU cores this process may use (the affinity mask: a container's or `taskset`'s limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads() -> int:
    """Threads an engine started by this process should run (llama.cpp's n_threads, the quantizer's nthread):
    the stage's share when a concurrent release set one, else every core. Two stages side by side that each
    spin up a thread per core only take turns on the same cores (measured in bench/stages.py)."""
    try:
        n = int(os.environ.get(THREADS_ENV, "0"))
    except ValueError:
        n = 0
    return min(n, cores()) if n > 0 else cores()


def use_threads(n: int) -> None:
    """Give this process, and every engine process it starts from now on, N threads."""
    n = max(1, int(n))
    os.environ[THREADS_ENV] = str(n)
    for key in _POOL_ENVS:
        os.environ[key] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:  # torch read the variables when it loaded: set its pool directly
        torch.set_num_threads(n)
