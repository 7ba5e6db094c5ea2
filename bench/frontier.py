"""Benchmark: the GGUF quality frontier of SmolLM2-135M: stock llama.cpp types vs hubtool's tuned mixes.

For each stock type (default Q4_K_M, Q3_K_M, Q2_K): the stock file, a bartowski-style `_L`
(stock + Q8_0 token embeddings/output), the tuned mix at the stock file's size, and the tuned mix
at the `_L` file's size; all quantized with the same importance matrix (calibration text) from
the same F16 GGUF. Each is evaluated in llama.cpp against the fp16 HF model on held-out text
(hubtool/data/heldout.txt; the imatrix and the Fisher pass read calibration.txt only): KL, top-1,
perplexity. Prints a table, writes frontier.json and frontier.png (size vs KL) into --work, and the
search's cost (wall time, peak memory) beside plain quantization.

    nice .venv/bin/python bench/frontier.py [--work .bench-cache/frontier] [--windows 4] [--context 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=ROOT / ".bench-cache" / "frontier")
    ap.add_argument("--types", default="Q4_K_M,Q3_K_M,Q2_K")
    ap.add_argument("--windows", type=int, default=4, help="held-out windows of --context tokens")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--imatrix-tokens", type=int, default=4096)
    ap.add_argument("--fisher-tokens", type=int, default=1024)
    ap.add_argument("--sample-rows", type=int, default=256, help="rows per tensor the search quantizes at each candidate type")
    args = ap.parse_args()

    import numpy as np

    from hubtool.gguf import export_gguf, verify_gguf
    from hubtool.gguf.facts import file_name, recipe_name, tuned_variant
    from hubtool.gguf.imatrix import compute_imatrix, load_imatrix, save_imatrix
    from hubtool.gguf.mix import describe_changes, file_types, plan_mix, write_tuned
    from hubtool.gguf.quantize import quantize_gguf
    from hubtool.quality.sensitivity import output_fisher
    from hubtool.quality.texts import read_text_source
    from hubtool.smollm2 import export_smollm2_fp16

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = json.loads((work / "timings.json").read_text()) if (work / "timings.json").is_file() else {}

    def timed(key: str, fn):
        t = time.monotonic()
        out = fn()
        timings[key] = round(time.monotonic() - t, 2)
        (work / "timings.json").write_text(json.dumps(timings, indent=1))
        return out

    fp16 = export_smollm2_fp16(work / "smol-fp16")
    base = work / "gguf" / file_name("smol", "F16")
    if not base.is_file():
        timed("convert", lambda: export_gguf(fp16, work / "gguf", ["F16"], name="smol", split_max_size="0", overwrite=True))
    calibration = read_text_source("builtin")  # calibration.txt: never the held-out text
    im_path = work / "smol.imatrix.gguf"
    if not im_path.is_file():
        sums, counts = timed("imatrix", lambda: compute_imatrix(fp16, calibration, arch_name="llama", max_tokens=args.imatrix_tokens))
        save_imatrix(im_path, sums, counts, dataset="builtin", context=512)
    imatrix = load_imatrix(im_path)
    fisher_path = work / "fisher.npz"
    if not fisher_path.is_file():
        fisher = timed("fisher", lambda: output_fisher(fp16, calibration, arch_name="llama", max_tokens=args.fisher_tokens))
        np.savez(fisher_path, **fisher)
    fisher = dict(np.load(fisher_path))

    out = work / "files"
    out.mkdir(exist_ok=True)
    files: list[Path] = []
    notes: dict[str, dict] = {}
    search_peak = 0.0
    shared_costs = None  # one measurement serves every K-quant budget (same tensors, same candidates)
    for t in [s.strip().upper() for s in args.types.split(",") if s.strip()]:
        stock = out / file_name("smol", t)
        if not stock.is_file():
            timed(f"quantize:{t}", lambda: quantize_gguf(base, stock, t, imatrix=imatrix))
        large = out / file_name("smol", t + "_L")
        if not large.is_file():
            quantize_gguf(base, large, t, imatrix=imatrix, tensor_types=[(r"^token_embd\.weight$", "Q8_0"), (r"^output\.weight$", "Q8_0")])
        tracemalloc.start()
        mix = timed(f"search:{t}", lambda: plan_mix(base, t, imatrix=imatrix, fisher=fisher, costs=shared_costs,
                                                                sample_rows=args.sample_rows))
        shared_costs = list(mix.costs)
        search_peak = max(search_peak, tracemalloc.get_traced_memory()[1] / 1e6)
        tracemalloc.stop()
        tuned = out / file_name("smol", tuned_variant(t))
        timed(f"quantize:{tuned_variant(t)}", lambda: write_tuned(base, tuned, mix.recipe, imatrix=imatrix))
        (out / recipe_name("smol", tuned_variant(t))).write_text(mix.recipe.to_text(), encoding="utf-8")
        notes[tuned_variant(t)] = {"predicted_kl": mix.predicted_kl, "stock_predicted_kl": mix.stock_predicted_kl,
                                   "changes": describe_changes(mix)}
        same_as_stock = file_types(large) == file_types(stock)  # SmolLM2: its tied embedding is Q8_0 in stock already
        files += [stock, tuned] + ([] if same_as_stock else [large])
        if same_as_stock:
            print(f"{t}_L: every tensor has the same type as stock {t} (not evaluated twice)")
        # the tuned mix at the _L file's size, when _L is bigger than stock (it is not for SmolLM2: its tied
        # embedding is Q8_0 in stock already, 576-wide rows do not fit Q6_K's 256 blocks)
        extra = large.stat().st_size - stock.stat().st_size
        if extra > 0.005 * stock.stat().st_size:
            mix_l = plan_mix(base, t, imatrix=imatrix, fisher=fisher, budget_bytes=mix.stock_bytes + extra, costs=list(mix.costs))
            tuned_l = out / file_name("smol", tuned_variant(t + "_L"))
            write_tuned(base, tuned_l, mix_l.recipe, imatrix=imatrix)
            (out / recipe_name("smol", tuned_variant(t + "_L"))).write_text(mix_l.recipe.to_text(), encoding="utf-8")
            notes[tuned_variant(t + "_L")] = {"predicted_kl": mix_l.predicted_kl, "stock_predicted_kl": mix_l.stock_predicted_kl}
            files.append(tuned_l)

    max_tokens = args.windows * (args.context - 1)
    t0 = time.monotonic()
    rows = verify_gguf(files, fp16, text="builtin:heldout", max_tokens=max_tokens, context=args.context)
    timings["evaluate"] = round(time.monotonic() - t0, 2)
    for r in rows:
        r["variant"] = r["file"].removeprefix("smol.").removesuffix(".gguf")
        r.update(notes.get(r["variant"], {}))
    (work / "frontier.json").write_text(json.dumps({"rows": rows, "timings": timings, "search_peak_traced_mb": search_peak,
                                                    "peak_rss_mb": rss_mb(), "windows": args.windows, "context": args.context}, indent=1))
    print(f"\nSmolLM2-135M, KL vs fp16 on {rows[0]['tokens']} held-out tokens ({args.windows}x{args.context})")
    print(f"{'variant':<22}{'size GB':>9}{'bpw':>7}{'KL':>9}{'top-1':>8}{'ppl':>9}{'pred KL':>9}")
    for r in sorted(rows, key=lambda r: r["size_bytes"]):
        pred = f"{r['predicted_kl']:.4f}" if "predicted_kl" in r else ""
        print(f"{r['variant']:<22}{r['size_bytes'] / 1e9:>9.4f}{r['bits_per_weight']:>7.2f}{r['kl_div']:>9.4f}{r['top1']:>8.3f}"
              f"{r['perplexity']:>9.3f}{pred:>9}")
    by = {r["variant"]: r for r in rows}
    for v, note in notes.items():
        stock_v = v.removesuffix("-tuned")
        if stock_v in by and v in by:
            s, m = by[stock_v], by[v]
            print(f"{v}: size {m['size_bytes'] / s['size_bytes'] - 1:+.2%} vs {stock_v}, KL ratio {m['kl_div'] / s['kl_div']:.2f} "
                  f"(target <= 0.70), top-1 {m['top1'] - s['top1']:+.3f}; predicted KL stock {note['stock_predicted_kl']:.4f} -> {note['predicted_kl']:.4f}")
    print("cost (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    print(f"search peak traced (numpy) memory {search_peak:.0f} MB; process peak RSS {rss_mb():.0f} MB")
    plot(rows, work / "frontier.png")
    print(f"wrote {work / 'frontier.json'} and {work / 'frontier.png'}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tuned, style in ((False, dict(marker="o", color="tab:gray", label="llama.cpp stock / _L")),
                         (True, dict(marker="*", color="tab:red", markersize=11, label="hubtool tuned"))):
        pts = sorted((r["size_bytes"] / 1e6, r["kl_div"], r["variant"]) for r in rows if r["variant"].endswith("-tuned") == tuned)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="none", **style)
        for x, y, v in pts:
            ax.annotate(v, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("KL divergence vs fp16 (nats/token, held-out)")
    ax.set_yscale("log")
    ax.set_title("SmolLM2-135M GGUF: size vs KL")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
