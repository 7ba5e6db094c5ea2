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
    q.add_argument("--tuned", default="", metavar="TYPES",
                   help="also write TYPE-tuned files: stock TYPE's size (within 1 %%), per-tensor types chosen by measured sensitivity (needs --calibration)")
    q.add_argument("--target-bpw", type=float, default=None, metavar="B",
                   help="also write the best tuned mix of at most B bits per weight, NAME.{B:.2f}bpw-tuned.gguf (needs --calibration)")
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
    tuned = _tuned_variants(args)
    rows = export_gguf(args.model_dir, args.output, args.types.split(","), name=args.name, imatrix=args.imatrix,
                       calibration=args.calibration, split_max_size=args.split_max_size,
                       keep_f16=args.keep_f16 or bool(tuned), overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    if tuned:
        rows += _write_tuned(args, rows, tuned)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['type']:8} {r['size_bytes'] / 1e6:10.1f} MB  {r['bits_per_weight']:5.2f} bpw  {r['file']}")
    return 0


def _tuned_variants(args: argparse.Namespace) -> list[tuple[str, float | None]]:
    """(stock type, target bpw) for --tuned and --target-bpw; refused before any conversion when they cannot be built."""
    from hubtool.errors import InputError
    from hubtool.gguf.types import parse_types

    stock = parse_types(args.tuned, source="--tuned") if args.tuned.strip() else []
    variants: list[tuple[str, float | None]] = [(t, None) for t in stock]
    if args.target_bpw is not None:
        if not 1.5 <= args.target_bpw <= 8.5:
            raise InputError(f"--target-bpw {args.target_bpw}: give bits per weight between 1.5 and 8.5 (e.g. 4.5)")
        variants.append(("Q4_K_M", args.target_bpw))  # the K-quant family: the same kernels as stock files
    if variants and not args.calibration:
        raise InputError("--tuned/--target-bpw need --calibration TEXT ('builtin' or a .txt/.jsonl file): the sensitivity pass reads it")
    if any(t in ("F16", "BF16", "F32") for t in stock):
        raise InputError(f"--tuned {args.tuned}: 16-bit types are not quantized; name a quantized type such as q4_k_m")
    return variants


def _write_tuned(args: argparse.Namespace, rows: list[dict], variants: list[tuple[str, float | None]]) -> list[dict]:
    from hubtool.gguf.mix import export_tuned_variants
    from hubtool.quality.texts import read_text_source

    base = next(r for r in rows if r["type"] in ("F16", "BF16"))
    base_file = Path(base["file"])
    name = base_file.name.removesuffix(f".{base['type']}.gguf")
    out = export_tuned_variants(args.model_dir, base_file, args.output, variants, name=name, calibration=read_text_source(args.calibration),
                                calibration_name=args.calibration, trust_remote_code=args.trust_remote_code)
    if not args.keep_f16 and base["type"].lower() not in [t.strip().lower() for t in args.types.split(",")]:
        base_file.unlink()
        rows.remove(base)
    return out


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
