"""Greedy answers from a transformers model (the fp16 merge, base + adapter through PEFT, a GPTQ checkpoint
through gptqmodel's kernels), prompted through the tokenizer's chat template as the cards' snippets do.
Models are loaded with the release load check's loaders (hubtool/release/load_check.py)."""

from __future__ import annotations

from typing import Any

from hubtool.artifacts import ServeSample
from hubtool.serve.checks import END_OF_TURN, complete_words, find_markers, template_markers


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


def _margin(logits: Any, token: int) -> float:
    """How decisively the model chose TOKEN: log(p top-1 / p runner-up) in nats, 0 when TOKEN is not its top-1."""
    import torch

    top = torch.log_softmax(logits.float(), dim=-1).topk(2)
    return float(top.values[0] - top.values[1]) if int(top.indices[0]) == token else 0.0


def word_margins(tokenizer: Any, body: list[int], margins: list[float], answer: str) -> tuple[float, ...]:
    """For the k-th leading word of ANSWER, the smallest margin of every token up to the one that completes it."""
    out: list[float] = []
    lowest = float("inf")
    for n in range(1, len(body) + 1):
        lowest = min(lowest, margins[n - 1])
        done = complete_words(tokenizer.decode(body[:n], skip_special_tokens=True), answer)
        out += [round(lowest, 3)] * (done - len(out))
    return tuple(out)


def prompt_inputs(tokenizer: Any, prompt: str) -> Any:
    """The chat template's prompt for one user turn (with the generation prompt), else the plain text."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)
    return tokenizer(prompt, return_tensors="pt")


def answers(model: Any, tokenizer: Any, prompts: list[str], *, max_tokens: int, reference: bool = False) -> tuple[ServeSample, ...]:
    """Each prompt's greedy answer (at most MAX_TOKENS tokens). REFERENCE (the fp16 model): also how decisively it
    chose each leading word and its end-of-turn token (log-ratio of top-1 to runner-up)."""
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
        words, stop_margin = (), 0.0
        if reference:
            margins = [_margin(step[0], tok) for step, tok in zip(gen.logits, ids)]
            words = word_margins(tokenizer, body, margins, answer)
            stop_margin = round(margins[-1], 3) if stopped else 0.0
        out.append(ServeSample(prompt, answer, "stop" if stopped else "length", len(ids), find_markers(raw, markers),
                               word_margins=words, stop_margin=stop_margin))
    return tuple(out)
