"""Publishing a release: one folder per repo/branch (the stage outputs, hard-linked, plus the rendered
card), then the pushes. Runs once every stage is done, in the process that runs the whole release or
in a separate `--publish` job."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from hubtool.artifacts import ArtifactKind, MergedModel, QualityResult, Record
from hubtool.progress import log
from hubtool.release.cache import Hasher
from hubtool.release.config import ReleaseConfig
from hubtool.release.graph import Inputs
from hubtool.release.plan import Plan, Target
from hubtool.release.portable import check_no_local_paths, configured_base, local_paths, rewrite_base_configs


def preflight_cards(cfg: ReleaseConfig, plan: Plan, inputs: Inputs) -> None:
    """Render the cards that need no outputs yet, so metadata mistakes fail before hours of work."""
    from hubtool.card import render_card

    release = {"repos": _repos(plan), **_source_card(inputs)}
    render_card(ArtifactKind.FP16.value, inputs.weights, meta=cfg.card, release=release)
    if inputs.adapter is not None:
        render_card(ArtifactKind.ADAPTER.value, inputs.adapter, meta=cfg.card, release=release)


def _repos(plan: Plan) -> dict[str, str]:
    return {t.key.value: t.repo_id for t in plan.targets}


def _source_card(inputs: Inputs) -> dict[str, str]:
    """The original model's card (carried metadata, embedded text): the base's, else the source's."""
    card = inputs.weights / "README.md"
    return {"source_card": str(card)} if card.is_file() else {}


def release_local_paths(cfg: ReleaseConfig, inputs: Inputs, work_dir: Path) -> list[str]:
    """This machine's paths a published file must not contain: inputs, work dir, text files, the adapter's local base."""
    import json as _json

    extra = []
    if inputs.adapter is not None and (inputs.adapter / "adapter_config.json").is_file():
        from hubtool.release.portable import is_local

        base = _json.loads((inputs.adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        if isinstance(base, str) and is_local(base) and base != configured_base(cfg.card):
            extra.append(base)
    texts = [t for t in (cfg.verify_text, cfg.gptq_calibration) if Path(t).exists()]  # a file or folder here, not a dataset id
    return local_paths([inputs.source, inputs.base, inputs.adapter, work_dir, *texts], extra)


def card_hub_url(endpoint: str | None) -> str | None:
    """Where the cards' repo links point: huggingface.co, or for any other Hub (a local rehearsal) root-relative
    links ("/org/name"), which open on whichever Hub serves the card and do not change with its port."""
    from hubtool.push import resolve_endpoint

    url = resolve_endpoint(endpoint).rstrip("/")
    return None if url in ("https://huggingface.co", "https://hf.co") else "/"


@dataclass(frozen=True)
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


def _link_into_file(src: Path, dst: Path, files: dict[str, Path]) -> None:
    try:
        os.link(src, dst / src.name)
    except OSError:
        shutil.copy2(src, dst / src.name)
    files[src.name] = src


def build_publish_folders(cfg: ReleaseConfig, plan: Plan, inputs: Inputs, records: Mapping[str, Record],
                          quality: QualityResult | None, work_dir: Path, hasher: Hasher, *, hub_url: str | None = None,
                          load_dtype: str = "auto", samples: list[dict[str, Any]] | None = None) -> list[PublishFolder]:
    """WORK/publish/<n>-<repo>@<branch>: the artifact's files plus its rendered, checked README.md (with its
    "Sample output" from SAMPLES, the serve check's answers)."""
    from hubtool.card import render_card
    from hubtool.model_dir import read_json, remote_code_files

    root = work_dir / "publish"
    if root.exists():
        shutil.rmtree(root)
    fp16_dir = fp16_folder(inputs, records)
    gptq_variants = [records[t.stages[0]].card_row(t.branch) for t in plan.targets if t.key is ArtifactKind.GPTQ]  # type: ignore[attr-defined]
    release = {"repos": _repos(plan), "gptq_variants": gptq_variants, **_source_card(inputs), **({"hub_url": hub_url} if hub_url else {}),
               **({"load_dtype": load_dtype} if load_dtype != "auto" else {})}
    results = quality.as_results() if quality is not None else None
    if results is not None and cfg.verify_dataset:
        results["dataset"] = cfg.verify_dataset
    base_id = configured_base(cfg.card)
    needles = release_local_paths(cfg, inputs, work_dir)
    notes: set[str] = set()
    out: list[PublishFolder] = []
    for i, t in enumerate(plan.targets):
        folder = root / f"{i:02d}-{t.repo_id.replace('/', '--')}@{t.branch}"
        folder.mkdir(parents=True)
        files: dict[str, Path] = {}
        if t.key is ArtifactKind.FP16:
            _link_into(fp16_dir, folder, files)
        elif t.key is ArtifactKind.ADAPTER:
            _link_into(inputs.adapter, folder, files)  # type: ignore[arg-type]
        else:
            for name in t.stages:
                _link_into(records[name].folder, folder, files)
            if t.key is ArtifactKind.GGUF:
                for code in remote_code_files(fp16_dir, read_json(fp16_dir / "config.json")):  # custom code ships in every repo
                    _link_into_file(code, folder, files)
        if t.key is ArtifactKind.GGUF and results is not None:
            _frontier_plot(folder, files, results, title=f"{cfg.name} GGUF: file size vs KL divergence")
        _portable_tokenizer(folder, files, notes)
        rewrite_base_configs(folder, files, base_id)
        own = _own_samples(t, records, samples or [])
        card_results = {**(results or {"rows": []}), "samples": own} if own else results
        text = render_card(t.key.value, folder, meta=cfg.card, results=card_results, release=release)
        (folder / "README.md").write_text(text, encoding="utf-8")
        check_no_local_paths(folder, needles, what=f"{t.repo_id}@{t.branch}")
        hashes = {rel: hasher.file(src) for rel, src in files.items()}
        hashes["README.md"] = hasher.file(folder / "README.md")
        out.append(PublishFolder(t, folder, dict(sorted(hashes.items()))))
        log(f"card: {t.repo_id}@{t.branch} README.md ({t.key.value})")
    return out


def _frontier_plot(folder: Path, files: dict[str, Path], results: Mapping, *, title: str) -> None:
    """frontier.png (size vs KL of the repo's files, hubtool/gguf/frontier_plot.py) when the repo holds
    two or more measured GGUF files; the card embeds it when it is there."""
    from hubtool.gguf.frontier_plot import PLOT_NAME, frontier_points, plot_frontier

    rows = [r for r in results.get("rows") or [] if r.get("kind") == "gguf" and (r.get("file") is None or r.get("file") in files)]
    points = frontier_points(rows)
    if len(points) >= 2:
        files[PLOT_NAME] = plot_frontier(points, folder / PLOT_NAME, title=title)


def _own_samples(target: Target, records: Mapping[str, Record], samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The served answers of the artifact TARGET publishes (a GPTQ branch: its preset's)."""
    rows = [r for r in samples if r["artifact"] == target.key.value]
    if target.key is ArtifactKind.GPTQ and target.stages:
        preset = getattr(records.get(target.stages[0]), "preset", None)
        rows = [r for r in rows if r["variant"] == preset]
    return rows


def fp16_folder(inputs: Inputs, records: Mapping[str, Record]) -> Path:
    """The fp16 model every artifact was made from: the merge's output, else SOURCE."""
    merged = next((r for r in records.values() if isinstance(r, MergedModel)), None)
    return merged.folder if merged is not None else Path(inputs.source)  # type: ignore[arg-type]


def check_published(folders: list[PublishFolder], inputs: Inputs, load_dtype: str, *, trust_remote_code: bool = False) -> None:
    """Load every publish folder the way its card's snippet does and generate (release/load_check.py)."""
    from hubtool.gguf.facts import parse_shard
    from hubtool.release.load_check import check_gguf_file, check_transformers_repo

    for f in folders:
        t = f.target
        what = f"{t.repo_id}@{t.branch}"
        if t.key is ArtifactKind.GGUF:
            texts = [check_gguf_file(p, what=what) for p in sorted(f.folder.glob("*.gguf"))
                     if (parse_shard(p.name) is None or parse_shard(p.name).index == 1) and not p.name.endswith(".imatrix.gguf")]  # type: ignore[union-attr]
        elif t.key is ArtifactKind.ADAPTER:
            own_tokenizer = any((f.folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))
            texts = [check_transformers_repo(f.folder, load_dtype, what=what, adapter_base=inputs.base,
                                             tokenizer_dir=f.folder if own_tokenizer else inputs.base, trust_remote_code=trust_remote_code)]
        else:
            texts = [check_transformers_repo(f.folder, load_dtype, what=what, trust_remote_code=trust_remote_code)]
        log(f"load check: {what}: loads and generates ({', '.join(repr(x[:20]) for x in texts)})")


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
        state = f"uploaded {result.files_uploaded} file(s)" if result.changed else "unchanged"
        if result.pr_url:
            state = f"pull request {result.pr_url} ({result.files_uploaded} file(s) changed)"
        log(f"push: {t.repo_id}@{t.branch}: {state} (commit {result.commit_sha[:12]})")
        rows.append({
            "key": t.key.value, "repo_id": t.repo_id, "branch": t.branch, "what": t.what, "url": result.repo_url,
            "commit": result.commit_sha, "commit_url": result.commit_url, "changed": result.changed,
            "files_uploaded": result.files_uploaded, "files_deleted": result.files_deleted, "files": f.hashes,
            "pr_url": result.pr_url,
        })
    return rows


