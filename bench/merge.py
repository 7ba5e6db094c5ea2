"""Benchmark: hubtool's streaming merge vs PEFT's from_pretrained + merge_and_unload + save_pretrained.

Builds (once, cached) a synthetic fp16 model with Llama-7B tensor shapes (hidden 4096, MLP 11008,
vocab 32000; `--layers` of the 32 to keep the run short, 32 for the full 7B) and a rank-64 LoRA
adapter on all seven projections, then in one run measures for each path: wall time, peak RSS of
the child process, and throughput against a plain chunked copy of the same bytes.

    python bench/merge.py --layers 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hubtool.merge.shard_writer import ShardWriter  # noqa: E402

HIDDEN, MLP, VOCAB, HEADS = 4096, 11008, 32000, 32
PROJ = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (MLP, HIDDEN),
    "mlp.up_proj": (MLP, HIDDEN),
    "mlp.down_proj": (HIDDEN, MLP),
}


def _tensors(layers: int) -> list[tuple[str, list[int]]]:
    out = [("model.embed_tokens.weight", [VOCAB, HIDDEN])]
    for i in range(layers):
        out.append((f"model.layers.{i}.input_layernorm.weight", [HIDDEN]))
        out.append((f"model.layers.{i}.post_attention_layernorm.weight", [HIDDEN]))
        out += [(f"model.layers.{i}.{name}.weight", list(shape)) for name, shape in PROJ.items()]
    out += [("model.norm.weight", [HIDDEN]), ("lm_head.weight", [VOCAB, HIDDEN])]
    return out


def build(cache: Path, layers: int, rank: int, shard_bytes: int) -> tuple[Path, Path]:
    base, adapter = cache / f"base-{layers}L", cache / f"adapter-{layers}L-r{rank}"
    if (base / "config.json").exists() and (adapter / "adapter_config.json").exists():
        return base, adapter
    print(f"building synthetic base ({layers} layers of Llama-7B shapes) in {base} ...", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    shards: list[list[tuple[str, list[int]]]] = [[]]
    size = 0
    for name, shape in _tensors(layers):
        nbytes = torch.Size(shape).numel() * 2
        if size and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map = {}
    total = 0
    for i, entries in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        w = ShardWriter(base / fname, [(n, torch.float16, s) for n, s in entries])
        for name, shape in entries:
            t = torch.ones(shape, dtype=torch.float16) if "norm" in name else (torch.randn(shape, generator=gen) * 0.02).half()
            w.write(name, t)
            weight_map[name] = fname
        w.close()
        total += w.data_bytes
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": MLP,
        "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "vocab_size": VOCAB,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "dtype": "float16", "bos_token_id": 1, "eos_token_id": 2,
    }
    (base / "config.json").write_text(json.dumps(config, indent=2))
    adapter.mkdir(parents=True, exist_ok=True)
    lora = {}
    for i in range(layers):
        for name, (out_f, in_f) in PROJ.items():
            key = f"base_model.model.model.layers.{i}.{name}"
            lora[f"{key}.lora_A.weight"] = (torch.randn(rank, in_f, generator=gen) * 0.01).half()
            lora[f"{key}.lora_B.weight"] = (torch.randn(out_f, rank, generator=gen) * 0.01).half()
    from safetensors.torch import save_file

    save_file(lora, adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": [n.split(".")[-1] for n in PROJ],
        "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
    }))
    return base, adapter


PEFT_SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out)
"""


def run_child(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{err[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def plain_copy(src: Path, dst: Path) -> float:
    """Read and write the same bytes in 64 MiB chunks: the I/O floor a merge can't beat."""
    dst.mkdir(parents=True)
    start = time.perf_counter()
    for f in sorted(src.glob("*.safetensors")):
        with open(f, "rb") as r, open(dst / f.name, "wb") as w:
            while chunk := r.read(64 << 20):
                w.write(chunk)
    return time.perf_counter() - start


def warm(path: Path) -> None:
    for f in path.glob("*.safetensors"):
        with open(f, "rb") as r:
            while r.read(64 << 20):
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8, help="decoder layers of Llama-7B shape (32 = the full 7B)")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--shard-gb", type=float, default=5.0, help="base shard size (transformers' default is 5 GB)")
    ap.add_argument("--cache", type=Path, default=ROOT / ".bench-cache" / "merge")
    ap.add_argument("--skip-peft", action="store_true")
    args = ap.parse_args()
    base, adapter = build(args.cache, args.layers, args.rank, int(args.shard_gb * 1e9))
    model_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    work = Path(tempfile.mkdtemp(dir=args.cache, prefix="run-"))
    rows = []
    try:
        warm(base)
        copy_s = plain_copy(base, work / "copy")
        shutil.rmtree(work / "copy")
        warm(base)
        wall, rss = run_child([sys.executable, "-m", "hubtool", "merge", str(base), str(adapter), "-o", str(work / "hubtool"), "--json"])
        rows.append(("hubtool merge", wall, rss))
        shutil.rmtree(work / "hubtool")
        if not args.skip_peft:
            warm(base)
            wall, rss = run_child([sys.executable, "-c", PEFT_SCRIPT, str(base), str(adapter), str(work / "peft")])
            rows.append(("PEFT merge_and_unload", wall, rss))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gb = model_bytes / 1e9
    print(f"\nmodel: {args.layers} layers of Llama-7B shapes, {gb:.2f} GB fp16, rank-{args.rank} LoRA on 7 projections, {os.cpu_count()} CPUs")
    print(f"plain copy of the shards: {copy_s:.1f} s ({gb / copy_s:.2f} GB/s)")
    print(f"{'path':<24}{'wall s':>9}{'GB/s':>8}{'peak RSS GB':>13}{'RSS/model':>11}{'vs copy':>9}")
    for name, wall, rss in rows:
        print(f"{name:<24}{wall:>9.1f}{gb / wall:>8.2f}{rss / 1e9:>13.2f}{rss / model_bytes:>11.3f}{copy_s / wall:>9.2f}")
    if len(rows) == 2:
        (_, w1, r1), (_, w2, r2) = rows
        print(f"hubtool / PEFT: wall {w1 / w2:.2f}x, peak RSS {r1 / r2:.3f}x")


if __name__ == "__main__":
    main()
