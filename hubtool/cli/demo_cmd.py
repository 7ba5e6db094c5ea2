"""`hubtool demo`: the whole pipeline on SmolLM2-135M against an in-process local Hub (offline, no token)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="offline end-to-end release of SmolLM2-135M + a LoRA (RoPE x4) to a local Hub")
    p.add_argument("--work-dir", type=Path, default=Path("hubtool-demo"), help="where models, stage cache and the local Hub live (default: ./hubtool-demo)")
    p.add_argument("--port", type=int, default=0, help="local Hub port (default: any free port)")
    p.add_argument("--train-steps", type=int, default=30, help="LoRA training steps on built-in text (default 30)")
    p.add_argument("--gptq-samples", type=int, default=16, help="GPTQ calibration samples (default 16, kept small for CPUs)")
    p.add_argument("--gptq-seq-len", type=int, default=256, help="tokens per GPTQ calibration sample (default 256)")
    p.add_argument("--jobs", type=int, metavar="N", help="release stages at once (default: the release's, min(cores, 2)); 1 = one after another")
    p.add_argument("--no-serve-check", dest="serve", action="store_false",
                   help="skip the release's serve check (every artifact answering prompts before the push), e.g. to time it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtool.demo import run_demo  # main() keeps library chatter behind --verbose

    if args.jobs is not None:
        from hubtool.options import check_int

        check_int(args.jobs, source="--jobs")
    run_demo(args.work_dir, port=args.port, train_steps=args.train_steps, gptq_samples=args.gptq_samples, gptq_seq_len=args.gptq_seq_len,
             jobs=args.jobs, serve=args.serve)
    return 0
