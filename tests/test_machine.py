"""A stage's share of the cores (hubtool/machine.py): what engines read, and what reaches torch and child processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hubtool.machine import THREADS_ENV, cores, threads
from hubtool.release.schedule import THREAD_SENSITIVE, stage_threads


def test_threads_default_to_every_core_and_never_exceed_them(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert threads() == cores()
    monkeypatch.setenv(THREADS_ENV, "1")
    assert threads() == 1
    monkeypatch.setenv(THREADS_ENV, str(cores() + 7))
    assert threads() == cores()
    for bad in ("0", "-3", "two", ""):
        monkeypatch.setenv(THREADS_ENV, bad)
        assert threads() == cores()


@pytest.mark.parametrize("jobs", [1, 2, 3, 64])
def test_stage_threads_share_the_cores(jobs):
    n = stage_threads(jobs)
    assert n >= 1 and (n * jobs <= cores() or n == 1)
    assert stage_threads(1) == cores()


PROBE = """
import os, subprocess, sys
from hubtool.machine import use_threads, threads
early = sys.argv[1] == "early"
if early:
    import torch
use_threads(1)
import torch
child = subprocess.run([sys.executable, "-c", "import os, torch; print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])"],
                       capture_output=True, text=True, check=True).stdout.split()
print(threads(), torch.get_num_threads(), *child)
"""


@pytest.mark.parametrize("when", ["early", "late"])
def test_use_threads_reaches_torch_in_process_and_in_children(when):
    """Whether torch loaded before the stage took its share (a reused worker) or after, torch here and in
    an engine process started later (gptqmodel's, llama.cpp's server) run the share, not a thread per core."""
    out = subprocess.run([sys.executable, "-c", PROBE, when], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1", "1", "1"]


def test_gptq_keeps_every_core_whatever_the_jobs():
    """GPTQ's weights depend on torch's thread count: a concurrent release must not change them."""
    from hubtool.release.graph import StageKind

    assert StageKind.GPTQ in THREAD_SENSITIVE
    for jobs in (1, 2, 8):
        assert stage_threads(jobs, StageKind.GPTQ) == cores()
        assert stage_threads(jobs, StageKind.VERIFY_GGUF) == max(1, cores() // jobs)
