"""`hubtool release SOURCE --quants gptq,gguf`: plan, print, then merge -> quantize -> verify -> cards -> push."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from hubtool.errors import HubtoolError
from hubtool.progress import stdout_to_stderr
from hubtool.quality.table import quality_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("release", help="one-command release: merge, quantize (GPTQ/GGUF), verify, cards, push every repo")
    p.add_argument("source", nargs="?", type=Path, help="merged fp16 model folder (or use --base/--adapter to merge first)")
    p.add_argument("--base", type=Path, help="base model folder to merge --adapter into")
    p.add_argument("--adapter", type=Path, help="PEFT LoRA adapter folder; also published as {name}-peft")
    p.add_argument("--rope", help="RoPE scaling for the merge, e.g. linear:4 (as in `hubtool merge`)")
    p.add_argument("--max-position-embeddings", type=int, help="context length to record with --rope")
    p.add_argument("--quants", help="comma list of gptq,gguf (default: both, or release.yaml quants)")
    p.add_argument("--name", help="repo name stem (default: release.yaml name, else the source/adapter folder name)")
    p.add_argument("--namespace", help="Hub user or org to publish under")
    p.add_argument("--config", type=Path, help="release.yaml: names, presets, GGUF types, card metadata (see examples/release.yaml)")
    p.add_argument("--gptq-presets", help="comma list of GPTQ presets (quant_configs/); the default preset goes to main")
    p.add_argument("--gptq-samples", type=int, metavar="N", help="GPTQ calibration samples (as `quantize gptq --samples`; default: release.yaml gptq.samples, else the preset's)")
    p.add_argument("--gptq-calibration", metavar="TEXT", help="GPTQ calibration text: 'builtin', a .txt/.jsonl file or a datasets folder (release.yaml gptq.calibration)")
    p.add_argument("--gguf-types", help="comma list of GGUF types, e.g. q4_k_m,q8_0")
    p.add_argument("--verify-text", metavar="TEXT", help="held-out text for verification: builtin:heldout or a .txt/.jsonl file (as `verify --text`; release.yaml verify.text)")
    p.add_argument("--verify-dataset", metavar="ORG/NAME", help="the Hub dataset id the verify text comes from, named in the cards (release.yaml verify.dataset; default: the text's file name)")
    p.add_argument("--gguf-tuned", help="comma list of stock GGUF types that also get a tuned mix of the same size, "
                                        "e.g. q4_k_m (NAME.Q4_K_M-tuned.gguf + its --tensor-type-file recipe)")
    p.add_argument("--work-dir", type=Path, help="cache of stage outputs (default: ./release-work/NAME); re-run to resume")
    hub = p.add_mutually_exclusive_group()
    hub.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
    hub.add_argument("--local-hub", type=Path, metavar="DIR",
                     help="rehearse: push to an in-process local Hub storing repos in DIR (no token, no internet; browse later with `hubtool hub serve --root DIR`)")
    p.add_argument("--private", action="store_true", default=None, help="create the repos private")
    p.add_argument("--create-pr", action="store_true",
                   help="update existing repos through pull requests (one per repo and branch; their URLs are printed) "
                        "instead of committing; repos and branches that do not exist yet are created directly")
    p.add_argument("--cache", metavar="URL",
                   help="shared stage cache: a local/network path or an fsspec URL (s3://, gs://, hf://ORG/REPO through huggingface_hub); "
                        "stages found there are reused, stages run here are added (content-addressed, resumable)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the plan (after every per-architecture check) and stop")
    mode.add_argument("--plan-json", action="store_true",
                      help="print the stage graph as JSON for a CI system (stages, keys, needs, resources, matrix groups) and stop")
    mode.add_argument("--stage", metavar="NAME[,NAME...]",
                      help="run exactly these stages (in order), whose inputs are in the work dir or --cache; no cards, no push")
    mode.add_argument("--publish", action="store_true",
                      help="render the cards and push, once every stage is in the work dir or --cache (no stage runs)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="stages run at once, each in its own process, once their inputs are done (GPTQ beside the GGUF chain "
                        "and the fp16 reference); default: release.yaml jobs, else min(cores, 2) (1 for a model under 50M parameters); 1 = one after another")
    p.add_argument("--memory-budget", metavar="SIZE",
                   help="RAM the concurrent stages may hold together, e.g. 16G (default: release.yaml memory_budget, "
                        "else 80%% of the available RAM); a stage is held back while its estimate does not fit")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom-code models (auto_map in config.json); their .py files ship in every repo")
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout (progress stays on stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtool import progress

    progress.set_quiet(args.json)
    try:
        with stdout_to_stderr():  # main() keeps library chatter behind --verbose
            summary = release(args)
    except HubtoolError as exc:
        if args.json:
            from hubtool.push import scrub

            print(json.dumps({"ok": False, "error": scrub(str(exc), None), "exit_code": exc.exit_code}, indent=2))
        raise
    if args.json or args.plan_json:
        summary.pop("plan_text", None)
        print(json.dumps(summary, indent=2, default=str))
    elif args.dry_run:
        print(summary["plan_text"])
    elif args.stage:
        print("\n".join(_stage_line(st) for st in summary["stages"]))
    else:
        print(format_summary(summary))
    return 0


def release(args: argparse.Namespace) -> dict[str, Any]:
    """Plan (printed to stderr, or stdout for a plain --dry-run) and, unless --dry-run, run."""
    from hubtool.atomic import check_apart, check_folder, ensure_writable_folder
    from hubtool.release import build_config, check_inputs, load_yaml, make_plan, publish, run_release, run_stages
    from hubtool.release.cache import Hasher
    from hubtool.release.publish import preflight_cards

    inputs = check_inputs(args.source, args.base, args.adapter)
    file_data = load_yaml(args.config) if args.config else {}
    default_name = (inputs.source or inputs.adapter).resolve().name  # type: ignore[union-attr]
    flags = {"name": args.name, "namespace": args.namespace, "quants": args.quants, "gptq_presets": args.gptq_presets,
             "gguf_types": args.gguf_types, "gguf_tuned": args.gguf_tuned, "private": args.private, "rope": args.rope,
             "max_position_embeddings": args.max_position_embeddings, "trust_remote_code": args.trust_remote_code,
             "jobs": args.jobs, "memory_budget": args.memory_budget,
             "gptq_samples": args.gptq_samples, "gptq_calibration": args.gptq_calibration, "verify_text": args.verify_text,
             "verify_dataset": args.verify_dataset}
    cfg = build_config(file_data, flags, default_name=default_name, source=str(args.config or "release options"))
    work_dir = args.work_dir or Path("release-work") / cfg.name
    # Everything that needs no heavy work is checked here, for --dry-run too: a green dry run is a valid release.
    check_folder(work_dir, flag="--work-dir")
    if args.local_hub is not None:
        check_folder(args.local_hub, flag="--local-hub")
    local_cache = args.cache if args.cache and "://" not in args.cache else None
    # before anything is written (hashes.json, locks, a local Hub's folders): never into the user's inputs
    check_apart({"--work-dir": work_dir, "--local-hub": args.local_hub, "--cache": local_cache},
                [inputs.source, inputs.base, inputs.adapter, args.config])
    if args.local_hub is not None:
        check_apart({"--local-hub": args.local_hub}, [work_dir, local_cache])
    hasher = Hasher(work_dir)  # input hashes (the stage keys) are remembered in the work dir once it exists
    plan = make_plan(cfg, inputs, hasher=hasher)
    plan.warnings += release_card_warnings(cfg, inputs)
    preflight_cards(cfg, plan, inputs)
    text = plan.render()
    if args.dry_run:
        return {"ok": True, "dry_run": True, "plan": plan.as_dict(), "plan_text": text}
    if args.plan_json:
        data = plan.as_dict()
        from hubtool.release.graph import ci_matrix

        return {"ok": True, "name": cfg.name, "stages": data["stages"], "groups": data["groups"], "matrix": ci_matrix(plan.stages),
                "targets": data["targets"], "plan_text": text}
    print(text, file=sys.stderr, flush=True)
    # a read-only or full work dir fails here, naming it, before a local Hub's folders are made
    ensure_writable_folder(work_dir, flag="--work-dir")
    if args.local_hub is not None:
        ensure_writable_folder(args.local_hub, flag="--local-hub")
    with _hub(args) as endpoint:  # also where an hf:// --cache lives
        common = {"work_dir": work_dir, "cache": args.cache, "hasher": hasher, "endpoint": endpoint}
        if args.stage:
            summary = run_stages(cfg, plan, inputs, [n for n in args.stage.split(",") if n.strip()], **common)
        elif args.publish:
            summary = publish(cfg, plan, inputs, create_pr=args.create_pr, **common)
        else:
            summary = run_release(cfg, plan, inputs, create_pr=args.create_pr, **common)
    summary["plan"] = plan.as_dict()
    return summary


@contextlib.contextmanager
def _hub(args: argparse.Namespace) -> Iterator[str | None]:
    """The Hub endpoint to push to (and to reach an hf:// cache): --endpoint, or an in-process local Hub."""
    if args.local_hub is None:
        yield args.endpoint
        return
    from hubtool.hub_server import serve_in_thread

    with serve_in_thread(args.local_hub) as hub:
        yield hub.url


def release_card_warnings(cfg: Any, inputs: Any) -> list[str]:
    """What the plan should warn about the cards (a source header we had to repair, no license at all)."""
    from hubtool.card import card_warnings

    folder = inputs.base if inputs.adapter is not None else inputs.source
    source = Path(folder) / "README.md" if folder is not None else None
    return card_warnings(cfg.card, source_card=source if source is not None and source.is_file() else None)


def _stage_line(st: dict[str, Any]) -> str:
    seconds = st["seconds"]
    return f"{st['name']}: " + ("cached" if st["cached"] else f"done in {seconds:.0f} s") + f" ({st['out']})"


def format_summary(summary: dict[str, Any]) -> str:
    """Human summary: quality table, then one line per repo/branch pushed."""
    lines = []
    if summary.get("quality"):
        lines += [quality_table(summary["quality"]), ""]
    for r in summary["repos"]:
        state = f"{r['files_uploaded']} file(s) uploaded" if r["changed"] else "unchanged"
        if r.get("pr_url"):
            lines.append(f"{r['url']} @ {r['branch']}: pull request {r['pr_url']} ({r['files_uploaded']} file(s) changed)")
        else:
            lines.append(f"{r['url']} @ {r['branch']}: {state}, commit {r['commit'][:12]}")
    if summary.get("collection"):
        lines.append(f"collection: {summary['collection']['url']}")
    return "\n".join(lines)
