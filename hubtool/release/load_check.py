"""Before any push: every published repo loads and generates the way its card's snippet loads it.

Verification compares logits in float32, so a model whose activations overflow float16 (Gemma's do)
passes it and still gives NaN to a user who loads it with the card's `dtype="auto"`. This loads each
publish folder as the snippet does (the dtype the cards name, the tokenizer with its chat template when
there is one, llama.cpp's chat completion for GGUF), runs the prompt and two greedy tokens on CPU, and
fails on non-finite logits. `choose_load_dtype` picks the dtype the cards name: the config's own
("auto") when it runs finite, else bfloat16 (a bf16 source) or float32, with a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtool.errors import QuantizeError

PROMPT = "RoPE scaling stretches a model's context by"
MESSAGES = [{"role": "user", "content": "Explain RoPE scaling in two sentences."}]


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype the cards' snippets load with, and why it is not the config's own (None when it is)."""

    dtype: str
    warning: str | None = None


def _config_dtype(folder: Path) -> str:
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") or {}
    return str(config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype") or "float32")


def _inputs(tokenizer: Any) -> Any:
    """The snippet's inputs: the chat template's prompt when the tokenizer has one, else plain text."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return tokenizer(PROMPT, return_tensors="pt")


def run_transformers(model: Any, tokenizer: Any) -> tuple[bool, str]:
    """(finite logits, the two generated tokens' text) for the snippet's prompt."""
    import torch

    inputs = _inputs(tokenizer)
    with torch.inference_mode():
        logits = model(**inputs).logits
        finite = bool(torch.isfinite(logits).all())
        if not finite:
            return False, ""
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return True, tokenizer.decode(out[0][inputs["input_ids"].shape[-1]:], skip_special_tokens=True)


def _torch_dtype(dtype: str) -> Any:
    import torch

    return "auto" if dtype == "auto" else getattr(torch, dtype)


def load_transformers(folder: Path, dtype: str, *, adapter: Path | None = None, tokenizer_dir: Path | None = None,
                      trust_remote_code: bool = False) -> tuple[Any, Any]:
    """The model and tokenizer as the card loads them (an adapter on top of its base with PEFT), on CPU;
    custom code (auto_map) runs only with the user's --trust-remote-code, as the card's snippet says."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=_torch_dtype(dtype), device_map="cpu",
                                                 trust_remote_code=trust_remote_code).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    return model, AutoTokenizer.from_pretrained(tokenizer_dir or folder, trust_remote_code=trust_remote_code)


def choose_load_dtype(fp16_dir: Path, source_dir: Path, *, trust_remote_code: bool = False) -> DtypeChoice:
    """'auto' when the published weights run finite in their config's dtype on CPU; otherwise the
    dtype that does (bfloat16 when the source was bf16, else float32), with a warning."""
    model, tok = load_transformers(fp16_dir, "auto", trust_remote_code=trust_remote_code)
    finite, _ = run_transformers(model, tok)
    del model
    if finite:
        return DtypeChoice("auto")
    saved = _config_dtype(fp16_dir)
    source = _config_dtype(source_dir)
    for candidate in (["bfloat16"] if "bfloat16" in source else []) + ["float32"]:
        model, tok = load_transformers(fp16_dir, candidate, trust_remote_code=trust_remote_code)
        finite, _ = run_transformers(model, tok)
        del model
        if finite:
            fix = " set `dtype: bfloat16` in release.yaml to publish bf16 weights, as the source was;" if "bfloat16" in source else ""
            return DtypeChoice(candidate, f"the published {saved} weights overflow {saved} (NaN/inf logits when loaded with "
                                          f"dtype=\"auto\");{fix} the cards' snippets load them with dtype=\"{candidate}\"")
    raise QuantizeError(f"{fp16_dir}: the merged model gives NaN/inf logits in every dtype (auto, {saved}, float32); "
                        "the weights are broken: check the adapter and the merge")


def check_transformers_repo(folder: Path, dtype: str, *, what: str, adapter_base: Path | None = None, tokenizer_dir: Path | None = None,
                            trust_remote_code: bool = False) -> str:
    """Load FOLDER as its card does and generate; the generated text, or a QuantizeError naming WHAT."""
    if adapter_base is not None:
        model, tok = load_transformers(adapter_base, dtype, adapter=folder, tokenizer_dir=tokenizer_dir or adapter_base,
                                       trust_remote_code=trust_remote_code)
    else:
        model, tok = load_transformers(folder, "auto" if dtype == "auto" else dtype, trust_remote_code=trust_remote_code)
    finite, text = run_transformers(model, tok)
    if not finite:
        raise QuantizeError(f"load check: {what} gives NaN/inf logits when loaded as its card says (dtype={dtype!r}); not pushed")
    return text


def check_gguf_file(path: Path, *, what: str) -> str:
    """Load a GGUF with llama-cpp-python as the card does: finite logits, then its chat completion
    (with the file's chat template) or plain completion; the generated text."""
    import numpy as np

    from hubtool.gguf.verify import open_llama

    with open_llama(path, context=128) as llm:
        ids = llm.tokenize(PROMPT.encode(), add_bos=True)
        llm.reset()
        llm.eval(ids)
        if not np.isfinite(np.asarray(llm.scores[len(ids) - 1])).all():
            raise QuantizeError(f"load check: {what} ({path.name}) gives NaN/inf logits in llama.cpp; not pushed")
        llm.reset()
        if llm.metadata.get("tokenizer.chat_template"):
            out = llm.create_chat_completion(messages=MESSAGES, max_tokens=2, temperature=0.0)
            return str(out["choices"][0]["message"]["content"])
        return str(llm(PROMPT, max_tokens=2, temperature=0.0)["choices"][0]["text"])
