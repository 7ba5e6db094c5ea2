"""Command line: `hubtool <command>`. Each command lives in its own module here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from hubtool import __version__
from hubtool.errors import HubtoolError

# One module per command; each defines `register(subparsers)` which sets `func` on its parser.
COMMANDS = [
    "hubtool.cli.merge_cmd",
    "hubtool.cli.gptq_cmd",
    "hubtool.cli.gguf_cmd",
    "hubtool.cli.card_cmd",
    "hubtool.cli.push_cmd",
    "hubtool.cli.hub_cmd",
    "hubtool.cli.release_cmd",
    "hubtool.cli.demo_cmd",
]


_GROUPS: dict[str, argparse._SubParsersAction] = {}


def subgroup(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """A nested command group (`hubtool quantize gguf`, `hubtool verify gptq`) shared by several modules."""
    if name not in _GROUPS:
        parser = sub.add_parser(name, help=help)
        _GROUPS[name] = parser.add_subparsers(dest=f"{name}_command", required=True, metavar="KIND")
    return _GROUPS[name]


def build_parser() -> argparse.ArgumentParser:
    _GROUPS.clear()
    parser = argparse.ArgumentParser(
        prog="hubtool",
        description="From training output to a finished Hugging Face Hub release: merge, quantize (GPTQ, GGUF), verify, cards, push.",
    )
    parser.add_argument("--version", action="version", version=f"hubtool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Libraries we load (gptqmodel) turn on INFO logging globally; one line per HTTP request drowns
    # hubtool's own progress lines, so the HTTP clients' loggers stay at WARNING.
    for name in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HubtoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; outputs were not written (re-run to resume)", file=sys.stderr)
        return 130
