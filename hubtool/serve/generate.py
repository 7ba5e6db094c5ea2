"""Greedy answers from a transformers model (the fp16 merge, base + adapter through PEFT, a GPTQ checkpoint
through gptqmodel's kernels), prompted through the tokenizer's chat template as the cards' snippets do.
Models are loaded with the release load check's loaders (hubtool/release/load_check.py)."""

from __future__ import annotations

from typing import Any

from hubtool.artifacts import ServeSample
from hubtool.serve.checks import DECISIVE_RATIO, END_OF_TURN, decisive_words, find_markers, template_markers


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Tokens that end the turn: the generation config's and tokenizer's EOS, and the chat formats' end-of-turn
    tokens the vocabulary has (llama.cpp stops at the same end-of-generation tokens)."""
    ids: set[int] = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[m]) for m in END_OF_TURN if m in vocab)
    return sorted(int(i) for i in ids)


def _decisive(logits: Any, token: int) -> bool:
    """The model chose TOKEN decisively: it is the top-1, at least DECISIVE_RATIO times as likely as the runner-up."""
    import torch

    top = torch.softmax(logits.float(), dim=-1).topk(2)
    return int(top.indices[0]) == token and float(top.values[0]) >= DECISIVE_RATIO * float(top.values[1])


def prompt_inputs(tokenizer: Any, prompt: str) -> Any:
    """The chat template's prompt for one user turn (with the generation prompt), else the plain text."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)
    return tokenizer(prompt, return_tensors="pt")


def answers(model: Any, tokenizer: Any, prompts: list[str], *, max_tokens: int, reference: bool = False) -> tuple[ServeSample, ...]:
    """Each prompt's greedy answer (at most MAX_TOKENS tokens). REFERENCE (the fp16 model): also how many leading
    words were decisive and whether the end-of-turn token was."""
    import torch

    markers = template_markers(tokenizer)
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    out = []
    for prompt in prompts:
        inputs = prompt_inputs(tokenizer, prompt)
        with torch.inference_mode():
            gen = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, num_beams=1, repetition_penalty=1.0,
                                 temperature=None, top_p=None, top_k=None, eos_token_id=stops or None, pad_token_id=pad,
                                 output_logits=reference, return_dict_in_generate=True)
        ids = [int(i) for i in gen.sequences[0][inputs["input_ids"].shape[-1]:]]
        stopped = bool(ids) and ids[-1] in stops
        body = ids[:-1] if stopped else ids
        answer = tokenizer.decode(body, skip_special_tokens=True).strip()
        raw = tokenizer.decode(body, skip_special_tokens=False)
        decisive, stop_decisive = 0, False
        if reference:
            sure = [_decisive(step[0], tok) for step, tok in zip(gen.logits, ids)]
            n = next((i for i, ok in enumerate(sure) if not ok), len(sure))
            decisive = decisive_words(tokenizer.decode(body[:n], skip_special_tokens=True), answer)
            stop_decisive = stopped and sure[-1]
        out.append(ServeSample(prompt, answer, "stop" if stopped else "length", len(ids), find_markers(raw, markers),
                               decisive_words=decisive, stop_decisive=stop_decisive))
    return tuple(out)
