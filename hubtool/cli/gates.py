"""The quality-gate flags shared by `hubtool verify gguf` and `hubtool verify gptq`."""

from __future__ import annotations

import argparse

from hubtool.quality.gates import DEFAULT_GATES, Gates, check_rows, gates_from_flags

GATE_FLAGS_HINT = "--min-top1 / --max-kl / --max-ppl-ratio, or --no-gates"

__all__ = ["GATE_FLAGS_HINT", "add_gate_flags", "check_rows", "gates_from_args"]


def add_gate_flags(p: argparse.ArgumentParser) -> None:
    d = DEFAULT_GATES
    p.add_argument("--min-top1", type=float, metavar="F", help=f"fail (exit 4) if top-1 agreement with fp16 is below F (default {d.min_top1})")
    p.add_argument("--max-kl", type=float, metavar="F", help=f"fail if KL(fp16 || quant) is above F nats/token (default {d.max_kl})")
    p.add_argument("--max-ppl-ratio", type=float, metavar="F", help=f"fail if perplexity exceeds F x fp16's (default {d.max_ppl_ratio})")
    p.add_argument("--no-gates", action="store_true", help="report the numbers without failing on them")


def gates_from_args(args: argparse.Namespace) -> Gates:
    return gates_from_flags(args.min_top1, args.max_kl, args.max_ppl_ratio, off=args.no_gates)
