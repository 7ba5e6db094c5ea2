"""Name the prompt format a model expects, from its chat template or from the user.

Cards show a plain-text prompt template (the `prompt_template` header field and the "Prompt
format" section) because llama.cpp, TGI and text-generation-webui users type prompts by hand;
the Jinja chat template alone does not tell them what to type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubtool.errors import CardError

# Plain-text templates with {system_message} / {prompt} placeholders (the convention quant cards use).
PROMPT_TEMPLATES: dict[str, str] = {
    "chatml": "<|im_start|>system\n{system_message}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
    "llama-2": "[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n{prompt} [/INST]\n",
    "mistral": "<s>[INST] {prompt} [/INST]\n",
    "llama-3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "vicuna": "{system_message}\nUSER: {prompt}\nASSISTANT:\n",
    "alpaca": "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{prompt}\n\n### Response:\n",
    "zephyr": "<|system|>\n{system_message}</s>\n<|user|>\n{prompt}</s>\n<|assistant|>\n",
    "phi-3": "<|user|>\n{prompt}<|end|>\n<|assistant|>\n",
    "gemma": "<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n",
    "none": "{prompt}\n",
}

# Marker substrings, most specific first: the first format whose markers all occur wins.
_MARKERS: list[tuple[str, tuple[str, ...]]] = [
    ("llama-3", ("<|start_header_id|>", "<|eot_id|>")),
    ("chatml", ("<|im_start|>",)),
    ("gemma", ("<start_of_turn>",)),
    ("phi-3", ("<|user|>", "<|end|>")),
    ("zephyr", ("<|user|>", "<|assistant|>")),
    ("llama-2", ("[INST]", "<<SYS>>")),
    ("mistral", ("[INST]",)),
    ("alpaca", ("### Instruction",)),
    ("vicuna", ("USER:", "ASSISTANT:")),
]


def detect_prompt_format(chat_template: str | None) -> str | None:
    """Format name for a chat template, or None when it matches no known family."""
    if not chat_template:
        return None
    for name, markers in _MARKERS:
        if all(m in chat_template for m in markers):
            return name
    return None


def read_chat_template(model_dir: Path) -> str | None:
    """The default chat template of a model folder, in any of the places transformers saves it."""
    model_dir = Path(model_dir)
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        template = _pick_default(data.get("chat_template") if isinstance(data, dict) else None)
        if template:
            return template
    return None


def _pick_default(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
        named = {d.get("name"): d.get("template") for d in value if isinstance(d, dict)}
        return named.get("default") or next((t for t in named.values() if isinstance(t, str)), None)
    return None


def resolve_prompt(meta: dict[str, Any], chat_template: str | None, *, source: str) -> dict[str, str] | None:
    """{name, template} from meta (`prompt_format` name or `prompt_template` text) or the chat template."""
    text = meta.get("prompt_template")
    name = meta.get("prompt_format")
    if name is not None:
        if name not in PROMPT_TEMPLATES:
            known = ", ".join(sorted(PROMPT_TEMPLATES))
            raise CardError(f"{source}: unknown prompt_format {name!r}; use one of {known} or give prompt_template text")
        return {"name": str(name), "template": str(text) if text else PROMPT_TEMPLATES[name]}
    if text:
        return {"name": detect_prompt_format(str(text)) or "custom", "template": str(text)}
    detected = detect_prompt_format(chat_template)
    if detected is None:
        return None
    return {"name": detected, "template": PROMPT_TEMPLATES[detected]}
