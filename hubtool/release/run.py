"""Run a planned release: every stage (or the ones named), then publish (cards + push).

Each stage's output lands in WORK/stages/<name>-<key>/ (release/store.py), so a re-run after a
failure redoes only unfinished stages and a re-run with nothing changed recomputes nothing. The
same plan can be split over machines: `run_stages` runs named stages whose inputs are in the
(shared) cache, `publish` renders the cards and pushes once every stage is there. Cards are
re-rendered (cheap, deterministic) and pushes are idempotent (the Hub skips unchanged files, no
empty commits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubtool.artifacts import QualityResult, Record
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
        log(f"{self._index()}cards")
        choice = choose_load_dtype(fp16_folder(self.inputs, records), self.inputs.weights)
        if choice.warning:
            log(f"warning: {choice.warning}")
        folders = build_publish_folders(self.cfg, self.plan, self.inputs, records, quality, self.work_dir, self.hasher,
                                        hub_url=card_hub_url(self.endpoint), load_dtype=choice.dtype)
        check_published(folders, self.inputs, choice.dtype)  # every repo loads as its card says, before any push
        log(f"{self._index()}push")
        pushes = push_all(self.cfg, self.plan, folders, endpoint=self.endpoint, token=self.token, create_pr=create_pr)
        results = quality.as_results() if quality is not None else {}
        return {
            "ok": True,
            "name": self.cfg.name,
            "namespace": self.cfg.namespace,
            "repos": pushes,
            "quality": results.get("rows", []),
            "quality_context": {k: v for k, v in results.items() if k != "rows"},
            "stages": self.store.ran,
            "work_dir": str(self.work_dir),
        }

    def _quality(self, records: dict[str, Record]) -> QualityResult | None:
        """Every verification stage's rows in plan order, checked against the gates before any card or push
        (after the cached measurements, so relaxing a gate re-measures nothing)."""
        from hubtool.quality_gates import DEFAULT_GATES, check_rows

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
                create_pr: bool = False, cache: str | None = None, hasher: Hasher | None = None) -> dict[str, Any]:
    """The whole release in this process: every stage in plan order, then publish.

    With `create_pr`, each existing repo/branch is changed through a pull request (`pr_url` in
    its row) instead of a direct commit; new repos/branches are created directly."""
    session = Session(cfg, plan, inputs, work_dir=work_dir, hasher=hasher, cache=cache, endpoint=endpoint, token=token)
    try:
        preflight_cards(cfg, plan, inputs)
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
