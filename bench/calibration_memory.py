"""Benchmark: peak RSS and wall time of the two calibration passes the tuned GGUF mixes need (importance
matrix, output Fisher), streamed block by block (the default) beside the whole fp16 model loaded in fp32
(`in_memory=True`: the path before streaming), on synthetic Llama models of one width and growing depth;
and, on real SmolLM2-135M, that both paths give the same statistics.

    nice .venv/bin/python bench/calibration_memory.py                          # hidden 2048, 2/4/8 layers
    nice .venv/bin/python bench/calibration_memory.py --layers 2 4 --smollm2   # + real SmolLM2-135M

Each pass runs in its own process; its peak RSS is that process's VmHWM. Synthetic models (random fp16
weights scaled 1/sqrt(fan_in), vocab 32000, a real SentencePiece tokenizer) are built once by
bench/scale.py's builder into .bench-cache/calibration-memory. Prints a table, the growth of peak RSS from
the fewest to the most layers beside one layer's fp32 weights, and writes bench/results/calibration-memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # bench/gguf.py would shadow gguf-py
sys.path.insert(0, str(ROOT))
MB = 1 << 20


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    """One pass in this process: prints {wall_s, peak_rss_mb} as the last line and saves the statistic."""
    import numpy as np

    from hubtool.quality.texts import read_text_source

    text = read_text_source("builtin")
    start = time.monotonic()
    if args.piece == "imatrix":
        from hubtool.gguf.imatrix import compute_imatrix

        sums, counts = compute_imatrix(Path(args.model), text, arch_name="llama", max_tokens=args.tokens, in_memory=args.mode == "memory")
        stats = {**sums, **{f"{k}:count": np.array([v]) for k, v in counts.items()}}
    else:
        from hubtool.quality.sensitivity import output_fisher

        stats = output_fisher(Path(args.model), text, arch_name="llama", max_tokens=args.tokens, in_memory=args.mode == "memory")
    wall = time.monotonic() - start
    np.savez(args.out, **stats)
    print(json.dumps({"wall_s": round(wall, 2), "peak_rss_mb": round(_hwm_mb())}))


def run_child(piece: str, model: Path, mode: str, tokens: int, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--child", "--piece", piece, "--model", str(model), "--mode", mode, "--tokens", str(tokens), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{piece} {mode} on {model} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["load"] = round(os.getloadavg()[0], 2)
    return row


def compare(a_file: Path, b_file: Path) -> tuple[int, float]:
    """(keys, worst relative difference over every element) of two saved statistics with the same keys."""
    import numpy as np

    a, b = np.load(a_file), np.load(b_file)
    if set(a.files) != set(b.files):
        raise SystemExit(f"{a_file} and {b_file} have different keys: {sorted(set(a.files) ^ set(b.files))[:5]}")
    worst = 0.0
    for k in a.files:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-30))))
    return len(a.files), worst


def layer_fp32_mb(hidden: int, mlp: int, kv: int) -> float:
    return (2 * hidden * hidden + 2 * kv * hidden + 3 * hidden * mlp + 2 * hidden) * 4 / MB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--mlp", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--imatrix-tokens", type=int, default=1024)
    ap.add_argument("--fisher-tokens", type=int, default=512)
    ap.add_argument("--smollm2", action="store_true", help="also run real SmolLM2-135M at the tuned mixes' token counts")
    ap.add_argument("--cache", type=Path, default=ROOT / ".bench-cache" / "calibration-memory")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md (and growth lines) from the last JSON")
    ap.add_argument("--reuse-memory", action="store_true",
                    help="take the in-memory rows (and their saved statistics) from the last results JSON instead of rerunning them")
    # one pass in a child process
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--piece", choices=["imatrix", "fisher"])
    ap.add_argument("--model")
    ap.add_argument("--mode", choices=["stream", "memory"])
    ap.add_argument("--tokens", type=int)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.render_only:  # the tables again from the last JSON
        stem = args.results / "calibration-memory"
        data = json.loads(stem.with_suffix(".json").read_text())
        data["growth"] = growth(data["rows"], data["config"]["per_layer_fp32_mb"], data["config"]["hidden"])
        stem.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
        stem.with_suffix(".md").write_text(render(data))
        print(render(data))
        return

    import bench.scale as scale

    shape = f"w{args.hidden}"
    scale.SHAPES[shape] = {"hidden": args.hidden, "mlp": args.mlp, "heads": args.heads, "kv_heads": args.kv_heads,
                           "full_layers": max(args.layers)}
    args.cache.mkdir(parents=True, exist_ok=True)
    load_start = list(os.getloadavg())
    rows: list[dict[str, Any]] = []
    previous: dict[tuple, dict[str, Any]] = {}
    last = args.results / "calibration-memory.json"
    if args.reuse_memory and last.is_file():
        old = json.loads(last.read_text())
        previous = {(r["model"], r["piece"], r["mode"], r["tokens"]): r for r in old["rows"] + old["real"] if r["mode"] == "memory"}

    def measure(model_name: str, layers: int, piece: str, mode: str, tokens: int, folder: Path, out: Path) -> dict[str, Any]:
        key = (model_name, piece, mode, tokens)
        if key in previous and out.is_file():
            return {**{k: v for k, v in previous[key].items() if k not in ("keys", "worst_rel_diff")}, "reused": True}
        return {"model": model_name, "layers": layers, "piece": piece, "mode": mode, "tokens": tokens,
                **run_child(piece, folder, mode, tokens, out)}

    kv = args.hidden // args.heads * args.kv_heads
    per_layer = layer_fp32_mb(args.hidden, args.mlp, kv)
    print(f"synthetic Llama, hidden {args.hidden}, MLP {args.mlp}, {args.heads} heads / {args.kv_heads} KV, vocab {scale.VOCAB}: "
          f"one layer's fp32 weights {per_layer:.0f} MB; load average at start {load_start}", flush=True)
    for layers in args.layers:
        model, _ = scale.build_model(args.cache, shape, layers)
        for piece, tokens in (("imatrix", args.imatrix_tokens), ("fisher", args.fisher_tokens)):
            outs = {}
            for mode in ("memory", "stream"):
                outs[mode] = args.cache / f"{shape}-{layers}L.{piece}.{mode}.npz"
                row = measure(f"{layers}L", layers, piece, mode, tokens, model, outs[mode])
                rows.append(row)
                print(f"  {layers}L {piece:7s} {mode:6s}{' (earlier run)' if row.get('reused') else ''}: {row['wall_s']:7.1f} s, peak RSS {row['peak_rss_mb']:6d} MB (load {row['load']})", flush=True)
            keys, worst = compare(outs["stream"], outs["memory"])
            rows[-1]["keys"], rows[-1]["worst_rel_diff"] = keys, worst
            print(f"  {layers}L {piece:7s} streamed vs in memory: {keys} keys, worst relative difference {worst:.2e}", flush=True)
    real: list[dict[str, Any]] = []
    if args.smollm2:
        from hubtool.real_models import export_fp16, real_model

        fp16 = export_fp16(real_model("smollm2-135m"), args.cache / "smollm2-fp16")
        for piece, tokens in (("imatrix", 8192), ("fisher", 2048)):  # compute_imatrix / output_fisher defaults (the mixes')
            outs = {}
            for mode in ("memory", "stream"):
                outs[mode] = args.cache / f"smollm2.{piece}.{mode}.npz"
                row = measure("SmolLM2-135M", 30, piece, mode, tokens, fp16, outs[mode])
                real.append(row)
                print(f"  SmolLM2 {piece:7s} {mode:6s}{' (earlier run)' if row.get('reused') else ''}: {row['wall_s']:7.1f} s, peak RSS {row['peak_rss_mb']:6d} MB (load {row['load']})", flush=True)
            keys, worst = compare(outs["stream"], outs["memory"])
            real[-1]["keys"], real[-1]["worst_rel_diff"] = keys, worst
            print(f"  SmolLM2 {piece:7s} streamed vs in memory: {keys} keys, worst relative difference {worst:.2e}", flush=True)
    data = {"config": {**vars(args), "cache": str(args.cache), "results": str(args.results), "per_layer_fp32_mb": round(per_layer),
                       "load_start": load_start, "load_end": list(os.getloadavg()), "cpus": os.cpu_count()},
            "rows": rows, "real": real, "growth": growth(rows, per_layer, args.hidden)}
    print("\n".join(data["growth"]))
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / "calibration-memory"
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    stem.with_suffix(".md").write_text(render(data))
    print(f"wrote {stem}.json and {stem}.md")


def growth(rows: list[dict[str, Any]], per_layer: float, hidden: int) -> list[str]:
    """One line per (piece, mode): peak RSS at the fewest and most layers, per added layer vs one layer's fp32 weights
    (and, for the streamed Fisher, vs what its backward must keep per layer: the block's input hidden states)."""
    lines = []
    for piece in ("imatrix", "fisher"):
        for mode in ("memory", "stream"):
            sel = sorted((r for r in rows if r["piece"] == piece and r["mode"] == mode), key=lambda r: r["layers"])
            if len(sel) < 2:
                continue
            lo, hi = sel[0], sel[-1]
            per = (hi["peak_rss_mb"] - lo["peak_rss_mb"]) / (hi["layers"] - lo["layers"])
            verdict = ("does not grow with depth" if per < 0.1 * per_layer else
                       "grows with depth" if per > 0.5 * per_layer else "grows a little with depth")
            what = "streamed" if mode == "stream" else "in memory"
            saved = f"; the block inputs the backward keeps: {lo['tokens'] * hidden * 4 / MB:.0f} MB a layer" if (piece, mode) == ("fisher", "stream") else ""
            lines.append(f"{piece} {what}: peak RSS {lo['peak_rss_mb']} MB at {lo['layers']} layers -> {hi['peak_rss_mb']} MB at "
                         f"{hi['layers']} layers, {per:+.0f} MB per added layer ({per / per_layer:.2f}x one layer's fp32 weights{saved}): {verdict}")
    return lines


def render(data: dict[str, Any]) -> str:
    c = data["config"]
    out = [f"# Calibration passes: peak RSS vs depth, streamed vs in memory", "",
           f"Synthetic Llama, hidden {c['hidden']}, MLP {c['mlp']}, {c['heads']} heads / {c['kv_heads']} KV heads, vocab 32000; "
           f"imatrix over {c['imatrix_tokens']} tokens, Fisher over {c['fisher_tokens']} tokens (512-token windows); one layer's "
           f"fp32 weights {c['per_layer_fp32_mb']} MB. {c['cpus']} CPUs, load average {c['load_start']} at start, {c['load_end']} at end.",
           "", "| model | pass | path | wall s | peak RSS MB | load (1 min) | streamed vs in memory |", "|---|---|---|---:|---:|---:|---|"]
    for r in data["rows"] + data["real"]:
        diff = f"{r['keys']} keys, worst rel. diff {r['worst_rel_diff']:.1e}" if "keys" in r else ""
        out.append(f"| {r['model']} | {r['piece']} ({r['tokens']} tok) | {'streamed' if r['mode'] == 'stream' else 'in memory'} | "
                   f"{r['wall_s']} | {r['peak_rss_mb']} | {r['load']}{' (earlier run)' if r.get('reused') else ''} | {diff} |")
    out += ["", *[f"- {line}" for line in data["growth"]], ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
