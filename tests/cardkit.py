"""Small model folders for card tests: config.json / tokenizer / quant files written by hand (no weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CARDS = Path(__file__).parent / "data" / "cards"
GOLDEN = Path(__file__).parent / "golden"
EXAMPLE_CARDS = sorted(CARDS.glob("*.README.md"))

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VICUNA = "{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} {% else %}ASSISTANT: {{ m['content'] }}</s>{% endif %}{% endfor %}"

LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    "rope_scaling": {"type": "linear", "rope_type": "linear", "factor": 4.0},
}

RELEASE: dict[str, Any] = {
    "repos": {"fp16": "acme/bagel-8k", "adapter": "acme/bagel-8k-peft", "gptq": "acme/bagel-8k-GPTQ", "gguf": "acme/bagel-8k-GGUF"},
    "gptq_variants": [
        {"branch": "main", "bits": 4, "group_size": 32, "desc_act": True, "dataset": "builtin (Python docs)", "seq_len": 2048},
        {"branch": "gptq-8bit-128g", "bits": 8, "group_size": 128, "desc_act": False, "damp_percent": 0.01,
         "dataset": "builtin (Python docs)", "seq_len": 2048, "size_bytes": 7_500_000_000},
    ],
    "gguf_files": [
        {"file": "bagel-8k.Q4_K_M.gguf", "bits_per_weight": 4.89, "size_bytes": 4_368_439_296},
        {"file": "bagel-8k.Q8_0.gguf", "bits_per_weight": 8.5, "size_bytes": 7_161_089_024},
    ],
}

RESULTS: dict[str, Any] = {
    "reference": "fp16", "text": "builtin:heldout", "tokens": 4096, "context": 512, "ref_perplexity": 9.8,
    "rows": [
        {"variant": "main", "kind": "gptq", "perplexity": 10.21, "kl_div": 0.0412, "top1": 0.912, "size_bytes": 4_100_000_000},
        {"variant": "Q4_K_M", "kind": "gguf", "perplexity": 10.05, "kl_div": 0.0311, "top1": 0.931, "size_bytes": 4_368_439_296},
        {"variant": "Q8_0", "kind": "gguf", "perplexity": 9.81, "kl_div": 0.0009, "top1": 0.995, "size_bytes": 7_161_089_024},
    ],
}

# the release's serve check answers (quality.json `samples`): one per artifact, the GGUF card picks Q4_K_M's
SAMPLES: list[dict[str, Any]] = [
    {"artifact": "fp16", "variant": "fp16", "what": "acme/bagel-8k", "prompt": "What is a Python list?",
     "answer": "A mutable sequence, written `[1, 2]`.", "finish": "stop", "tokens": 12},
    {"artifact": "adapter", "variant": "adapter", "what": "acme/bagel-8k-peft", "prompt": "What is a Python list?",
     "answer": "A mutable sequence, written `[1, 2]`.", "finish": "stop", "tokens": 12},
    {"artifact": "gptq", "variant": "gptq-4bit-32g-actorder", "what": "acme/bagel-8k-GPTQ (gptq-4bit-32g-actorder)",
     "prompt": "What is a Python list?", "answer": "A mutable sequence:\n```\n[1, 2]\n```", "finish": "stop", "tokens": 14},
    {"artifact": "gguf", "variant": "Q8_0", "what": "bagel-8k.Q8_0.gguf", "prompt": "What is a Python list?",
     "answer": "A mutable sequence, written `[1, 2]`.", "finish": "stop", "tokens": 12},
    {"artifact": "gguf", "variant": "Q4_K_M", "what": "bagel-8k.Q4_K_M.gguf", "prompt": "What is a Python list?",
     "answer": "A mutable sequence of items | values", "finish": "length", "tokens": 8},
]


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def model_folder(root: Path, name: str, *, config: dict | None = None, chat_template: str | None = CHATML,
                 files: dict[str, bytes] | None = None, card: Path | str | None = None) -> Path:
    """A folder that looks like a saved model to the card renderer."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    if config is not None:
        write_json(d / "config.json", config)
    if chat_template is not None:
        write_json(d / "tokenizer_config.json", {"tokenizer_class": "LlamaTokenizer", "chat_template": chat_template})
    for fname, data in (files or {}).items():
        (d / fname).write_bytes(data)
    if card is not None:
        text = Path(card).read_text(encoding="utf-8") if isinstance(card, Path) else card
        (d / "README.md").write_text(text, encoding="utf-8")
    return d


def merged_dir(root: Path) -> Path:
    return model_folder(root, "bagel-8k", config=LLAMA_CONFIG, card=CARDS / "airoboros-65b-gpt4-1.4.1-PI-8192-fp16.README.md")


def adapter_dir(root: Path) -> Path:
    d = model_folder(root, "bagel-8k-peft", config=None, chat_template=VICUNA)
    write_json(d / "adapter_config.json", {
        "peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["v_proj", "q_proj"],
        "base_model_name_or_path": "/home/me/models/llama-65b",
    })
    return d


def gptq_dir(root: Path) -> Path:
    config = dict(LLAMA_CONFIG, quantization_config={
        "quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "damp_percent": 0.05, "sym": True,
        "checkpoint_format": "gptq",
    })
    return model_folder(root, "bagel-8k-GPTQ", config=config, files={"model.safetensors": b"\0" * 4096})


def gguf_dir(root: Path) -> Path:
    files = {"bagel-8k.Q4_K_M.gguf": b"\0" * 1000, "bagel-8k.Q8_0.gguf": b"\0" * 2000, "bagel-8k.Q5_K_S.gguf": b"\0" * 1500}
    return model_folder(root, "bagel-8k-GGUF", config=LLAMA_CONFIG, files=files)
