"""Which stages run at once on one machine: those whose inputs are done, at most `jobs` of them, and
only while their memory estimates fit the RAM budget together.

The scheduler knows nothing about processes: `launch` starts a stage (release/worker.py puts each in
its own process) and returns a handle it polls; `cached` settles a stage that needs no work. A stage
whose estimate alone exceeds the budget still runs, by itself, so a small budget makes the release
sequential rather than stuck.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from hubtool.errors import HubtoolError, StageError
from hubtool.machine import cores
from hubtool.progress import log
from hubtool.release.graph import Stage, StageKind

GB = 10**9
# A stage process's resident memory ≈ FACTOR x the fp16 weights (2 bytes a parameter) + OVERHEAD (Python,
# torch and the engine's own buffers). From the plan's resource hints: GPTQ holds the model plus its
# calibration activations, the reference and verify:gptq stream block by block but keep a window's logits,
# llama.cpp's quantizer and evaluator map the GGUF files.
MEMORY_MODEL: dict[str, tuple[float, float]] = {
    StageKind.MERGE: (1.5, 0.8 * GB),
    StageKind.GPTQ: (2.5, 1.5 * GB),
    StageKind.GGUF_BASE: (1.2, 0.6 * GB),
    StageKind.GGUF: (0.6, 0.3 * GB),
    StageKind.REFERENCE: (1.2, 1.2 * GB),
    StageKind.VERIFY_GPTQ: (1.5, 1.2 * GB),
    StageKind.VERIFY_GGUF: (1.2, 1.0 * GB),
    StageKind.SERVE: (2.2, 1.0 * GB),  # the fp16 model in float32 (a GGUF server maps its file: less)
}


def memory_estimate(stage: Stage, params: int) -> int:
    """Bytes of RAM STAGE's process is expected to peak at, for a model of PARAMS parameters."""
    factor, overhead = MEMORY_MODEL.get(stage.kind, (1.5, 1.0 * GB))
    if stage.memory_bytes:  # the plan's own estimate (a model evaluated in memory: fp32 weights + a window)
        return int(max(factor * 2 * params, stage.memory_bytes) + overhead)
    return int(factor * 2 * params + overhead)


SMALL_MODEL_PARAMS = 50_000_000  # below this a worker process's start-up (torch, the engines) costs more than overlap saves


def default_jobs(params: int | None = None) -> int:
    """Two stages at once where there are two cores, each on one of them (stage_threads): GPTQ's per-column
    loop gains little from a second thread (SmolLM2: 241 s on one, 228 s on two), so the GGUF chain, the
    reference and the verifications run beside it almost for free; more processes than that mostly share
    the same cores' time. One for a model under SMALL_MODEL_PARAMS parameters, whose stages take seconds."""
    if params is not None and params < SMALL_MODEL_PARAMS:
        return 1
    return min(cores(), 2)


# Stages whose output bytes depend on torch's thread count (how a matmul splits its sums): they keep every
# core whatever --jobs says, so `--jobs 2` publishes the same files as `--jobs 1` (GPTQ's weights moved in
# the last bit between one and two threads on SmolLM2).
THREAD_SENSITIVE = frozenset({StageKind.GPTQ})


def stage_threads(jobs: int, kind: str | None = None) -> int:
    """Threads a stage of KIND may run while JOBS run at once: an equal share of the cores, so side-by-side
    engines (llama.cpp, torch) don't each start a thread per core and take turns on the same cores; every
    core for a THREAD_SENSITIVE kind."""
    if kind in THREAD_SENSITIVE:
        return cores()
    return max(1, cores() // max(1, jobs))


def available_memory() -> int:
    """RAM the kernel says is available now (MemAvailable), else physical RAM."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def default_memory_budget() -> int:
    """80 % of the RAM available when the release starts (other programs keep the rest)."""
    return int(available_memory() * 0.8)


def tree_rss(pid: int) -> int:
    """Resident bytes of PID and every process below it (from /proc; 0 where it is gone)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


class Job(Protocol):
    """A started stage: `poll()` is None while it runs; `finish()` returns its result or raises its error;
    `stop()` ends it early and removes what it left unfinished."""

    def poll(self) -> int | None: ...

    def finish(self) -> Any: ...

    def stop(self) -> None: ...


@dataclass
class _Running:
    stage: Stage
    job: Job
    cost: int


@dataclass
class Outcome:
    """What a scheduled run did: each launched stage's result, and the most it ran (and held) at once."""

    results: dict[str, Any]
    max_jobs: int = 0
    max_estimate: int = 0  # the largest sum of running stages' memory estimates
    peak_rss: int = 0  # the largest resident size of the whole process tree seen while sampling


def run_graph(stages: tuple[Stage, ...] | list[Stage], *, jobs: int, budget: int, cost: Callable[[Stage], int],
              launch: Callable[[Stage], Job], cached: Callable[[Stage], bool] = lambda s: False,
              poll_s: float = 0.2, sample: Callable[[], int] | None = None) -> Outcome:
    """Run STAGES (in an order where each comes after its needs): every stage whose needs are done starts,
    in plan order, while fewer than JOBS run and its COST fits BUDGET beside the running ones.

    After a stage fails nothing new starts; the running stages finish (their results are cached for
    the re-run) and the first failure is raised. Any exception here (Ctrl-C, SIGTERM) stops every
    running stage before it propagates."""
    if jobs < 1:
        raise StageError(f"jobs = {jobs}: must be at least 1")
    pending = list(stages)
    names = {s.name for s in stages}
    done: set[str] = set()
    running: list[_Running] = []
    out = Outcome({})
    failure: HubtoolError | None = None
    told_big: set[str] = set()
    try:
        while pending or running:
            for r in list(running):
                if r.job.poll() is None:
                    continue
                running.remove(r)
                try:
                    out.results[r.stage.name] = r.job.finish()
                    done.add(r.stage.name)
                except HubtoolError as exc:
                    if failure is None:
                        failure = exc
                        if running:
                            log(f"{r.stage.name} failed; waiting for {', '.join(x.stage.name for x in running)} to finish "
                                "(their results are kept for the re-run; Ctrl-C stops them now)")
            if failure is not None:
                pending.clear()
            started = False
            for stage in list(pending):
                if len(running) >= jobs:
                    break
                if not all(n in done or n not in names for n in stage.needs):
                    continue
                c = cost(stage)
                used = sum(r.cost for r in running)
                if running and used + c > budget:
                    continue
                if c > budget and stage.name not in told_big:
                    told_big.add(stage.name)
                    log(f"{stage.name}: its memory estimate ({c / GB:.1f} GB) exceeds the budget ({budget / GB:.1f} GB); running it alone")
                pending.remove(stage)
                if cached(stage):
                    done.add(stage.name)
                    started = True
                    continue
                running.append(_Running(stage, launch(stage), c))
                started = True
                out.max_jobs = max(out.max_jobs, len(running))
                out.max_estimate = max(out.max_estimate, sum(r.cost for r in running))
            if pending and not running and not started:
                raise StageError(f"stages {', '.join(s.name for s in pending)} wait on stages that never finished")
            if sample is not None:
                out.peak_rss = max(out.peak_rss, sample())
            if running and not started:
                time.sleep(poll_s)
    finally:
        for r in running:  # signal every stage first: they clean up at once, not one after another
            terminate = getattr(r.job, "terminate", None)
            if terminate is not None:
                terminate()
        for r in running:
            r.job.stop()
    if failure is not None:
        raise failure
    return out
