"""Tiny Llama-family models and an offline sentencepiece tokenizer, built inside the tests.

Nothing here downloads anything: the tokenizer is trained on Python's own docstrings.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import torch

TEXT_MODULES = ("json", "pathlib", "argparse", "collections", "functools", "itertools", "re", "shutil", "subprocess", "typing")


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def corpus_text() -> str:
    """English prose from the standard library's docstrings (offline, license-clean)."""
    parts = []
    for mod_name in TEXT_MODULES:
        mod = __import__(mod_name)
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                parts.append(doc)
    return "\n\n".join(dict.fromkeys(parts))


def train_tokenizer(out_dir: Path, vocab_size: int = 384) -> Path:
    """Train a sentencepiece BPE model and save it as a LlamaTokenizer folder (tokenizer.model + configs)."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    text_file = out_dir / "corpus.txt"
    text_file.write_text(corpus_text(), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(out_dir / "sp"),
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    tok_dir = out_dir / "tok"
    tok_dir.mkdir(exist_ok=True)
    shutil.copy(out_dir / "sp.model", tok_dir / "tokenizer.model")
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "legacy": False,
    }))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(tok_dir)  # adds tokenizer.json + chat_template.jinja; keeps tokenizer.model
    text_file.unlink()
    return tok_dir


def tiny_llama_config(vocab_size: int, **overrides: Any):
    from transformers import LlamaConfig

    kw: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def make_tiny_llama(out_dir: Path, tok_dir: Path, *, seed: int = 0, dtype=torch.float16, max_shard_size: str | None = None, **config_overrides: Any) -> Path:
    """Save a random tiny LlamaForCausalLM with the tokenizer from `tok_dir`."""
    from transformers import LlamaForCausalLM

    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model")).vocab_size()
    torch.manual_seed(seed)
    config = tiny_llama_config(vocab, **config_overrides)
    model = LlamaForCausalLM(config).to(dtype)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kw)
    for f in tok_dir.iterdir():
        shutil.copy(f, out_dir / f.name)
    return out_dir
