"""`hubtool quantize gptq MODEL_DIR -o OUT` and `hubtool verify gptq GPTQ_DIR --reference MODEL_DIR`."""

from __future__ import annotations

import argparse
import json

from hubtool.cli import subgroup
from hubtool.cli.gates import GATE_FLAGS_HINT, add_gate_flags, check_rows, gates_from_args
from hubtool.options import check_int


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def register(sub: argparse._SubParsersAction) -> None:
    q = subgroup(sub, "quantize", "quantize a model folder (gptq, gguf)").add_parser(
        "gptq", help="GPTQ in the standard checkpoint format (gptqmodel; CUDA when present, else CPU)")
    q.add_argument("model_dir", help="fp16/bf16 model folder (safetensors)")
    q.add_argument("-o", "--output", required=True, help="output folder for the GPTQ model")
    src = q.add_mutually_exclusive_group()
    src.add_argument("--preset", help="built-in preset: gptq-4bit-32g-actorder (default), gptq-4bit-128g-actorder, gptq-4bit-128g, gptq-8bit-128g-actorder")
    src.add_argument("--config", help="your own preset YAML (may start from `base: <preset>`)")
    q.add_argument("--bits", type=int, help="override bits (2, 3, 4, 8)")
    q.add_argument("--group-size", type=int, help="override group size (32, 64, 128, ... or -1)")
    q.add_argument("--desc-act", type=_bool, metavar="true|false", help="override act-order")
    q.add_argument("--sym", type=_bool, metavar="true|false", help="override symmetric quantization")
    q.add_argument("--damp-percent", type=float, help="override Hessian dampening (0-1, e.g. 0.01)")
    q.add_argument("--damp-auto-increment", type=float, help="damping added per retry when a Hessian is not positive definite (0 = fail)")
    q.add_argument("--mse", type=float, help="clipping search: error norm minimised per group (e.g. 2.4; 0 = plain min/max scales)")
    q.add_argument("--act-group-aware", type=_bool, metavar="true|false", help="group-aware act-order (needs --desc-act false)")
    q.add_argument("--true-sequential", type=_bool, metavar="true|false")
    q.add_argument("--static-groups", type=_bool, metavar="true|false")
    q.add_argument("--branch", help="override the branch name recorded for the release")
    q.add_argument("--calibration", default="builtin", help="'builtin' (default), a .txt/.jsonl file, or a datasets.save_to_disk folder")
    q.add_argument("--samples", type=int, help="calibration samples (preset default: 128)")
    q.add_argument("--seq-len", type=int, help="tokens per calibration sample (preset default: 2048)")
    q.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when present)")
    q.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    q.add_argument("--trust-remote-code", action="store_true", help="allow a custom-code model (auto_map in config.json); its .py files are copied")
    q.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    q.set_defaults(func=run_quantize)

    v = subgroup(sub, "verify", "check a quantized model against its fp16 source").add_parser(
        "gptq", help="perplexity, KL and top-1 vs fp16 for GPTQ and round-to-nearest")
    v.add_argument("quant_dir", help="output of `hubtool quantize gptq`")
    v.add_argument("--reference", required=True, help="the fp16 model folder it was made from")
    v.add_argument("--text", default="builtin:heldout", help="held-out text: builtin:heldout (default) or a .txt/.jsonl file")
    v.add_argument("--results", help="results file to add rows to (default: QUANT_DIR/quality.json)")
    v.add_argument("--trust-remote-code", action="store_true", help="allow a custom-code reference (auto_map): its own classes run block by block")
    v.add_argument("--context", type=int, default=512, help="tokens per evaluation window, at most the model's trained context (default 512)")
    v.add_argument("--force-context", action="store_true", help="allow a --context longer than the model's trained context")
    v.add_argument("--max-tokens", "--tokens", dest="tokens", type=int, default=None,
                   help="evaluate up to this many tokens (default 4096, or all the text holds if less; more than the text holds is an error)")
    v.add_argument("--no-rtn", dest="rtn", action="store_false", help="skip the round-to-nearest baseline")
    v.add_argument("--rtn", dest="rtn", action="store_true", help="also evaluate round-to-nearest (default)")
    v.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    add_gate_flags(v)
    v.set_defaults(func=run_verify, rtn=True)


OVERRIDES = ("bits", "group_size", "desc_act", "sym", "damp_percent", "damp_auto_increment", "mse", "act_group_aware", "true_sequential", "static_groups", "branch", "samples", "seq_len")


def run_quantize(args: argparse.Namespace) -> int:
    from hubtool.gptq import DEFAULT_PRESET, load_preset, quantize_gptq
    from hubtool.progress import set_quiet

    set_quiet(args.json)
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    preset = load_preset(args.config or args.preset or DEFAULT_PRESET, overrides)
    summary = quantize_gptq(args.model_dir, args.output, preset, calibration=args.calibration, device=args.device, overwrite=args.overwrite,
                            trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(summary))
    else:
        cal = summary["calibration"]
        print(f"{preset.label} (branch {preset.branch}) from {cal['samples']}x{cal['seq_len']} {cal['source']} calibration tokens: "
              f"{summary['size_bytes'] / 1e6:.1f} MB in {summary['seconds']:.0f}s on {summary['device']} -> {summary['out_dir']}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from hubtool.gptq import verify_gptq
    from hubtool.progress import set_quiet

    set_quiet(args.json)
    gates = gates_from_args(args)
    if args.tokens is not None:
        check_int(args.tokens, source="--max-tokens/--tokens", minimum=16)
    check_int(args.context, source="--context", minimum=8)
    rows = verify_gptq(args.quant_dir, args.reference, text=args.text, rtn=args.rtn, results_path=args.results,
                       context=args.context, max_tokens=args.tokens or 4096, force_context=args.force_context,
                       exact_tokens=args.tokens is not None, trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'variant':32} {'ppl':>9} {'fp16 ppl':>9} {'KL':>9} {'top-1':>6}")
        for r in rows:
            print(f"{r['variant']:32} {r['perplexity']:9.3f} {r['ref_perplexity']:9.3f} {r['kl_div']:9.5f} {r['top1']:6.3f}")
    check_rows(rows, gates, how_to_change=GATE_FLAGS_HINT)
    return 0
