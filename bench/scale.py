"""Benchmark: a whole `hubtool release --local-hub` on synthetic models of real layer shapes, per stage
wall time and peak RSS of the whole process tree, and how peak RSS grows with depth.

Synthetic fp16 models (random weights, built once into --cache) with Llama-7B shapes (hidden 4096,
MLP 11008, 32 heads) or Llama-2-70B shapes (hidden 8192, MLP 28672, 64 heads / 8 KV heads), vocab
32000 and a real SentencePiece tokenizer (trained here on packaged prose; padded to 32000 like
Llama's) that llama.cpp's converter accepts, plus a rank-64 LoRA on all seven projections. Each
release: merge with --rope linear:4, GPTQ (small calibration), GGUF q4_k_m + q8_0, the fp16
reference, verification, cards, push to a local Hub.

    python bench/scale.py --shape 7b --layers 2 4 8          # depth growth of every stage
    python bench/scale.py --shape 70b --layers 2 --no-gptq   # 70B layer shapes
    python bench/scale.py --shape 7b --layers 32 --no-gptq --no-merge --gguf-types q4_k_m   # the full 7B shape

Prints one table per model and the growth from the fewest to the most layers; --json FILE keeps
the numbers. RSS is sampled every 0.2 s from /proc over the release process and its children.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hubtool.merge.shard_writer import ShardWriter  # noqa: E402

SHAPES = {
    "7b": {"hidden": 4096, "mlp": 11008, "heads": 32, "kv_heads": 32, "full_layers": 32},
    "tiny": {"hidden": 256, "mlp": 768, "heads": 4, "kv_heads": 2, "full_layers": 4},  # a smoke test of the script
    "70b": {"hidden": 8192, "mlp": 28672, "heads": 64, "kv_heads": 8, "full_layers": 80},
}
VOCAB = 32000
RANK = 64
GB = 1 << 30


def proj_shapes(s: dict[str, int]) -> dict[str, tuple[int, int]]:
    h, m, kv = s["hidden"], s["mlp"], s["hidden"] // s["heads"] * s["kv_heads"]
    return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h), "self_attn.o_proj": (h, h),
            "mlp.gate_proj": (m, h), "mlp.up_proj": (m, h), "mlp.down_proj": (h, m)}


def build_tokenizer(cache: Path) -> Path:
    """A SentencePiece BPE (byte fallback, Llama's special ids) trained on hubtool's packaged prose."""
    tok_dir = cache / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        return tok_dir
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from hubtool.quality.texts import builtin_text

    work = cache / "tok-train"
    work.mkdir(parents=True, exist_ok=True)
    (work / "corpus.txt").write_text(builtin_text("calibration") + "\n" + builtin_text("heldout"), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(work / "corpus.txt"), model_prefix=str(work / "sp"), vocab_size=VOCAB, hard_vocab_limit=False,
                                   model_type="bpe", character_coverage=1.0, byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   minloglevel=2)
    tmp = cache / "tokenizer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copy(work / "sp.model", tmp / "tokenizer.model")
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                                                           "unk_token": "<unk>", "add_bos_token": True, "legacy": False}))
    tok = AutoTokenizer.from_pretrained(tmp)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.save_pretrained(tmp)
    shutil.copy(work / "sp.model", tmp / "tokenizer.model")
    shutil.rmtree(work)
    tmp.rename(tok_dir)
    return tok_dir


def build_model(cache: Path, shape: str, layers: int, shard_bytes: int = 5 * 10**9) -> tuple[Path, Path]:
    """(base folder, rank-64 LoRA folder), built once."""
    s = SHAPES[shape]
    base, adapter = cache / f"{shape}-{layers}L", cache / f"{shape}-{layers}L-lora{RANK}"
    if (base / "config.json").is_file() and (adapter / "adapter_config.json").is_file():
        return base, adapter
    tok = build_tokenizer(cache)
    print(f"building {base} ({layers} layers of {shape} shapes) ...", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    h, proj = s["hidden"], proj_shapes(s)
    tensors: list[tuple[str, list[int]]] = [("model.embed_tokens.weight", [VOCAB, h])]
    for i in range(layers):
        tensors += [(f"model.layers.{i}.input_layernorm.weight", [h]), (f"model.layers.{i}.post_attention_layernorm.weight", [h])]
        tensors += [(f"model.layers.{i}.{n}.weight", list(sh)) for n, sh in proj.items()]
    tensors += [("model.norm.weight", [h]), ("lm_head.weight", [VOCAB, h])]
    gen = torch.Generator().manual_seed(0)
    shards: list[list[tuple[str, list[int]]]] = [[]]
    size = 0
    for name, sh in tensors:
        nbytes = torch.Size(sh).numel() * 2
        if size and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, sh))
        size += nbytes
    weight_map, total = {}, 0
    for i, entries in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        w = ShardWriter(base / fname, [(n, torch.float16, sh) for n, sh in entries])
        for name, sh in entries:
            if "norm" in name:
                t = torch.ones(sh, dtype=torch.float16)
            else:  # 1/sqrt(fan_in): activations stay O(1) through the depth, like a trained model's
                t = (torch.randn(sh, generator=gen) * (1.0 if "embed" in name else sh[-1] ** -0.5)).half()
            w.write(name, t)
            weight_map[name] = fname
        w.close()
        total += w.data_bytes
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (base / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": s["mlp"],
        "num_hidden_layers": layers, "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"], "vocab_size": VOCAB,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "dtype": "float16", "bos_token_id": 1, "eos_token_id": 2,
    }, indent=2))
    for f in tok.iterdir():
        shutil.copy(f, base / f.name)
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en]\n---\n# synthetic benchmark model\n")
    from safetensors.torch import save_file

    adapter.mkdir(parents=True, exist_ok=True)
    lora = {}
    for i in range(layers):
        for name, (out_f, in_f) in proj.items():
            key = f"base_model.model.model.layers.{i}.{name}"
            lora[f"{key}.lora_A.weight"] = (torch.randn(RANK, in_f, generator=gen) * 0.01).half()
            lora[f"{key}.lora_B.weight"] = (torch.randn(out_f, RANK, generator=gen) * 0.01).half()
    save_file(lora, adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "target_modules": [n.split(".")[-1] for n in proj],
        "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
    }))
    return base, adapter


def tree_rss(pid: int) -> int:
    """RSS bytes of PID and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


STAGE_RE = re.compile(r"^\[\d+/\d+\] (?:(?P<stage>\S+): (?:running|cached)|(?P<plain>cards|push))")


def run_release(base: Path, adapter: Path | None, work: Path, *, gptq: bool, verify_tokens: int, samples: int, seq_len: int,
                log_file: Path, gguf_types: list[str]) -> dict[str, Any]:
    """One release in a child process; per stage: seconds (the release's own record) and peak tree RSS."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    quants = ["gptq", "gguf"] if gptq else ["gguf"]
    (work / "release.yaml").write_text(json.dumps({
        "name": "bench", "namespace": "bench", "quants": quants,
        "gptq": {"presets": ["gptq-4bit-32g-actorder"], "samples": samples, "seq_len": seq_len},
        "gguf": {"types": gguf_types},
        # random weights give near-uniform logits (perplexity ~ vocab), where top-1 agreement says little about
        # a quant: the benchmark measures memory and time, so only the KL gate stays
        "verify": {"max_tokens": verify_tokens, "context": 512, "gates": {"min_top1": None, "max_ppl_ratio": None, "max_kl": 1.0}},
        "card": {"license": "apache-2.0", "base_model": "bench/base"},
    }))
    inputs = ["--base", str(base), "--adapter", str(adapter), "--rope", "linear:4"] if adapter is not None else [str(base)]
    cmd = [sys.executable, "-m", "hubtool", "release", *inputs,
           "--config", str(work / "release.yaml"), "--work-dir", str(work / "work"), "--local-hub", str(work / "hub"), "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, errors="replace")
    state = {"stage": "setup"}
    peaks: dict[str, int] = {}
    order: list[str] = []
    walls: dict[str, float] = {}
    stage_start = [time.monotonic()]

    def read_err() -> None:
        with open(log_file, "a") as log:
            for line in proc.stderr:  # type: ignore[union-attr]
                log.write(line)
                log.flush()
                m = STAGE_RE.match(line.strip())
                if m:
                    now = time.monotonic()
                    walls[state["stage"]] = walls.get(state["stage"], 0.0) + now - stage_start[0]
                    stage_start[0] = now
                    state["stage"] = m.group("stage") or m.group("plain")

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    out_chunks: list[str] = []
    out_reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    out_reader.start()
    while proc.poll() is None:
        rss = tree_rss(proc.pid)
        st = state["stage"]
        if st not in peaks:
            order.append(st)
        peaks[st] = max(peaks.get(st, 0), rss)
        time.sleep(0.2)
    reader.join()
    out_reader.join()
    walls[state["stage"]] = walls.get(state["stage"], 0.0) + time.monotonic() - stage_start[0]
    total = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"release failed (exit {proc.returncode}); see {log_file}")
    summary = json.loads("".join(out_chunks))
    stages = []
    for st in order:
        stages.append({"stage": st, "seconds": round(walls.get(st, 0.0), 1), "peak_rss_gb": round(peaks[st] / GB, 3)})
    return {"total_seconds": round(total, 1), "peak_rss_gb": round(max(peaks.values()) / GB, 3), "stages": stages,
            "quality": summary.get("quality", [])}


def table(result: dict[str, Any]) -> str:
    lines = [f"{'stage':<34}{'wall s':>9}{'peak RSS GB':>13}"]
    for st in result["stages"]:
        lines.append(f"{st['stage']:<34}{st['seconds']:>9.1f}{st['peak_rss_gb']:>13.2f}")
    lines.append(f"{'total':<34}{result['total_seconds']:>9.1f}{result['peak_rss_gb']:>13.2f}")
    return "\n".join(lines)


def _kind(stage: str) -> str:
    return stage.split(":")[0] if stage.startswith("gptq:") else stage


def growth(results: dict[int, dict[str, Any]]) -> str:
    lo, hi = min(results), max(results)
    a = {st["stage"]: st for st in results[lo]["stages"]}
    b = {st["stage"]: st for st in results[hi]["stages"]}
    lines = [f"peak RSS growth {lo} -> {hi} layers (target <= 10%), and per-layer time:",
             f"{'stage':<34}{'GB @' + str(lo):>10}{'GB @' + str(hi):>10}{'growth':>9}{'s/layer':>9}"]
    for name in b:
        if name not in a:
            continue
        g = b[name]["peak_rss_gb"] / a[name]["peak_rss_gb"] - 1 if a[name]["peak_rss_gb"] else 0.0
        per_layer = (b[name]["seconds"] - a[name]["seconds"]) / (hi - lo)
        lines.append(f"{name:<34}{a[name]['peak_rss_gb']:>10.2f}{b[name]['peak_rss_gb']:>10.2f}{g:>8.0%}{per_layer:>9.1f}")
    return "\n".join(lines)


def extrapolate(shape: str, results: dict[int, dict[str, Any]]) -> str:
    """Full-depth release time: per stage, fixed part + per-layer part x layers (linear fit of the measured depths)."""
    full = SHAPES[shape]["full_layers"]
    depths = sorted(results)
    lines = [f"extrapolated full {shape} ({full} layers) on this machine (estimate):"]
    total = 0.0
    for st in results[depths[-1]]["stages"]:
        name = st["stage"]
        pts = [(d, next((x["seconds"] for x in results[d]["stages"] if x["stage"] == name), None)) for d in depths]
        pts = [(d, s) for d, s in pts if s is not None]
        if len(pts) >= 2:
            (d0, s0), (d1, s1) = pts[0], pts[-1]
            per = max(0.0, (s1 - s0) / (d1 - d0))
            est = s0 + per * (full - d0)
        else:  # one depth: assume the stage scales with the layer count
            d0, s0 = pts[0]
            per = s0 / d0
            est = per * full
        total += est
        lines.append(f"  {name:<32}{per:>8.1f} s/layer  -> ~{est / 60:>7.1f} min")
    lines.append(f"  {'total':<32}{'':>16}   ~{total / 3600:>7.2f} h")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "hubtool-bench" / "scale")
    ap.add_argument("--work", type=Path, default=None, help="release work area (deleted after each run; default: CACHE/runs)")
    ap.add_argument("--no-gptq", dest="gptq", action="store_false", help="skip the GPTQ stage (CPU time)")
    ap.add_argument("--samples", type=int, default=8, help="GPTQ calibration samples")
    ap.add_argument("--seq-len", type=int, default=256, help="GPTQ calibration sample length")
    ap.add_argument("--verify-tokens", type=int, default=1024, help="held-out tokens for verification (windows of 512)")
    ap.add_argument("--gguf-types", default="q4_k_m,q8_0", help="comma list (q8_0 alone saves CPU time)")
    ap.add_argument("--keep", action="store_true", help="keep each release's work dir")
    ap.add_argument("--no-merge", dest="merge", action="store_false",
                    help="release the synthetic model as the merged source (no merge stage: one copy of the model less on disk)")
    ap.add_argument("--json", type=Path, help="write all numbers here")
    args = ap.parse_args()
    work_root = args.work or args.cache / "runs"
    results: dict[int, dict[str, Any]] = {}
    if args.json and args.json.is_file():  # earlier depths of the same shape (runs can be split up)
        old = json.loads(args.json.read_text())
        if old.get("shape") == args.shape:
            results = {int(k): v for k, v in old["results"].items()}
    for layers in args.layers:
        base, adapter = build_model(args.cache, args.shape, layers)
        size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
        print(f"\n== {args.shape} shapes, {layers} layers ({size / GB:.2f} GB fp16), release with "
              f"{'GPTQ, ' if args.gptq else ''}GGUF {args.gguf_types}, verify ({args.verify_tokens} tokens) ==", flush=True)
        work = work_root / f"{args.shape}-{layers}L-{args.gguf_types.replace(',', '+')}{'-gptq' if args.gptq else ''}"
        log_file = args.cache / f"release-{args.shape}-{layers}L-{args.gguf_types.replace(',', '+')}{'-gptq' if args.gptq else ''}.log"
        log_file.unlink(missing_ok=True)
        res = run_release(base, adapter if args.merge else None, work, gptq=args.gptq, verify_tokens=args.verify_tokens, samples=args.samples,
                          seq_len=args.seq_len, log_file=log_file, gguf_types=args.gguf_types.split(","))
        res["model_gb"] = round(size / GB, 3)
        results[layers] = res
        print(table(res), flush=True)
        for q in res["quality"]:
            print(f"  quality {q['kind']:<5} {q['variant']:<28} ppl {q['perplexity']:.3f} KL {q['kl_div']:.4f} top-1 {q['top1']:.3f}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps({"shape": args.shape, "results": results}, indent=2))
    if len(results) > 1:
        print("\n" + growth(results))
    print("\n" + extrapolate(args.shape, results), flush=True)


if __name__ == "__main__":
    main()
