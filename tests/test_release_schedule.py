"""The single-machine scheduler (release/schedule.py) on fake stages: it never runs more than `jobs` stages
or more estimated memory than the budget at once, starts a stage only after its needs, runs an oversized
stage alone, lets running stages finish after a failure, and stops every running stage when interrupted.
Plus the `jobs:` / `memory_budget:` settings' validation."""

from __future__ import annotations

import pytest

from hubtool.errors import InputError, QuantizeError
from hubtool.release import build_config
from hubtool.release.graph import Stage
from hubtool.release.schedule import GB, memory_estimate, run_graph, tree_rss

# the shape of a release: merge -> (gptq, gguf base -> two types, reference) -> verifies
GRAPH = [
    Stage("merge", "merge", "k0", ()),
    Stage("gptq:a", "gptq", "k1", ("merge",)),
    Stage("gptq:b", "gptq", "k2", ("merge",)),
    Stage("gguf:F16-base", "gguf-base", "k3", ("merge",)),
    Stage("gguf:Q4_K_M", "gguf", "k4", ("merge", "gguf:F16-base")),
    Stage("gguf:Q8_0", "gguf", "k5", ("merge", "gguf:F16-base")),
    Stage("verify:reference", "reference", "k6", ("merge",)),
    Stage("verify:gptq:a", "verify-gptq", "k7", ("merge", "gptq:a", "verify:reference")),
    Stage("verify:gptq:b", "verify-gptq", "k8", ("merge", "gptq:b", "verify:reference")),
    Stage("verify:gguf", "verify-gguf", "k9", ("merge", "gguf:Q4_K_M", "gguf:Q8_0", "verify:reference")),
]
TICKS = {"merge": 2, "gptq:a": 9, "gptq:b": 7, "gguf:F16-base": 3, "gguf:Q4_K_M": 2, "gguf:Q8_0": 2, "verify:reference": 4,
         "verify:gptq:a": 3, "verify:gptq:b": 3, "verify:gguf": 4}
COST = {"merge": 3, "gptq:a": 6, "gptq:b": 6, "gguf:F16-base": 3, "gguf:Q4_K_M": 1, "gguf:Q8_0": 1, "verify:reference": 4,
        "verify:gptq:a": 4, "verify:gptq:b": 4, "verify:gguf": 3}


class Clock:
    """Fake jobs that finish after a number of scheduler polls; records what ran at once."""

    def __init__(self, ticks=TICKS, cost=COST, fail=()):
        self.ticks, self.cost, self.fail = dict(ticks), cost, set(fail)
        self.running: dict[str, "FakeJob"] = {}
        self.finished: list[str] = []
        self.stopped: list[str] = []
        self.peak_jobs = self.peak_cost = 0
        self.started: list[tuple[str, frozenset[str]]] = []  # (stage, what had finished when it started)
        self.together: list[set[str]] = []  # what ran at each start, the new stage included

    def launch(self, stage: Stage) -> "FakeJob":
        job = FakeJob(self, stage.name)
        self.started.append((stage.name, frozenset(self.finished)))
        self.running[stage.name] = job
        self.together.append(set(self.running))
        self.peak_jobs = max(self.peak_jobs, len(self.running))
        self.peak_cost = max(self.peak_cost, sum(self.cost[n] for n in self.running))
        return job


class FakeJob:
    def __init__(self, clock: Clock, name: str):
        self.clock, self.name, self.left = clock, name, clock.ticks[name]

    def poll(self):
        self.left -= 1
        if self.left > 0:
            return None
        self.clock.running.pop(self.name, None)
        self.clock.finished.append(self.name)
        return 0

    def finish(self):
        if self.name in self.clock.fail:
            raise QuantizeError(f"{self.name}: failed")
        return {"ran": [self.name]}

    def stop(self):
        self.clock.running.pop(self.name, None)
        self.clock.stopped.append(self.name)


def _run(clock: Clock, *, jobs: int, budget: int, **kw):
    return run_graph(GRAPH, jobs=jobs, budget=budget, cost=lambda s: clock.cost[s.name], launch=clock.launch, poll_s=0, **kw)


@pytest.mark.parametrize(("jobs", "budget"), [(1, 100), (2, 100), (3, 100), (4, 9), (8, 7), (3, 6)])
def test_never_more_than_jobs_or_budget_and_needs_first(jobs, budget):
    clock = Clock()
    out = _run(clock, jobs=jobs, budget=budget)
    assert sorted(out.results) == sorted(s.name for s in GRAPH) and clock.stopped == []
    assert clock.peak_jobs <= jobs and out.max_jobs == clock.peak_jobs
    assert clock.peak_cost <= budget and out.max_estimate == clock.peak_cost
    needs = {s.name: set(s.needs) for s in GRAPH}
    for name, finished in clock.started:
        assert needs[name] <= finished, f"{name} started before {needs[name] - finished}"


def test_uses_the_parallelism_it_is_given():
    """With room for three, GPTQ, the GGUF chain and the reference overlap (the point of the scheduler)."""
    clock = Clock()
    _run(clock, jobs=3, budget=100)
    assert clock.peak_jobs == 3
    first_wave = [name for name, finished in clock.started if finished == frozenset({"merge"})]
    assert first_wave == ["gptq:a", "gptq:b", "gguf:F16-base"]  # plan order, as many as fit
    clock = Clock()
    _run(clock, jobs=3, budget=9)  # two GPTQs (6 + 6) don't fit together: the small stages go beside one
    assert [name for name, finished in clock.started if finished == frozenset({"merge"})] == ["gptq:a", "gguf:F16-base"]


def test_a_stage_bigger_than_the_budget_runs_alone():
    clock = Clock()
    out = _run(clock, jobs=4, budget=5)  # gptq (6) exceeds it: each runs by itself, the release still finishes
    assert len(out.results) == len(GRAPH) and clock.peak_jobs == 2  # the small stages still pair up
    big = {"gptq:a", "gptq:b"}
    for together in clock.together:
        if together & big:
            assert len(together) == 1, together
        else:
            assert sum(clock.cost[n] for n in together) <= 5


def test_after_a_failure_nothing_new_starts_and_running_stages_finish():
    clock = Clock(fail={"gguf:F16-base"})
    with pytest.raises(QuantizeError, match="gguf:F16-base: failed"):
        _run(clock, jobs=3, budget=100)
    started = [n for n, _ in clock.started]
    assert "gguf:Q4_K_M" not in started and "verify:gguf" not in started
    assert {"gptq:a", "gptq:b"} <= set(clock.finished) and clock.stopped == []  # kept for the re-run


def test_an_interrupt_stops_every_running_stage():
    clock = Clock()
    at_interrupt = []

    def cached(stage):
        if stage.name == "verify:reference":  # a Ctrl-C arrives while gptq and the gguf base run
            at_interrupt.extend(clock.running)
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        _run(clock, jobs=4, budget=100, cached=cached)
    assert sorted(at_interrupt) == ["gguf:F16-base", "gptq:a", "gptq:b"]
    assert sorted(clock.stopped) == sorted(at_interrupt) and clock.running == {}


def test_cached_stages_launch_nothing():
    clock = Clock()
    out = _run(clock, jobs=2, budget=100, cached=lambda s: s.kind in ("merge", "gptq"))
    assert {n for n, _ in clock.started} == {s.name for s in GRAPH if s.kind not in ("merge", "gptq")}
    assert "merge" not in out.results


def test_default_jobs():
    from hubtool.release.schedule import cores, default_jobs

    assert default_jobs(135_000_000) == min(cores(), 2) == default_jobs()
    assert default_jobs(300_000) == 1  # a tiny model: process start-up would cost more than the overlap


def test_memory_estimates_scale_with_the_model():
    gptq, gguf = GRAPH[1], GRAPH[4]
    assert memory_estimate(gptq, 7_000_000_000) > 30 * GB > memory_estimate(gguf, 7_000_000_000) > 8 * GB
    assert memory_estimate(gptq, 1000) < 2 * GB
    import os

    assert tree_rss(os.getpid()) > 10_000_000  # this test process, read from /proc


@pytest.mark.parametrize(("data", "flags", "needle"), [
    ({"jobs": 0}, {}, "release.yaml: jobs"),
    ({"jobs": "two"}, {}, "release.yaml: jobs"),
    ({}, {"jobs": 0}, "--jobs"),
    ({"memory_budget": "lots"}, {}, "release.yaml: memory_budget"),
    ({}, {"memory_budget": "0"}, "--memory-budget"),
])
def test_bad_jobs_or_budget_names_where(data, flags, needle):
    with pytest.raises(InputError, match=needle):
        build_config({"namespace": "me", "quants": ["gguf"], **data}, flags, default_name="m", source="release.yaml")


def test_jobs_and_budget_read():
    cfg = build_config({"namespace": "me", "quants": ["gguf"], "jobs": 3, "memory_budget": "12G"}, {"jobs": 2}, default_name="m")
    assert (cfg.jobs, cfg.memory_budget) == (2, 12 * GB)  # the flag wins over the file


def test_a_stopped_worker_gets_one_sigterm():
    """Stopping a concurrent release signals every stage first (terminate), then waits on each (stop): the
    worker gets one SIGTERM, not a second one that would interrupt the clean-up the first started."""
    import io
    import signal

    from hubtool.release.worker import StageWorker

    class Proc:
        def __init__(self) -> None:
            self.sent: list[int] = []
            self.stdin = io.BytesIO()

        def poll(self):
            return None  # still cleaning up

        def send_signal(self, sig: int) -> None:
            self.sent.append(sig)

        def wait(self, timeout=None) -> int:
            return 0

    worker = object.__new__(StageWorker)
    worker.proc, worker._terminated, worker._threads = Proc(), False, []
    worker.terminate()
    worker.stop()
    assert worker.proc.sent == [signal.SIGTERM]
