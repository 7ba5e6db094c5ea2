"""`hubtool merge BASE ADAPTER -o OUT`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge a LoRA/DoRA adapter into its base model (streaming, fp16)")
    p.add_argument("base", help="base model folder (safetensors)")
    p.add_argument("adapter", help="PEFT adapter folder")
    p.add_argument("-o", "--output", required=True, help="output folder for the merged model")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--rope", help="RoPE scaling the adapter was trained with: linear:4, dynamic:2, yarn:4[,key=value], llama3:8,...")
    p.add_argument("--max-position-embeddings", type=int, help="context length to write (default: base context × factor)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtool.merge import merge_adapter
    from hubtool.options import check_max_position_embeddings
    from hubtool.progress import set_quiet

    set_quiet(args.json)
    if args.max_position_embeddings is not None:
        check_max_position_embeddings(args.max_position_embeddings, source="--max-position-embeddings")
    summary = merge_adapter(
        args.base,
        args.adapter,
        args.output,
        dtype=args.dtype,
        rope=args.rope,
        max_position_embeddings=args.max_position_embeddings,
        overwrite=args.overwrite,
    )
    if args.json:
        print(json.dumps({**asdict(summary), "out_dir": str(summary.out_dir)}))
    else:
        rope = f", RoPE {summary.rope['type']} x{summary.rope['factor']:g}" if summary.rope else ""
        print(
            f"merged {summary.merged_modules} modules into {summary.tensors} tensors "
            f"({summary.bytes_written / 1e9:.2f} GB, {summary.seconds:.1f}s{rope}) -> {summary.out_dir}"
        )
    return 0
