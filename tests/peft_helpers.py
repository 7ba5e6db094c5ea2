"""Build PEFT adapters on tiny models and the PEFT-merged reference to compare against."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch


def make_adapter(base_dir: Path, out_dir: Path, *, seed: int = 1, resize_vocab: int | None = None, tokenizer_extra: list[str] | None = None,
                 trust_remote_code: bool = False, **lora_kwargs: Any) -> Path:
    """A LoRA adapter with random (non-zero) A and B, as if trained, saved by PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
    if resize_vocab:
        tok = AutoTokenizer.from_pretrained(base_dir)
        tok.add_tokens(tokenizer_extra or [f"<extra_{i}>" for i in range(resize_vocab - len(tok))])
        model.resize_token_embeddings(resize_vocab)
        tok.save_pretrained(out_dir)
        if (base_dir / "tokenizer.model").exists():
            shutil.copy(base_dir / "tokenizer.model", out_dir / "tokenizer.model")
    lora_kwargs.setdefault("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, LoraConfig(r=lora_kwargs.pop("r", 4), lora_alpha=lora_kwargs.pop("lora_alpha", 8), **lora_kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.05)
            elif p.requires_grad:  # modules_to_save copies
                p.add_(torch.randn_like(p) * 0.02)
    peft_model.save_pretrained(out_dir)
    return out_dir


def peft_reference(base_dir: Path, adapter_dir: Path, *, vocab: int | None = None, trust_remote_code: bool = False):
    """PEFT's merge_and_unload in float32: the reference our streamed merge must match."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
    if vocab:
        model.resize_token_embeddings(vocab)
    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().eval()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder's safetensors shards, as float32, to compare a merge tensor by tensor."""
    from safetensors import safe_open

    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            out.update({k: f.get_tensor(k).float() for k in f.keys()})
    return out
