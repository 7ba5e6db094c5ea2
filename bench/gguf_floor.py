"""Benchmark: where a GGUF's KL comes from when its weights are exact (Gemma-3 270M at Q4_K_M).

Gemma-3 270M's fp16 here is dequantized from a Q4_K_M GGUF, so llama.cpp's stock Q4_K_M puts every
weight back on its source grid (hubtool's per-tensor weight error is 0 for every tensor), yet the file
measures a KL of ~0.005 against fp16. This script localizes it: the same F16 GGUF quantized to stock
Q4_K_M with groups of tensors kept at F16 (ggml then rounds those matmuls' inputs to F16 instead of
Q8_K/Q8_0), all at Q8_0, and without the importance matrix; all evaluated against one fp16 reference
on the frontier's held-out windows.

    nice .venv/bin/python bench/gguf_floor.py --model gemma3-270m [--work .bench-cache/frontier-gemma3-270m]
Needs bench/frontier.py's cache (the F16 GGUF, the imatrix, the fp16 folder). Writes
bench/results/gguf-floor-<model>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

SHORT = {"smollm2-135m": "smol", "gemma3-270m": "gemma"}
BLK = r"^blk\..*"
# label -> (llama ftype, (regex, type) overrides, with the importance matrix)
VARIANTS = {
    "Q4_K_M": ("Q4_K_M", [], True),
    "Q4_K_M, no imatrix": ("Q4_K_M", [], False),
    "Q8_0": ("Q8_0", [], True),
    "Q4_K_M + token_embd F16": ("Q4_K_M", [(r"^token_embd\.weight$", "F16")], True),
    "Q4_K_M + attn_k/v F16": ("Q4_K_M", [(BLK + r"\.attn_[kv]\.weight$", "F16")], True),
    "Q4_K_M + attn_* F16": ("Q4_K_M", [(BLK + r"\.attn_.*", "F16")], True),
    "Q4_K_M + ffn_* F16": ("Q4_K_M", [(BLK + r"\.ffn_.*", "F16")], True),
    "Q4_K_M + all blk.* F16": ("Q4_K_M", [(BLK, "F16")], True),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m", choices=sorted(SHORT))
    ap.add_argument("--work", type=Path, default=None, help="bench/frontier.py's cache (default .bench-cache/frontier-MODEL)")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the saved .json")
    args = ap.parse_args()
    load_start = list(os.getloadavg())
    if args.render_only:
        stem = args.results / f"gguf-floor-{args.model}"
        write_report(stem, json.loads(stem.with_suffix(".json").read_text()))
        return

    from hubtool.gguf import verify_gguf
    from hubtool.gguf.facts import file_name
    from hubtool.gguf.imatrix import load_imatrix
    from hubtool.gguf.quantize import quantize_gguf

    short = SHORT[args.model]
    work = args.work or ROOT / ".bench-cache" / f"frontier-{args.model}"
    base, im_path, fp16 = work / "gguf" / file_name(short, "F16"), work / f"{short}.imatrix.gguf", work / "fp16"
    for p in (base, im_path, fp16):
        if not p.exists():
            raise SystemExit(f"{p}: missing; run `bench/frontier.py --model {args.model}` first (it builds this cache)")
    imatrix = load_imatrix(im_path)
    out = work / "floor"
    out.mkdir(exist_ok=True)
    files = {}
    for i, (label, (ftype, overrides, with_imatrix)) in enumerate(VARIANTS.items()):
        dst = out / f"{short}.floor{i}.gguf"
        if not dst.exists():
            tmp = dst.with_name(dst.name + ".partial")
            quantize_gguf(base, tmp, ftype, imatrix=imatrix if with_imatrix else None, tensor_types=overrides or None)
            os.replace(tmp, dst)
        files[dst.name] = label
    rows = verify_gguf(list(out / n for n in files), fp16, text="builtin:heldout", max_tokens=args.windows * args.context,
                       context=args.context)
    data = {"model": args.model, "context": args.context, "rows": [{**r, "variant": files[Path(r["file"]).name]} for r in rows],
            "load_average_start": load_start, "load_average_end": list(os.getloadavg())}
    write_report(args.results / f"gguf-floor-{args.model}", data)


def write_report(stem: Path, data: dict) -> None:
    """gguf-floor-MODEL.json and .md (also: --render-only, from the saved .json)."""
    for r in data["rows"]:  # the label from the file's index into VARIANTS (stable across renders)
        r["variant"] = list(VARIANTS)[int(Path(r["file"]).name.split(".floor")[1].split(".")[0])]
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    rows = data["rows"]
    lines = [f"# {data['model']}: KL of files whose weights are exact (bench/gguf_floor.py)", "",
             f"KL(fp16 || GGUF) and top-1 on {rows[0]['tokens']} held-out tokens (`builtin:heldout`, {data.get('context', 512)}-token "
             "windows), every file quantized from the same F16 GGUF with the frontier's importance matrix. Load average at start / end: "
             + " / ".join("{:.2f} {:.2f} {:.2f}".format(*data[k]) for k in ("load_average_start", "load_average_end")) + ".", "",
             "| variant | size MB | KL | top-1 | ppl |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['size_bytes'] / 1e6:.2f} | {r['kl_div']:.5f} | {r['top1']:.3f} | {r['perplexity']:.3f} |")
    lines += ["", *data.get("notes", [])]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

if __name__ == "__main__":
    main()
