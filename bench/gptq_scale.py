"""Benchmark: GPTQ host RAM and time by depth (issue "seed-scale releases", point 4), and hubtool's
settings against gptqmodel driven directly with the same calibration.

1. `hubtool quantize gptq` (preset gptq-4bit-32g-actorder, small calibration) on the synthetic
   7B/70B-layer-shape models of bench/scale.py at several depths: wall time, peak RSS of the whole
   process tree (hubtool runs gptqmodel in a child process) sampled every 0.2 s, growth with depth.
2. The same model quantized by gptqmodel driven directly (`GPTQModel.load` + `quantize` + `save`
   with its own defaults for dtype and offload, the same calibration token ids), in its own process.

    python bench/gptq_scale.py --shape 7b --layers 2 4 --direct 2 --samples 8 --seq-len 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scale import GB, build_model, tree_rss  # noqa: E402

DIRECT = """
import json, os, sys, time
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # gptqmodel's pool fails below 2 workers on a 2-core machine
from gptqmodel import GPTQModel, QuantizeConfig
model_dir, out, calib = sys.argv[1], sys.argv[2], sys.argv[3]
examples = json.load(open(calib))
qcfg = QuantizeConfig(bits=4, group_size=32, desc_act=True, sym=True, damp_percent=0.01)
model = GPTQModel.load(model_dir, qcfg)  # gptqmodel's own defaults: dtype, device, offload
model.quantize(examples, batch_size=1)
model.save(out)
"""


def measured(cmd: list[str], timeout: float, log: Path) -> dict:
    """Wall seconds and peak tree RSS of CMD (killed after TIMEOUT s: reported as such); its output goes to LOG.
    It runs in LOG's folder: gptqmodel driven directly writes a ./logs folder into its working directory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    sink = open(log, "w")  # noqa: SIM115 - a file, not a pipe: a pipe nobody reads would stall the child
    proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    peak = 0
    timed_out = False
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        if time.monotonic() - start > timeout:
            proc.kill()
            timed_out = True
            break
        time.sleep(0.2)
    proc.wait()
    sink.close()
    if proc.returncode and not timed_out:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
    return {"seconds": round(time.monotonic() - start, 1), "peak_rss_gb": round(peak / GB, 3), "timed_out": timed_out}


def calibration_ids(model: Path, samples: int, seq_len: int, out: Path) -> None:
    """The token windows hubtool calibrates with, saved for the direct run (same calibration)."""
    from transformers import AutoTokenizer

    from hubtool.gptq.calibration import calibration_dataset

    tok = AutoTokenizer.from_pretrained(model)
    examples, _ = calibration_dataset("builtin", tok, samples, seq_len)
    out.write_text(json.dumps(examples))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--direct", type=int, nargs="*", default=[2], help="depths also quantized by gptqmodel directly")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "hubtool-bench" / "scale")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=3 * 3600, help="seconds before a run is stopped (reported)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: dict[str, dict] = {}
    for layers in args.layers:
        base, _ = build_model(args.cache, args.shape, layers)
        out = args.cache / "runs" / f"gptq-{args.shape}-{layers}L"
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"== hubtool quantize gptq, {args.shape} shapes, {layers} layers, {args.samples}x{args.seq_len} calibration", flush=True)
        r = measured([sys.executable, "-m", "hubtool", "quantize", "gptq", str(base), "-o", str(out), "--samples", str(args.samples),
                      "--seq-len", str(args.seq_len), "--device", "cpu"], args.timeout,
                     args.cache / f"gptq-{args.shape}-{layers}L.log")
        shutil.rmtree(out, ignore_errors=True)
        results[f"hubtool-{layers}L"] = r
        print(f"   {r['seconds']:.0f} s, peak RSS {r['peak_rss_gb']:.2f} GB" + (" (stopped: timeout)" if r["timed_out"] else ""), flush=True)
        if layers in args.direct:
            calib = args.cache / "runs" / "calibration.json"
            calibration_ids(base, args.samples, args.seq_len, calib)
            print(f"== gptqmodel directly (its defaults), same model and calibration", flush=True)
            r = measured([sys.executable, "-c", DIRECT, str(base), str(out), str(calib)], args.timeout,
                         args.cache / f"gptq-direct-{args.shape}-{layers}L.log")
            shutil.rmtree(out, ignore_errors=True)
            results[f"direct-{layers}L"] = r
            print(f"   {r['seconds']:.0f} s, peak RSS {r['peak_rss_gb']:.2f} GB" + (" (stopped: timeout)" if r["timed_out"] else ""), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"shape": args.shape, "samples": args.samples, "seq_len": args.seq_len, "results": results}, indent=2))
    hub = sorted((int(k.split("-")[1][:-1]), v) for k, v in results.items() if k.startswith("hubtool-"))
    if len(hub) > 1:
        (d0, a), (d1, b) = hub[0], hub[-1]
        print(f"\npeak RSS {d0} -> {d1} layers: {a['peak_rss_gb']:.2f} -> {b['peak_rss_gb']:.2f} GB "
              f"({b['peak_rss_gb'] / a['peak_rss_gb'] - 1:+.0%}); {(b['seconds'] - a['seconds']) / (d1 - d0):.0f} s per layer")


if __name__ == "__main__":
    main()
