"""`hubtool card render KIND MODEL_DIR -o README.md` and `hubtool card check README.md`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hubtool.artifacts import ArtifactKind
from hubtool.errors import CardError


def register(sub: argparse._SubParsersAction) -> None:
    from hubtool.cli import subgroup

    group = subgroup(sub, "card", "render and check model cards")
    render = group.add_parser("render", help="render README.md for a release artifact")
    render.add_argument("kind", choices=[*(k.value for k in ArtifactKind), "merged"], help="artifact the card describes (merged: the fp16 kind's older name)")
    render.add_argument("model_dir", type=Path, help="folder of the artifact (config, weights, tokenizer, *.gguf)")
    render.add_argument("--meta", type=Path, help="release config YAML: header fields (license, datasets, ...) plus repos / gptq_variants / gguf_files")
    render.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a header field or option (repeatable; [a, b] for lists, null to drop)")
    render.add_argument("--source-card", type=Path, help="card of the source model to carry metadata from and embed (default: MODEL_DIR/README.md)")
    render.add_argument("--template-dir", type=Path, help="folder with your own <kind>.md.j2 / partials (built-ins fill the gaps)")
    render.add_argument("--results", type=Path, help="quality.json from the verify step, for the measured-quality table")
    render.add_argument("-o", "--output", type=Path, required=True, help="where to write the card (e.g. MODEL_DIR/README.md)")
    render.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    render.add_argument("--hub-url", help="Hub the card's repo links point at (default https://huggingface.co; a local Hub's URL for a rehearsal)")
    render.set_defaults(func=run_render)

    check = group.add_parser("check", help="validate a README.md against the Hub's metadata rules (offline)")
    check.add_argument("card", type=Path, help="README.md to check")
    check.add_argument("--strict", action="store_true", help="also refuse what the Hub accepts but a release should not have (no license)")
    check.set_defaults(func=run_check)


def load_release_config(path: Path) -> dict[str, Any]:
    """The --meta YAML file as a mapping, with one-line errors naming the file."""
    from hubtool.yamlfile import read_yaml_mapping

    return read_yaml_mapping(path, what="release config (--meta)", example="license: ..., repos: ...", error=CardError)


def run_render(args: argparse.Namespace) -> int:
    from hubtool.atomic import check_output_free, staged_file
    from hubtool.card import compose_card, parse_overrides, split_release_config
    from hubtool.quality.results import read_results

    check_output_free(args.output, overwrite=args.overwrite, inputs=card_inputs(args))
    meta, release = split_release_config(load_release_config(args.meta)) if args.meta else ({}, {})
    overrides = parse_overrides(args.overrides)
    if args.source_card is not None:
        release["source_card"] = str(args.source_card)
    results = None
    if args.results is not None:
        if not args.results.is_file():
            raise CardError(f"{args.results}: results file not found; run the verify step first or drop --results")
        results = read_results(args.results)
    if args.hub_url:
        release["hub_url"] = args.hub_url
    card = compose_card(args.kind, args.model_dir, meta=meta, overrides=overrides, results=results,
                        release=release, template_dir=args.template_dir)
    for warning in card.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    with staged_file(args.output, overwrite=args.overwrite) as tmp:
        tmp.write_text(card.text, encoding="utf-8")
    print(args.output)
    return 0


def card_inputs(args: argparse.Namespace) -> list[Path]:
    """What `card render` reads: every entry of MODEL_DIR but its card slot (README.md, where the
    rendered card goes), --meta, --results, --template-dir and a --source-card kept elsewhere."""
    slot = (args.model_dir / "README.md").resolve()
    found = [p for p in args.model_dir.iterdir() if p.resolve() != slot] if args.model_dir.is_dir() else [args.model_dir]
    extra = [args.meta, args.results, args.template_dir]
    if args.source_card is not None and args.source_card.resolve() != slot:
        extra.append(args.source_card)
    return found + [p for p in extra if p is not None]


def run_check(args: argparse.Namespace) -> int:
    from hubtool.card import check_card_file

    meta = check_card_file(args.card)
    if args.strict and not meta.get("license"):
        raise CardError(f"{args.card}: no license in the header (--strict); add license: <id> (or license: other with license_name and license_link)")
    fields = ", ".join(f"{k}={meta[k]}" for k in ("license", "base_model", "base_model_relation") if k in meta)
    print(f"{args.card}: ok ({fields or 'no license/base_model'})")
    return 0
