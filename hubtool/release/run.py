"""Run a planned release: every stage (or the ones named), then publish (cards + push).

Each stage's output lands in WORK/stages/<name>-<key>/ (release/store.py), so a re-run after a
failure redoes only unfinished stages and a re-run with nothing changed recomputes nothing. The
same plan can be split over machines: `run_stages` runs named stages whose inputs are in the
(shared) cache, `publish` renders the cards and pushes once every stage is there. Cards are
re-rendered (cheap, deterministic) and pushes are idempotent (the Hub skips unchanged files, no
empty commits).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hubtool.artifacts import QualityResult, Record, ServeAnswers
from hubtool.errors import InputError, MergeError, QuantizeError, StageError
from hubtool.progress import log
from hubtool.release.cache import Hasher
from hubtool.release.config import ReleaseConfig
from hubtool.release.execute import RUNNERS, StageContext
from hubtool.release.graph import Inputs, Stage, StageKind
from hubtool.release.plan import Plan
from hubtool.release.load_check import choose_load_dtype
from hubtool.release.publish import build_publish_folders, card_hub_url, check_published, fp16_folder, preflight_cards, push_all
from hubtool.release.store import StageStore


class Session:
    """One process's view of a release: the plan, its work dir and the stage store (with the shared cache)."""

    def __init__(self, cfg: ReleaseConfig, plan: Plan, inputs: Inputs, *, work_dir: Path, hasher: Hasher | None = None,
                 cache: str | None = None, endpoint: str | None = None, token: str | None = None) -> None:
        self.cfg, self.plan, self.inputs = cfg, plan, inputs
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.hasher = hasher or Hasher(self.work_dir)
        self.store = StageStore(self.work_dir, self.hasher, cache, endpoint=endpoint, token=token)
        self.endpoint, self.token = endpoint, token
        self._total = len(plan.stages) + 2
        self._step = 0
        self.concurrency: dict[str, Any] = {}  # what a concurrent run did (jobs, budget, peaks), for the summary

    def _index(self) -> str:
        self._step = min(self._step + 1, self._total)
        return f"[{self._step}/{self._total}] "

    def run_stage(self, stage: Stage, *, index: str | None = None) -> Record:
        """STAGE's record: found in the work dir or cache, or computed now from its inputs' records."""
        needs = {}
        missing = []
        for name in stage.needs:
            record = self.store.find(self.plan.stage(name))
            if record is None:
                missing.append(name)
            else:
                needs[name] = record
        if missing:
            where = f"{self.store.root}" + (f" or {self.store.remote.url}" if self.store.remote is not None else "")
            raise StageError(f"stage {stage.name} needs {', '.join(missing)}, not in the stage cache ({where}); "
                             f"run `--stage {','.join(missing)}` first (with the same --cache)")
        ctx = StageContext(self.cfg, self.inputs, needs)
        error = MergeError if stage.kind == StageKind.MERGE else QuantizeError
        return self.store.run(stage, lambda out: RUNNERS[stage.kind](stage, ctx, out), index=index or self._index(), error=error)

    def run_concurrently(self, *, jobs: int, memory_budget: int) -> dict[str, Record]:
        """Every stage, each in its own process, as many at once as JOBS and MEMORY_BUDGET allow
        (release/schedule.py); the same records, cache and results as running them one after another."""
        import threading

        from hubtool import progress
        from hubtool.release.schedule import GB, memory_estimate, run_graph, stage_threads, tree_rss
        from hubtool.release.worker import StageRun, WorkerPool

        plan = self.plan
        index = {s.name: f"[{i}/{self._total}] " for i, s in enumerate(plan.stages, 1)}
        self._step = len(plan.stages)
        lock = threading.Lock()

        def emit(line: str) -> None:
            with lock:
                log(line)

        def cached(stage: Stage) -> bool:
            if self.store.find(stage) is None:
                return False
            self.run_stage(stage, index=index[stage.name])
            return True

        pool = WorkerPool(emit)
        threads = stage_threads(jobs)  # GPTQ keeps every core (schedule.THREAD_SENSITIVE)

        def launch(stage: Stage) -> StageRun:
            job = {"cfg": self.cfg, "plan": plan, "inputs": self.inputs, "work_dir": self.work_dir,
                   "cache": self.store.remote.url if self.store.remote else None, "endpoint": self.endpoint, "token": self.token,
                   "stage": stage.name, "index": index[stage.name], "verbose": not progress.library_output_discarded(),
                   "threads": stage_threads(jobs, stage.kind)}
            return pool.launch(stage.name, job, cleanup=lambda: self.store.discard_unfinished(stage))

        log(f"running up to {jobs} stage(s) at once, {threads} thread(s) each, memory budget {memory_budget / GB:.1f} GB "
            f"(estimates: {', '.join(f'{s.name} {memory_estimate(s, plan.params) / GB:.1f}' for s in plan.stages)} GB)")
        self.save()  # the input hashes the plan computed, for the stage processes to reuse
        try:
            out = run_graph(plan.stages, jobs=jobs, budget=memory_budget, cost=lambda s: memory_estimate(s, plan.params), launch=launch,
                            cached=cached, sample=lambda: tree_rss(os.getpid()))
        finally:
            pool.close()
        for name, result in out.results.items():
            for entry in result["ran"]:
                self.store.ran.append({**entry, "peak_rss_bytes": int(result.get("peak_rss", 0)), "threads": result.get("threads")})
        order = {s.name: i for i, s in enumerate(plan.stages)}
        self.store.ran.sort(key=lambda e: order.get(e["name"], len(order)))
        self.concurrency = {"jobs": jobs, "threads_per_stage": threads, "memory_budget_bytes": memory_budget, "max_running": out.max_jobs,
                            "max_estimate_bytes": out.max_estimate, "peak_tree_rss_bytes": out.peak_rss,
                            "worker_processes": pool.started}
        found = {s.name: self.store.find(s) for s in plan.stages}
        missing = [n for n, r in found.items() if r is None]
        if missing:
            raise StageError(f"stage(s) {', '.join(missing)} finished without a record in {self.store.root}; re-run to resume")
        return found  # type: ignore[return-value]

    def records(self) -> dict[str, Record]:
        """Every stage's record, or a StageError naming the stages that aren't done."""
        found = {s.name: self.store.find(s) for s in self.plan.stages}
        missing = [name for name, r in found.items() if r is None]
        if missing:
            raise StageError(f"cannot publish yet: {len(missing)} stage(s) not done: {', '.join(missing)}; run them with "
                             "`--stage NAME` (with the same --cache), or run the release without --publish")
        for s in self.plan.stages:
            self.store.ran.append({"name": s.name, "key": s.key, "cached": True, "seconds": 0.0, "out": str(found[s.name].folder)})  # type: ignore[union-attr]
        return found  # type: ignore[return-value]

    def publish(self, records: dict[str, Record], *, create_pr: bool = False) -> dict[str, Any]:
        """Quality gates, cards, pushes; the release summary."""
        quality = self._quality(records)
        samples = [row for s in self.plan.stages if isinstance(records.get(s.name), ServeAnswers) for row in records[s.name].rows()]  # type: ignore[attr-defined]
        self._write_quality(quality, samples)
        log(f"{self._index()}cards")
        choice = choose_load_dtype(fp16_folder(self.inputs, records), self.inputs.weights, trust_remote_code=self.cfg.trust_remote_code)
        if choice.warning:
            log(f"warning: {choice.warning}")
        folders = build_publish_folders(self.cfg, self.plan, self.inputs, records, quality, self.work_dir, self.hasher,
                                        hub_url=card_hub_url(self.endpoint), load_dtype=choice.dtype, samples=samples)
        check_published(folders, self.inputs, choice.dtype, trust_remote_code=self.cfg.trust_remote_code)  # every repo loads as its card says, before any push
        log(f"{self._index()}push")
        pushes = push_all(self.cfg, self.plan, folders, endpoint=self.endpoint, token=self.token, create_pr=create_pr)
        collection = self._collection()
        results = quality.as_results() if quality is not None else {}
        return {
            "ok": True,
            "name": self.cfg.name,
            "namespace": self.cfg.namespace,
            "repos": pushes,
            "quality": results.get("rows", []),
            "quality_context": {k: v for k, v in results.items() if k != "rows"},
            "samples": samples,
            "stages": self.store.ran,
            "work_dir": str(self.work_dir),
            **({"collection": {"slug": collection.slug, "url": collection.url, "created": collection.created,
                               "changes": collection.changes}} if collection is not None else {}),
            **({"concurrency": self.concurrency} if self.concurrency else {}),
        }

    def _write_quality(self, quality: QualityResult | None, samples: list[dict[str, Any]]) -> None:
        """WORK/quality.json: every verification row and every served answer (`samples`), as the cards read them."""
        from hubtool.atomic import staged_file
        from hubtool.quality.results import RESULTS_FILE

        data = {**(quality.as_results() if quality is not None else {"rows": []}), "samples": samples}
        with staged_file(self.work_dir / RESULTS_FILE, overwrite=True) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    def _collection(self) -> Any:
        """The release's Hub collection (created or brought up to date), after every repo exists."""
        from hubtool.release.collection import collection_items, publish_collection

        if self.cfg.collection_title is None:
            return None
        try:
            result = publish_collection(self.cfg.collection_title, self.cfg.namespace, collection_items(self.plan.targets),
                                        description=self.cfg.collection_description, private=self.cfg.private,
                                        endpoint=self.endpoint, token=self.token)
        except Exception as exc:  # the repos are published; a collection the token may not create is not worth failing for
            from hubtool.push import scrub

            log(f"warning: collection {self.cfg.collection_title!r} not updated: {scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self.token)}; "
                "the repos are published (set `collection: false` in release.yaml to skip it)")
            return None
        state = "created" if result.created else (f"{result.changes} change(s)" if result.changes else "unchanged")
        log(f"collection: {result.slug} ({state})")
        return result

    def _quality(self, records: dict[str, Record]) -> QualityResult | None:
        """Every verification stage's rows in plan order, checked against the gates before any card or push
        (after the cached measurements, so relaxing a gate re-measures nothing)."""
        from hubtool.quality.gates import DEFAULT_GATES, check_rows

        results = [records[s.name] for s in self.plan.stages if s.kind in (StageKind.VERIFY_GPTQ, StageKind.VERIFY_GGUF)]
        if not results:
            return None
        context: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        seen: set[tuple[Any, Any]] = set()
        for r in results:
            assert isinstance(r, QualityResult)
            data = r.as_results()
            for k, v in data.items():
                if k != "rows":
                    context.setdefault(k, v)
            for row in data["rows"]:
                if (row.get("kind"), row.get("variant")) not in seen:
                    seen.add((row.get("kind"), row.get("variant")))
                    rows.append(row)
        combined = QualityResult.from_results(self.work_dir, {**context, "rows": rows})
        check_rows(rows, self.cfg.verify_gates or DEFAULT_GATES, how_to_change="verify.gates in release.yaml")
        return combined

    def save(self) -> None:
        self.hasher.save()


def run_release(cfg: ReleaseConfig, plan: Plan, inputs: Inputs, *, work_dir: Path, endpoint: str | None = None, token: str | None = None,
                create_pr: bool = False, cache: str | None = None, hasher: Hasher | None = None, jobs: int | None = None,
                memory_budget: int | None = None) -> dict[str, Any]:
    """The whole release: every stage, then publish. With JOBS (else release.yaml `jobs:`, else
    schedule.default_jobs()) above 1, independent stages run at once in their own processes within
    MEMORY_BUDGET bytes (else `memory_budget:`, else 80 % of the available RAM); with 1, in plan order in
    this process.

    With `create_pr`, each existing repo/branch is changed through a pull request (`pr_url` in
    its row) instead of a direct commit; new repos/branches are created directly."""
    session = Session(cfg, plan, inputs, work_dir=work_dir, hasher=hasher, cache=cache, endpoint=endpoint, token=token)
    try:
        preflight_cards(cfg, plan, inputs)
        from hubtool.release.schedule import default_jobs, default_memory_budget

        jobs = jobs or cfg.jobs or default_jobs(plan.params)
        if jobs > 1 and len(plan.stages) > 1:
            records = session.run_concurrently(jobs=jobs, memory_budget=memory_budget or cfg.memory_budget or default_memory_budget())
        else:
            records = {s.name: session.run_stage(s) for s in plan.stages}
        return session.publish(records, create_pr=create_pr)
    finally:
        session.save()


def run_stages(cfg: ReleaseConfig, plan: Plan, inputs: Inputs, names: list[str], *, work_dir: Path, cache: str | None = None,
               endpoint: str | None = None, token: str | None = None, hasher: Hasher | None = None) -> dict[str, Any]:
    """Exactly the named stages, in the order given (a chain: each may need the one before); their inputs
    must already be in the work dir or the cache."""
    by_name = {s.name.lower(): s for s in plan.stages}
    unknown = [n for n in names if n.strip().lower() not in by_name]
    if unknown:
        raise InputError(f"--stage {','.join(unknown)}: not a stage of this release; its stages are: {', '.join(s.name for s in plan.stages)}")
    stages = [by_name[n.strip().lower()] for n in names]
    session = Session(cfg, plan, inputs, work_dir=work_dir, hasher=hasher, cache=cache, endpoint=endpoint, token=token)
    try:
        for i, stage in enumerate(stages, 1):
            session.run_stage(stage, index=f"[{i}/{len(stages)}] ")
    finally:
        session.save()
    return {"ok": True, "name": cfg.name, "stages": session.store.ran, "work_dir": str(session.work_dir)}


def publish(cfg: ReleaseConfig, plan: Plan, inputs: Inputs, *, work_dir: Path, cache: str | None = None, endpoint: str | None = None,
            token: str | None = None, create_pr: bool = False, hasher: Hasher | None = None) -> dict[str, Any]:
    """Cards and pushes for a release whose stages all ran (anywhere that shares the cache)."""
    session = Session(cfg, plan, inputs, work_dir=work_dir, hasher=hasher, cache=cache, endpoint=endpoint, token=token)
    try:
        preflight_cards(cfg, plan, inputs)
        return session.publish(session.records(), create_pr=create_pr)
    finally:
        session.save()
