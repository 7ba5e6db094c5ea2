"""`hubtool quantize gguf` and `hubtool verify gguf`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hubtool.cli import subgroup
from hubtool.cli.gates import GATE_FLAGS_HINT, add_gate_flags, check_rows, gates_from_args
from hubtool.options import check_int


def register(sub: argparse._SubParsersAction) -> None:
    from hubtool.gguf.types import ALL_TYPES

    q = subgroup(sub, "quantize", "quantize a merged model (GPTQ, GGUF)").add_parser(
        "gguf", help="export GGUF files with llama.cpp's converter and quantizer",
        description=f"Convert MODEL_DIR with llama.cpp's convert_hf_to_gguf and quantize each type with llama.cpp. "
                    f"Types: {', '.join(ALL_TYPES)} (IQ* and Q2_K_S need --imatrix or --calibration).")
    q.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    q.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="folder for {name}.{TYPE}.gguf files")
    q.add_argument("--types", default="f16,q8_0,q4_k_m", help="comma-separated GGUF types (default: %(default)s)")
    m = q.add_mutually_exclusive_group()
    m.add_argument("--imatrix", type=Path, metavar="FILE", help="importance matrix (llama-imatrix GGUF format)")
    m.add_argument("--calibration", metavar="TEXT", help="compute an importance matrix from this text: 'builtin' or a .txt/.jsonl file")
    q.add_argument("--split-max-size", default=None, metavar="SIZE", help="split files larger than this (default 48G, Hub limit is 50G; 0 = never)")
    q.add_argument("--name", help="file name stem (default: card model_name or the folder name)")
    q.add_argument("--keep-f16", action="store_true", help="keep the 16-bit base GGUF even if not in --types")
    q.add_argument("--overwrite", action="store_true", help="replace existing GGUF files of the same name")
    q.add_argument("--trust-remote-code", action="store_true", help="allow a custom-code model (auto_map in config.json)")
    q.add_argument("--json", action="store_true", help="print the written files as JSON")
    q.set_defaults(func=_quantize)

    v = subgroup(sub, "verify", "check quantized models against the fp16 source").add_parser(
        "gguf", help="load GGUFs in llama.cpp and compare with the fp16 model",
        description="Fails on tokenizer, chat-template or RoPE mismatch; reports KL, top-1 agreement and perplexity.")
    v.add_argument("files", type=Path, nargs="+", metavar="GGUF_DIR_OR_FILES")
    v.add_argument("--reference", type=Path, required=True, metavar="MODEL_DIR", help="the fp16 HF model folder")
    v.add_argument("--text", default="builtin:heldout", help="held-out text: builtin:heldout or a .txt/.jsonl file (default: %(default)s)")
    v.add_argument("--max-tokens", type=int, default=None,
                   help="tokens of text to evaluate (default: 2048, or all the text holds if less; more than the text holds is an error)")
    v.add_argument("--context", type=int, default=512, help="window length in tokens, at most the model's trained context (default: %(default)s)")
    v.add_argument("--force-context", action="store_true", help="allow a --context longer than the model's trained context")
    v.add_argument("--results", type=Path, default=None, metavar="FILE", help="add rows to this quality.json")
    v.add_argument("--trust-remote-code", action="store_true", help="allow a custom-code reference (auto_map): its own classes run block by block")
    v.add_argument("--json", action="store_true", help="print the rows as JSON")
    add_gate_flags(v)
    v.set_defaults(func=_verify)


def _quantize(args: argparse.Namespace) -> int:
    from hubtool.gguf import export_gguf
    from hubtool.progress import set_quiet

    set_quiet(args.json)
    rows = export_gguf(args.model_dir, args.output, args.types.split(","), name=args.name, imatrix=args.imatrix,
                       calibration=args.calibration, split_max_size=args.split_max_size,
                       keep_f16=args.keep_f16, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['type']:8} {r['size_bytes'] / 1e6:10.1f} MB  {r['bits_per_weight']:5.2f} bpw  {r['file']}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from hubtool.gguf import verify_gguf
    from hubtool.progress import set_quiet

    set_quiet(args.json)
    gates = gates_from_args(args)
    if args.max_tokens is not None:
        check_int(args.max_tokens, source="--max-tokens", minimum=16)
    check_int(args.context, source="--context", minimum=8)
    rows = verify_gguf(args.files, args.reference, text=args.text, max_tokens=args.max_tokens or 2048,
                       context=args.context, results_path=args.results, force_context=args.force_context,
                       exact_tokens=args.max_tokens is not None, trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'variant':8} {'bpw':>5} {'ppl':>9} {'fp16 ppl':>9} {'KL':>9} {'top-1':>6}")
        for r in rows:
            print(f"{r['variant']:8} {r['bits_per_weight']:5.2f} {r['perplexity']:9.3f} {r['ref_perplexity']:9.3f} {r['kl_div']:9.5f} {r['top1']:6.3f}")
    check_rows(rows, gates, how_to_change=GATE_FLAGS_HINT)
    return 0
