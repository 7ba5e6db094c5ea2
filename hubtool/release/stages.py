"""Run a planned release: merge -> quantize (each preset/type) -> verify -> cards -> push.

Every stage writes into WORK/stages/<stage>-<key>/out, where the key is a hash of the stage's
inputs (content hashes of the folders it reads) and options. A stage counts as done once its
stage.json is written, last; so a re-run after a failure redoes only unfinished stages, and a
re-run with nothing changed recomputes nothing. Cards are re-rendered (cheap, deterministic) and
pushes are idempotent (the Hub skips unchanged files, no empty commits), so it uploads nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from hubtool import __version__
from hubtool.errors import HubtoolError, InputError, MergeError, QuantizeError, from_os_error, is_disk_error
from hubtool.progress import log
from hubtool.release.cache import Hasher, digest_of
from hubtool.release.config import ReleaseConfig
from hubtool.release.plan import Plan, Target

STAGE_RECORD = "stage.json"


@dataclass
class StageResult:
    name: str
    key: str
    cached: bool
    seconds: float
    out: Path
    summary: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


class StageCache:
    """Runs a stage unless WORK/stages/<name>-<key>/stage.json says it already finished."""

    def __init__(self, work_dir: Path) -> None:
        self.root = Path(work_dir) / "stages"
        self.results: list[StageResult] = []

    def run(self, name: str, inputs: dict[str, Any], fn: Callable[[Path], dict[str, Any]], *, index: str = "",
            error: type[HubtoolError] = QuantizeError) -> StageResult:
        key = digest_of({"stage": name, "hubtool": __version__, **inputs})[:20]
        folder = self.root / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}-{key}"
        record = folder / STAGE_RECORD
        if record.is_file():
            data = json.loads(record.read_text(encoding="utf-8"))
            log(f"{index}{name}: cached ({folder})")
            result = StageResult(name, key, True, 0.0, folder / "out", data.get("summary", {}))
        else:
            log(f"{index}{name}: running")
            if folder.exists():  # an earlier attempt that never finished (killed, crashed): start clean
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            start = time.monotonic()
            try:
                summary = fn(folder / "out")
            except HubtoolError:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            except BaseException as exc:
                shutil.rmtree(folder, ignore_errors=True)  # no half-written stage output survives a failure or SIGTERM
                if not isinstance(exc, Exception):
                    raise
                if is_disk_error(exc):  # the machine's fault, not the input's: say so
                    raise from_os_error(exc, self.root, error=error) from None
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                raise error(f"{name}: failed ({type(exc).__name__}: {first}); finished stages are cached in {self.root}, "
                            "fix the cause and re-run to resume") from exc
            seconds = round(time.monotonic() - start, 1)
            tmp = folder / f".{STAGE_RECORD}.tmp"
            tmp.write_text(json.dumps({"name": name, "key": key, "inputs": inputs, "summary": summary, "seconds": seconds}, indent=2, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, record)
            log(f"{index}{name}: done in {seconds:.0f} s")
            result = StageResult(name, key, False, seconds, folder / "out", summary)
        self.results.append(result)
        return result


@dataclass
class Inputs:
    source: Path | None
    base: Path | None
    adapter: Path | None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _text_id(spec: str, hasher: Hasher) -> str:
    """A text source's identity: the builtin name, or the file's content hash."""
    if spec.startswith("builtin"):
        return spec
    if not Path(spec).is_file():
        raise InputError(f"{spec}: text file not found; fix gptq.calibration / verify.text in release.yaml or use 'builtin'")
    return hasher.file(Path(spec))


def run_release(
    cfg: ReleaseConfig,
    plan: Plan,
    inputs: Inputs,
    *,
    work_dir: Path,
    endpoint: str | None = None,
    token: str | None = None,
    create_pr: bool = False,
) -> dict[str, Any]:
    """Do the planned release; returns the summary (repos, commits, file hashes, quality, stages).

    With `create_pr`, each existing repo/branch is changed through a pull request (`pr_url` in
    its row) instead of a direct commit; new repos/branches are created directly."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    hasher = Hasher(work_dir)
    cache = StageCache(work_dir)
    n_total = len(plan.stages)
    counter = iter(range(1, n_total + 1))

    def idx() -> str:
        return f"[{next(counter, n_total)}/{n_total}] "

    try:
        preflight_cards(cfg, plan, inputs)
        fp16_dir, fp16_id = _fp16_stage(cfg, inputs, hasher, cache, idx)
        gptq_results = _gptq_stages(cfg, plan, fp16_dir, fp16_id, hasher, cache, idx)
        gguf_results = _gguf_stages(cfg, fp16_dir, fp16_id, cache, idx)
        results = _verify_stage(cfg, fp16_dir, gptq_results, gguf_results, hasher, cache, idx) if "verify" in plan.stages else None
        log(f"{idx()}cards")
        folders = build_publish_folders(cfg, plan, inputs, fp16_dir, gptq_results, gguf_results, results, work_dir, hasher,
                                        hub_url=_card_hub_url(endpoint))
        log(f"{idx()}push")
        pushes = push_all(cfg, plan, folders, endpoint=endpoint, token=token, create_pr=create_pr)
    finally:
        hasher.save()
    return {
        "ok": True,
        "name": cfg.name,
        "namespace": cfg.namespace,
        "repos": pushes,
        "quality": (results or {}).get("rows", []),
        "quality_context": {k: v for k, v in (results or {}).items() if k != "rows"},
        "stages": [r.as_dict() for r in cache.results],
        "work_dir": str(work_dir),
    }


def preflight_cards(cfg: ReleaseConfig, plan: Plan, inputs: Inputs) -> None:
    """Render the cards that need no outputs yet, so metadata mistakes fail before hours of work."""
    from hubtool.card import render_card

    repos = _repos(cfg, plan)
    first = Path(inputs.base if inputs.adapter is not None else inputs.source)  # type: ignore[arg-type]
    render_card("merged", first, meta=cfg.card, release={"repos": repos, **_source_card(inputs)})
    if inputs.adapter is not None:
        render_card("adapter", inputs.adapter, meta=cfg.card, release={"repos": repos, **_source_card(inputs)})


def _repos(cfg: ReleaseConfig, plan: Plan) -> dict[str, str]:
    return {t.key: t.repo_id for t in plan.targets}


def _source_card(inputs: Inputs) -> dict[str, str]:
    """The original model's card (carried metadata, embedded text): the base's, else the source's."""
    folder = inputs.base if inputs.adapter is not None else inputs.source
    card = Path(folder) / "README.md" if folder is not None else None
    return {"source_card": str(card)} if card is not None and card.is_file() else {}


def _fp16_stage(cfg: ReleaseConfig, inputs: Inputs, hasher: Hasher, cache: StageCache, idx: Callable[[], str]) -> tuple[Path, str]:
    if inputs.adapter is None:
        assert inputs.source is not None
        return inputs.source, hasher.folder(inputs.source)
    from hubtool.merge import merge_adapter

    def merge(out: Path) -> dict[str, Any]:
        summary = merge_adapter(inputs.base, inputs.adapter, out, dtype=cfg.dtype, rope=cfg.rope,  # type: ignore[arg-type]
                                max_position_embeddings=cfg.max_position_embeddings, overwrite=True)
        return _jsonable({k: v for k, v in asdict(summary).items() if k != "out_dir"})

    stage = cache.run("merge", {
        "base": hasher.folder(inputs.base),  # type: ignore[arg-type]
        "adapter": hasher.folder(inputs.adapter),
        "rope": cfg.rope, "max_position_embeddings": cfg.max_position_embeddings, "dtype": cfg.dtype,
    }, merge, index=idx(), error=MergeError)
    return stage.out, stage.key


def _gptq_stages(cfg: ReleaseConfig, plan: Plan, fp16_dir: Path, fp16_id: str, hasher: Hasher, cache: StageCache, idx: Callable[[], str]) -> dict[str, StageResult]:
    from hubtool.gptq import load_preset, quantize_gptq

    out: dict[str, StageResult] = {}
    for target in (t for t in plan.targets if t.key == "gptq"):
        preset = load_preset(target.preset, cfg.gptq_overrides)  # type: ignore[arg-type]

        def quantize(dst: Path, preset=preset) -> dict[str, Any]:
            return _jsonable(quantize_gptq(fp16_dir, dst, preset, calibration=cfg.gptq_calibration, device=cfg.gptq_device, overwrite=True))

        inputs = {"fp16": fp16_id, "preset": preset.to_dict(), "calibration": _text_id(cfg.gptq_calibration, hasher)}
        out[target.preset] = cache.run(f"gptq:{preset.name}", inputs, quantize, index=idx())  # type: ignore[index]
    return out


def _gguf_stages(cfg: ReleaseConfig, fp16_dir: Path, fp16_id: str, cache: StageCache, idx: Callable[[], str]) -> dict[str, StageResult]:
    from hubtool.gguf import export_gguf
    from hubtool.gguf.convert import base_type
    from hubtool.model_dir import read_json

    if not cfg.gguf_types:
        return {}

    def convert(dst: Path) -> dict[str, Any]:
        rows = export_gguf(fp16_dir, dst, [base], name=cfg.name, split_max_size="0", overwrite=True)
        return {"file": Path(rows[0]["file"]).name}

    # Convert once to an unsplit 16-bit GGUF (its own cached stage); every type is quantized from it.
    base = base_type(read_json(fp16_dir / "config.json"))
    converted = cache.run(f"gguf:{base}-base", {"fp16": fp16_id, "name": cfg.name}, convert, index=idx())
    base_file = converted.out / converted.summary["file"]

    out: dict[str, StageResult] = {}
    for gguf_type in cfg.gguf_types:
        def export(dst: Path, gguf_type=gguf_type) -> dict[str, Any]:
            rows = export_gguf(fp16_dir, dst, [gguf_type], name=cfg.name, split_max_size=cfg.gguf_split_max_size, overwrite=True,
                               base_gguf=base_file)
            return {"files": [{**r, "file": Path(r["file"]).name} for r in rows]}

        inputs = {"fp16": fp16_id, "type": gguf_type, "name": cfg.name, "split_max_size": cfg.gguf_split_max_size}
        out[gguf_type] = cache.run(f"gguf:{gguf_type}", inputs, export, index=idx())
    return out


def _verify_stage(cfg: ReleaseConfig, fp16_dir: Path, gptq: dict[str, StageResult], gguf: dict[str, StageResult],
                  hasher: Hasher, cache: StageCache, idx: Callable[[], str]) -> dict[str, Any]:
    """Measure every artifact against the fp16 model; one cached stage per artifact, rows combined."""
    from hubtool.quality import read_results

    opts = {"text": _text_id(cfg.verify_text, hasher), "max_tokens": cfg.verify_max_tokens, "context": cfg.verify_context}
    prefix = idx()
    combined: dict[str, Any] = {"rows": []}
    for stage in gptq.values():
        def verify(dst: Path, stage=stage) -> dict[str, Any]:
            from hubtool.gptq import verify_gptq

            dst.mkdir(parents=True, exist_ok=True)
            rows = verify_gptq(stage.out, fp16_dir, text=cfg.verify_text, rtn=cfg.verify_rtn, results_path=dst / "quality.json",
                               context=cfg.verify_context, max_tokens=cfg.verify_max_tokens)
            return {"rows": rows}

        done = cache.run(f"verify:{stage.name}", {"artifact": stage.key, "rtn": cfg.verify_rtn, **opts}, verify, index=prefix)
        _combine(combined, read_results(done.out / "quality.json"))
    if gguf:  # one call for every GGUF: the fp16 reference logits are computed once
        def verify_all(dst: Path) -> dict[str, Any]:
            from hubtool.gguf import verify_gguf

            dst.mkdir(parents=True, exist_ok=True)
            rows = verify_gguf([stage.out for stage in gguf.values()], fp16_dir, text=cfg.verify_text, max_tokens=cfg.verify_max_tokens,
                               context=cfg.verify_context, results_path=dst / "quality.json")
            return {"rows": rows}

        done = cache.run("verify:gguf", {"artifacts": [stage.key for stage in gguf.values()], **opts}, verify_all, index=prefix)
        _combine(combined, read_results(done.out / "quality.json"))
    from hubtool.quality_gates import DEFAULT_GATES, check_rows

    # after the (cached) measurements, before any card or push: relaxing the gates re-measures nothing
    check_rows(combined["rows"], cfg.verify_gates or DEFAULT_GATES, how_to_change="verify.gates in release.yaml")
    return combined


def _combine(into: dict[str, Any], results: dict[str, Any]) -> None:
    for k, v in results.items():
        if k != "rows":
            into.setdefault(k, v)
    seen = {(r.get("kind"), r.get("variant")) for r in into["rows"]}
    into["rows"] += [r for r in results.get("rows", []) if (r.get("kind"), r.get("variant")) not in seen]


# ---- cards and the folders that get pushed ---------------------------------------------------

@dataclass
class PublishFolder:
    target: Target
    folder: Path
    hashes: dict[str, str]


def _link_into(src_dir: Path, dst: Path, files: dict[str, Path]) -> None:
    """Hard-link (copy across filesystems) the artifact's files into the publish folder; README.md is ours."""
    from hubtool.release.plan import publishable

    for p in sorted(src_dir.rglob("*")):
        rel = p.relative_to(src_dir)
        if not p.is_file() or not publishable(rel):
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, target)
        except OSError:
            shutil.copy2(p, target)
        files[rel.as_posix()] = p


def _card_hub_url(endpoint: str | None) -> str | None:
    """Where the cards' repo links point: huggingface.co, or for any other Hub (a local rehearsal) root-relative
    links ("/org/name"), which open on whichever Hub serves the card and do not change with its port."""
    from hubtool.push import resolve_endpoint

    url = resolve_endpoint(endpoint).rstrip("/")
    return None if url in ("https://huggingface.co", "https://hf.co") else "/"


def build_publish_folders(cfg: ReleaseConfig, plan: Plan, inputs: Inputs, fp16_dir: Path, gptq: dict[str, StageResult],
                          gguf: dict[str, StageResult], results: dict[str, Any] | None, work_dir: Path, hasher: Hasher,
                          *, hub_url: str | None = None) -> list[PublishFolder]:
    """WORK/publish/<n>-<repo>@<branch>: the artifact's files plus its rendered, checked README.md."""
    from hubtool.card import render_card

    root = work_dir / "publish"
    if root.exists():
        shutil.rmtree(root)
    repos = _repos(cfg, plan)
    gptq_variants = []
    for t in (t for t in plan.targets if t.key == "gptq"):
        s = gptq[t.preset]  # type: ignore[index]
        p = s.summary.get("preset", {})
        gptq_variants.append({
            "branch": t.branch, "bits": p.get("bits"), "group_size": p.get("group_size"), "desc_act": p.get("desc_act"),
            "damp_percent": p.get("damp_percent"), "seq_len": p.get("seq_len"), "size_bytes": s.summary.get("size_bytes"),
            "dataset": (s.summary.get("calibration") or {}).get("source"),
        })
    release = {"repos": repos, "gptq_variants": gptq_variants, **_source_card(inputs), **({"hub_url": hub_url} if hub_url else {})}
    kinds = {"fp16": "merged", "adapter": "adapter", "gptq": "gptq", "gguf": "gguf"}
    notes: set[str] = set()
    out: list[PublishFolder] = []
    for i, t in enumerate(plan.targets):
        folder = root / f"{i:02d}-{t.repo_id.replace('/', '--')}@{t.branch}"
        folder.mkdir(parents=True)
        files: dict[str, Path] = {}
        if t.key == "fp16":
            _link_into(fp16_dir, folder, files)
        elif t.key == "adapter":
            _link_into(inputs.adapter, folder, files)  # type: ignore[arg-type]
        elif t.key == "gptq":
            _link_into(gptq[t.preset].out, folder, files)  # type: ignore[index]
        else:
            for stage in gguf.values():
                _link_into(stage.out, folder, files)
        _portable_tokenizer(folder, files, notes)
        text = render_card(kinds[t.key], folder, meta=cfg.card, results=results, release=release)
        (folder / "README.md").write_text(text, encoding="utf-8")
        hashes = {rel: hasher.file(src) for rel, src in files.items()}
        hashes["README.md"] = hasher.file(folder / "README.md")
        out.append(PublishFolder(t, folder, dict(sorted(hashes.items()))))
        log(f"card: {t.repo_id}@{t.branch} README.md ({kinds[t.key]})")
    return out


def _portable_tokenizer(folder: Path, files: dict[str, Path], notes: set[str]) -> None:
    """Publish a tokenizer_config.json that transformers 4.x loads too (the linked one may name a 5-only class)."""
    from hubtool.tokenizer_compat import portable_tokenizer_config

    if "tokenizer_config.json" not in files:
        return
    portable = portable_tokenizer_config(files["tokenizer_config.json"].parent)
    if portable is None:
        return
    if portable.note and portable.note not in notes:
        notes.add(portable.note)
        log(f"{'tokenizer' if portable.changed else 'warning'}: {portable.note}")
    if portable.changed:
        target = folder / "tokenizer_config.json"
        target.unlink()  # a hard link to the artifact's own file: never write through it
        target.write_text(json.dumps(portable.config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        files["tokenizer_config.json"] = target


def push_all(cfg: ReleaseConfig, plan: Plan, folders: list[PublishFolder], *, endpoint: str | None, token: str | None,
             create_pr: bool = False) -> list[dict[str, Any]]:
    """Push every folder; main branches first so branches can be created from them."""
    from hubtool.push import push_folder

    ordered = sorted(folders, key=lambda f: f.target.branch != "main")
    rows = []
    for f in ordered:
        t = f.target
        result = push_folder(
            f.folder, t.repo_id, branch=None if t.branch == "main" else t.branch, private=cfg.private,
            message=f"hubtool release {cfg.name}: {t.what}", endpoint=endpoint, token=token,
            delete_missing=t.branch != "main",  # a branch starts as a copy of main: drop main's files it does not have
            create_pr=create_pr,
        )
        state = "uploaded " + f"{result.files_uploaded} file(s)" if result.changed else "unchanged"
        if result.pr_url:
            state = f"pull request {result.pr_url} ({result.files_uploaded} file(s) changed)"
        log(f"push: {t.repo_id}@{t.branch}: {state} (commit {result.commit_sha[:12]})")
        rows.append({
            "key": t.key, "repo_id": t.repo_id, "branch": t.branch, "what": t.what, "url": result.repo_url,
            "commit": result.commit_sha, "commit_url": result.commit_url, "changed": result.changed,
            "files_uploaded": result.files_uploaded, "files_deleted": result.files_deleted, "files": f.hashes,
            "pr_url": result.pr_url,
        })
    return rows


def check_inputs(source: Path | None, base: Path | None, adapter: Path | None) -> Inputs:
    """Exactly one of SOURCE or --base/--adapter, all existing folders."""
    if source is not None and (base is not None or adapter is not None):
        raise InputError("give SOURCE (a merged model folder) or --base and --adapter, not both")
    if source is None and (base is None or adapter is None):
        raise InputError("give SOURCE (a merged model folder), or both --base BASE and --adapter ADAPTER to merge first")
    for flag, p in (("SOURCE", source), ("--base", base), ("--adapter", adapter)):
        if p is not None and not Path(p).is_dir():
            raise InputError(f"{p}: {flag} folder not found")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise InputError(f"{adapter}: no adapter_config.json; --adapter must be a PEFT adapter folder")
    return Inputs(Path(source) if source else None, Path(base) if base else None, Path(adapter) if adapter else None)
