"""Benchmark: the GGUF quality frontier of a real small model: stock llama.cpp types vs hubtool's tuned mixes.

For each stock type (default Q4_K_M, Q3_K_M, Q2_K): the stock file, a bartowski-style `_L` (stock +
Q8_0 token embeddings/output), the tuned mix at the stock file's size and, when `_L` differs from
stock, the tuned mix at the `_L` file's size; all quantized with the same importance matrix from
the same F16 GGUF. Texts: the importance matrix and the Fisher pass read `builtin` (calibration.txt:
Python docs tutorial/howto/reference/library); every file is evaluated in llama.cpp against the fp16
HF model on `builtin:heldout` (heldout.txt: the Python FAQ, no paragraph shared): KL, top-1, perplexity.

Each piece of the search (imatrix, Fisher, per-tensor measurement, allocation, tuned quantization)
and each plain quantization runs in its own spawned process, so its wall time and peak RSS are its own.
The per-layer cost is extrapolated to 7B (32 layers, hidden 4096, MLP 11008) and 70B (80 layers,
hidden 8192, MLP 28672, 8 KV heads) shapes: the imatrix and Fisher passes scale with the linear
weights a token passes through (per-layer share of the measured time x weight ratio), the
measurement with the summed row length of a layer's tensors (it quantizes a fixed 256 rows of each
tensor at every candidate type), allocation and the dry run are per tensor.

    nice .venv/bin/python bench/frontier.py --model smollm2-135m [--types Q4_K_M,Q3_K_M,Q2_K] [--windows 5]
Writes bench/results/frontier-<model>.{json,png,md} (and caches under .bench-cache/frontier-<model>).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

SHORT = {"smollm2-135m": "smol", "gemma3-270m": "gemma"}
SHAPES = {"7B": dict(layers=32, hidden=4096, mlp=11008, kv=4096), "70B": dict(layers=80, hidden=8192, mlp=28672, kv=1024)}


# ---- pieces, each in a fresh process -------------------------------------------------------------

def _in_child(fn_name: str, kwargs: dict) -> tuple[float, float, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    fn = globals()[fn_name]
    t = time.monotonic()
    out = fn(**kwargs)
    return time.monotonic() - t, _hwm_mb(), out


def _hwm_mb() -> float:
    """This process's own peak RSS (VmHWM of its address space). Not ru_maxrss: Linux carries the parent's
    high-water mark into a forked child and across exec, so a spawned piece would report at least the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_piece(ledger: dict, key: str, fn_name: str, **kwargs) -> Any:
    """FN_NAME(**KWARGS) in a spawned process; records {wall_s, peak_rss_mb} under KEY."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        wall, rss, out = pool.submit(_in_child, fn_name, kwargs).result()
    ledger[key] = {"wall_s": round(wall, 2), "peak_rss_mb": round(rss)}
    print(f"  {key}: {wall:.1f} s, peak RSS {rss:.0f} MB", flush=True)
    return out


def p_convert(fp16: str, out: str, name: str) -> str:
    from hubtool.gguf import export_gguf

    return export_gguf(Path(fp16), Path(out), ["F16"], name=name, split_max_size="0", overwrite=True)[0]["file"]


def p_quantize(base: str, dst: str, gguf_type: str, imatrix: str, overrides: list | None = None) -> None:
    from hubtool.gguf.imatrix import load_imatrix
    from hubtool.gguf.quantize import quantize_gguf

    quantize_gguf(Path(base), Path(dst), gguf_type, imatrix=load_imatrix(Path(imatrix)), tensor_types=overrides)


def p_imatrix(fp16: str, arch: str, max_tokens: int, out: str) -> None:
    from hubtool.gguf.imatrix import compute_imatrix, save_imatrix
    from hubtool.quality.texts import read_text_source

    sums, counts = compute_imatrix(Path(fp16), read_text_source("builtin"), arch_name=arch, max_tokens=max_tokens)
    save_imatrix(Path(out), sums, counts, dataset="builtin", context=512)


def p_fisher(fp16: str, arch: str, max_tokens: int, out: str) -> None:
    import numpy as np

    from hubtool.gguf.mix import activation_noise
    from hubtool.quality.sensitivity import output_fisher
    from hubtool.quality.texts import read_text_source

    np.savez(out, **output_fisher(Path(fp16), read_text_source("builtin"), arch_name=arch, max_tokens=max_tokens,
                                  input_noise=activation_noise()))


def _inputs(imatrix: str, fisher: str) -> tuple[dict, dict]:
    import numpy as np

    from hubtool.gguf.imatrix import load_imatrix

    return load_imatrix(Path(imatrix)), dict(np.load(fisher))


def p_measure(base: str, gguf_type: str, imatrix: str, fisher: str, sample_rows: int, out: str) -> None:
    from hubtool.gguf.mix import candidate_types, measure_costs

    im, fi = _inputs(imatrix, fisher)
    tunable = sorted(_tunable(Path(base), gguf_type, Path(imatrix)))
    costs = measure_costs(Path(base), tunable, candidate_types(gguf_type), imatrix=im, fisher=fi, sample_rows=sample_rows)
    Path(out).write_bytes(pickle.dumps(costs))


def p_allocate(base: str, gguf_type: str, imatrix: str, fisher: str, costs: str, budget_bytes: int | None) -> Any:
    from hubtool.gguf.mix import plan_mix

    im, fi = _inputs(imatrix, fisher)
    return plan_mix(Path(base), gguf_type, imatrix=im, fisher=fi, costs=pickle.loads(Path(costs).read_bytes()), budget_bytes=budget_bytes)


# ---- the benchmark -------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(SHORT))
    ap.add_argument("--work", type=Path, default=None, help="cache folder (default .bench-cache/frontier-MODEL)")
    ap.add_argument("--types", default="Q4_K_M,Q3_K_M,Q2_K")
    ap.add_argument("--windows", type=int, default=5, help="held-out windows of --context tokens")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--imatrix-tokens", type=int, default=4096)
    ap.add_argument("--fisher-tokens", type=int, default=1024)
    ap.add_argument("--sample-rows", type=int, default=256, help="rows per tensor the search quantizes at each candidate type")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--render-only", action="store_true", help="redraw the .md and .png from the saved .json")
    args = ap.parse_args()
    load_start = list(os.getloadavg())

    from hubtool.gguf import verify_gguf
    from hubtool.gguf.facts import file_name, recipe_name, tuned_variant
    from hubtool.gguf.mix import describe_changes, file_types
    from hubtool.real_models import export_fp16, real_model

    model = real_model(args.model)
    short = SHORT[args.model]
    work = args.work or ROOT / ".bench-cache" / f"frontier-{args.model}"
    work.mkdir(parents=True, exist_ok=True)
    cost_file = work / "costs.json"
    costs: dict[str, dict] = json.loads(cost_file.read_text()) if cost_file.is_file() else {}

    def piece(key: str, fn: str, output: Path, **kw) -> Any:
        if output.exists() and key in costs:
            return None
        out = run_piece(costs, key, fn, **kw)
        cost_file.write_text(json.dumps(costs, indent=1))
        return out

    fp16 = export_fp16(model, work / "fp16")
    config = json.loads((fp16 / "config.json").read_text())
    if args.render_only:
        stem = args.results / f"frontier-{args.model}"
        write_report(stem, json.loads(stem.with_suffix(".json").read_text()), config)
        return
    arch = {"LlamaForCausalLM": "llama", "Gemma3ForCausalLM": "gemma3"}[model.architecture]
    base = work / "gguf" / file_name(short, "F16")
    piece("convert", "p_convert", base, fp16=str(fp16), out=str(work / "gguf"), name=short)
    im_path, fisher_path = work / f"{short}.imatrix.gguf", work / "fisher+activation-noise.npz"
    piece("imatrix", "p_imatrix", im_path, fp16=str(fp16), arch=arch, max_tokens=args.imatrix_tokens, out=str(im_path))
    piece("fisher", "p_fisher", fisher_path, fp16=str(fp16), arch=arch, max_tokens=args.fisher_tokens, out=str(fisher_path))
    common = dict(base=str(base), imatrix=str(im_path), fisher=str(fisher_path))

    out = work / "files"
    out.mkdir(exist_ok=True)
    files: list[Path] = []
    notes: dict[str, dict] = {}
    measured: dict[tuple[str, frozenset], Path] = {}
    types = [s.strip().upper() for s in args.types.split(",") if s.strip()]
    for t in types:
        stock = out / file_name(short, t)
        piece(f"quantize:{t}", "p_quantize", stock, base=str(base), dst=str(stock), gguf_type=t, imatrix=str(im_path))
        large = out / file_name(short, t + "_L")
        l_over = [(r"^token_embd\.weight$", "Q8_0"), (r"^output\.weight$", "Q8_0")]
        piece(f"quantize:{t}_L", "p_quantize", large, base=str(base), dst=str(large), gguf_type=t, imatrix=str(im_path), overrides=l_over)
        family = "IQ" if t.startswith("IQ") else "K"
        need = _tunable(base, t, im_path)
        cost_path = next((p for (fam, names), p in measured.items() if fam == family and need <= names), None)
        if cost_path is None:  # one measurement serves every type of a family that quantizes no other tensor
            cost_path = work / f"measure-{family}-{t}.v3.pkl"  # v3: 16-bit rungs, activation noise, Fisher-stratified rows
            piece(f"measure:{family}", "p_measure", cost_path, gguf_type=t, sample_rows=args.sample_rows, out=str(cost_path), **common)
            measured[(family, frozenset(need))] = cost_path
        same_as_stock = file_types(large) == file_types(stock)
        budgets = [(tuned_variant(t), None)]
        if same_as_stock:
            print(f"{t}_L: every tensor has the same type as stock {t} (its token embedding/output is Q8_0 already); evaluated once")
        else:
            budgets.append((tuned_variant(t + "_L"), large.stat().st_size - stock.stat().st_size))
        files += [stock] + ([] if same_as_stock else [large])
        stock_mix = None
        for variant, extra in budgets:
            budget = None if extra is None else stock_mix.stock_bytes + extra
            mix = run_piece(costs, f"allocate:{variant}", "p_allocate", gguf_type=t, costs=str(cost_path), budget_bytes=budget, **common)
            stock_mix = stock_mix or mix
            tuned = out / file_name(short, variant)
            run_piece(costs, f"quantize:{variant}", "p_quantize", base=str(base), dst=str(tuned), gguf_type=t, imatrix=str(im_path),
                      overrides=mix.recipe.overrides())
            cost_file.write_text(json.dumps(costs, indent=1))
            (out / recipe_name(short, variant)).write_text(mix.recipe.to_text(), encoding="utf-8")
            notes[variant] = {"predicted_kl": mix.predicted_kl, "stock_predicted_kl": mix.stock_predicted_kl,
                              "changes": describe_changes(mix), "compared_with": t if extra is None else t + "_L"}
            files.append(tuned)

    max_tokens = args.windows * args.context  # verify's full windows: context tokens each, BOS first
    t0 = time.monotonic()
    rows = verify_gguf(files, fp16, text="builtin:heldout", max_tokens=max_tokens, context=args.context)
    evaluate_s = round(time.monotonic() - t0, 1)
    for r in rows:
        r["variant"] = r["file"].removeprefix(f"{short}.").removesuffix(".gguf")
        r.update(notes.get(r["variant"], {}))
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"frontier-{args.model}"
    data = {"model": model.name, "rows": rows, "costs": costs, "evaluate_s": evaluate_s, "context": args.context,
            "imatrix_tokens": args.imatrix_tokens, "fisher_tokens": args.fisher_tokens, "sample_rows": args.sample_rows,
            "load_average_start": load_start, "load_average_end": list(os.getloadavg())}
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    write_report(stem, data, config)


def write_report(stem: Path, data: dict, config: dict) -> None:
    """frontier-MODEL.md (the table, targets, cost) and .png from the run's JSON (also: --render-only)."""
    from hubtool.gguf.frontier_plot import plot_frontier

    report = render(data, config)
    print(report)
    stem.with_suffix(".md").write_text(report + "\n")
    rows = data["rows"]
    plot_frontier([(r["variant"], r["size_bytes"], r["kl_div"]) for r in rows], stem.with_suffix(".png"),
                  title=f"{data['model']} GGUF: size vs KL (held-out, {rows[0]['tokens']} tokens)")
    print(f"wrote {stem}.json, .md and .png")


def _tunable(base: Path, gguf_type: str, imatrix: Path) -> set[str]:
    import gguf

    from hubtool.gguf.imatrix import load_imatrix
    from hubtool.gguf.quantize import planned_tensor_types

    source = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(base)).tensors}
    return {n for n, t in planned_tensor_types(base, gguf_type, imatrix=load_imatrix(imatrix)).items() if t != source.get(n)}


def _layer_weights(hidden: int, mlp: int, kv: int) -> tuple[int, int]:
    """(weights of one decoder layer's linears, summed row length of its 7 tensors)."""
    return 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * mlp, 6 * hidden + mlp


def render(data: dict, config: dict) -> str:
    rows, costs, evaluate_s = data["rows"], data["costs"], data["evaluate_s"]
    args = argparse.Namespace(**{k: data[k] for k in ("context", "imatrix_tokens", "fisher_tokens")})
    notes = {r["variant"]: r for r in rows if "compared_with" in r}
    loads = " / ".join("{:.2f} {:.2f} {:.2f}".format(*data[k]) for k in ("load_average_start", "load_average_end") if data.get(k))
    lines = [f"# {data['model']}: GGUF stock vs tuned (bench/frontier.py)", "",
             f"KL(fp16 || GGUF) and top-1 on {rows[0]['tokens']} held-out tokens ({args.context}-token windows; "
             f"`builtin:heldout` = Python FAQ), importance matrix on {args.imatrix_tokens} and Fisher on {args.fisher_tokens} "
             f"tokens of `builtin` (Python tutorial/howto/reference/library; disjoint from the held-out text). "
             f"Load average at start / end: {loads} (2 cores shared with other jobs: wall times are inflated).", "",
             "| variant | size MB | bpw | KL | top-1 | ppl | predicted KL |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["size_bytes"]):
        pred = f"{r['predicted_kl']:.4f}" if "predicted_kl" in r else ""
        lines.append(f"| {r['variant']} | {r['size_bytes'] / 1e6:.2f} | {r['bits_per_weight']:.2f} | {r['kl_div']:.4f} | {r['top1']:.3f} "
                     f"| {r['perplexity']:.3f} | {pred} |")
    lines += ["", "Targets (tuned at equal size: |size ratio - 1| <= 1 %, KL ratio <= 0.70, top-1 not worse):", ""]
    by = {r["variant"]: r for r in rows}
    for v, note in notes.items():
        s, m = by.get(note["compared_with"]), by.get(v)
        if s and m:
            size = m["size_bytes"] / s["size_bytes"] - 1
            ratio = m["kl_div"] / s["kl_div"]
            ok = abs(size) <= 0.01 and ratio <= 0.70 and m["top1"] >= s["top1"]
            lines.append(f"- {v} vs {note['compared_with']}: size {size:+.2%}, KL {s['kl_div']:.4f} -> {m['kl_div']:.4f} "
                         f"(ratio {ratio:.2f}), top-1 {s['top1']:.3f} -> {m['top1']:.3f} ({m['top1'] - s['top1']:+.3f}): "
                         f"{'met' if ok else 'MISSED'}")
    lines += [f"- {n}" for n in data.get("notes", [])]  # measured by hand beside the run (e.g. the F16 floor), with their command
    lines += ["", "Cost (each piece in its own process; wall s, peak RSS MB):", "", "| piece | wall s | peak RSS MB |", "|---|---:|---:|"]
    for k, c in costs.items():
        lines.append(f"| {k} | {c['wall_s']} | {c['peak_rss_mb']} |")
    lines.append(f"| evaluate (all files, fp16 reference) | {evaluate_s} | |")
    search = [k for k in costs if k.split(":")[0] in ("imatrix", "fisher", "measure", "allocate")]
    first = next((k for k in costs if k.startswith("quantize:") and "tuned" not in k and not k.endswith("_L")), None)
    if first:
        total = sum(costs[k]["wall_s"] for k in search)
        lines.append("")
        lines.append(f"Search total (imatrix + Fisher + measurement + allocation, all types): {total:.0f} s vs plain {first} "
                     f"quantization {costs[first]['wall_s']} s ({total / max(costs[first]['wall_s'], 0.01):.0f}x); the measurement is shared by "
                     "every type of one family only when they quantize the same tensors.")
    # per-layer extrapolation
    n_layers = int(config["num_hidden_layers"])
    hidden, mlp = int(config["hidden_size"]), int(config["intermediate_size"])
    kv = int(config.get("num_key_value_heads", config["num_attention_heads"])) * int(config.get("head_dim") or hidden // config["num_attention_heads"])
    q = int(config["num_attention_heads"]) * int(config.get("head_dim") or hidden // config["num_attention_heads"])
    layer_w = 2 * hidden * q + 2 * hidden * kv + 3 * hidden * mlp
    head_w = hidden * int(config["vocab_size"])
    layer_k = 2 * hidden + q + hidden + hidden + hidden + mlp  # q,k,v,gate,up rows read `hidden`; o reads q-width; down reads mlp
    share = n_layers * layer_w / (n_layers * layer_w + head_w)  # the part of a forward pass spent in decoder layers
    per_layer = {k: costs[k]["wall_s"] * share / n_layers for k in ("imatrix", "fisher") if k in costs}
    meas = [k for k in costs if k.startswith("measure:")]
    if meas:
        per_layer["measure"] = sum(costs[k]["wall_s"] for k in meas) / len(meas) * 7 / (7 * n_layers + 1)  # 7 of the tensors per layer
    lines += ["", f"Per-layer cost here: " + ", ".join(f"{k} {v:.2f} s" for k, v in per_layer.items())
              + f" (imatrix/Fisher: the decoder layers' share {share:.0%} of the forward's weights over {n_layers} layers; "
              "measurement: one family's measurement, 7 of its 7 x layers + 1 tensors; it includes one gguf-py parse of the "
              "file's metadata, ~38 s for Gemma-3's 262k-token vocabulary here, so the extrapolation is an upper bound)."]
    for shape, s in SHAPES.items():
        w, k = _layer_weights(s["hidden"], s["mlp"], s["kv"])
        t_im = per_layer.get("imatrix", 0) * w / layer_w * s["layers"]
        t_fi = per_layer.get("fisher", 0) * w / layer_w * s["layers"]
        t_me = per_layer.get("measure", 0) * k / layer_k * s["layers"]
        lines.append(f"- {shape} shape ({s['layers']} layers, hidden {s['hidden']}, MLP {s['mlp']}): imatrix ~{t_im / 3600:.1f} h, "
                     f"Fisher ~{t_fi / 3600:.1f} h (same token counts, this CPU; weights x{w / layer_w:.0f} per layer), "
                     f"measurement ~{t_me / 60:.0f} min per type family (row length x{k / layer_k:.1f} per layer); "
                     f"imatrix/Fisher stream block by block (bench/calibration_memory.py): one fp32 layer in RAM ~{4 * w / 1e9:.1f} GB "
                     f"+ activations + the Fisher's saved block inputs ~{4 * 2048 * s['hidden'] * s['layers'] / 1e9:.1f} GB (2048 tokens), "
                     f"not the whole fp32 model's ~{4 * w * s['layers'] / 1e9:.0f} GB.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
