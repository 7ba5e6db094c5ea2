"""What a served answer must be: non-empty, free of chat-template tokens, beginning like the fp16 model's
greedy answer (within a tolerance by bits per weight), and ending its turn within the limit where the fp16
model's did. One failure is one line naming the artifact, the prompt and the answer.

"Begins like fp16" counts leading words. The fp16 reference records how decisively it chose each leading
word (the smallest log-ratio of its top-1 token to the runner-up up to that word, in nats): an artifact
must reproduce the leading words fp16 chose with at least its precision's margin, up to its precision's
word count. Where the fp16 model itself hesitated (or a random test model, whose greedy path any rounding
flips) nothing is demanded; a real model's confident opening is. The end of the turn is demanded where
the fp16 model ended with that margin. Margins and word counts per precision were chosen from answers
of SmolLM2-135M-Instruct's demo release (bench/serve.py; README, "Serve check").
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from hubtool.artifacts import ServeAnswers, ServeSample
from hubtool.errors import QuantizeError

# Markers of the common chat formats (ChatML, Llama-2/3, Gemma, Phi, GPT-2 style ends); a tokenizer's own
# special tokens are added to these (template_markers), its BOS/UNK/PAD aside.
COMMON_MARKERS = ("<|im_start|>", "<|im_end|>", "[INST]", "[/INST]", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<start_of_turn>", "<end_of_turn>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>", "</s>")
# Tokens that end an assistant turn in those formats (besides the tokenizer's EOS): generation stops at them.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")

# By precision: (at most this many leading words, of those fp16 chose with at least this margin in nats).
# Measured on SmolLM2-135M-Instruct (bench/serve.py): looser for 4-bit, loosest at 3 bits and below.
TOLERANCE: dict[str, tuple[int, float]] = {"16-bit": (12, 0.7), "8-bit": (8, 0.7), "4-bit": (4, 1.5), "low-bit": (2, 3.0)}
ANSWER_IN_MESSAGE = 120  # characters of an answer quoted in an error


def precision(bits: float) -> str:
    """The tolerance class of an artifact with BITS bits per weight."""
    if bits >= 16:
        return "16-bit"
    if bits >= 6:
        return "8-bit"
    if bits >= 4:
        return "4-bit"
    return "low-bit"


def template_markers(tokenizer: Any) -> tuple[str, ...]:
    """COMMON_MARKERS plus the tokenizer's own special tokens, except its BOS/UNK/PAD (not turn markers)."""
    skip = {getattr(tokenizer, n, None) for n in ("bos_token", "unk_token", "pad_token")}
    own = [str(t) for t in getattr(tokenizer, "all_special_tokens", []) or []]
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    own += [str(t.content) for t in added.values() if getattr(t, "special", False)]
    return tuple(dict.fromkeys(m for m in (*COMMON_MARKERS, *own) if m and len(m.strip()) >= 3 and m not in skip))


def find_markers(text: str, markers: Iterable[str]) -> tuple[str, ...]:
    return tuple(m for m in markers if m in text)


def words(text: str) -> list[str]:
    """Words for comparing answers: whitespace-split, punctuation at the ends dropped, case folded."""
    out = [w.strip(".,;:!?\"'()[]*`").casefold() for w in text.split()]
    return [w for w in out if w]


def common_words(a: str, b: str) -> int:
    """How many leading words two answers share."""
    n = 0
    for x, y in zip(words(a), words(b)):
        if x != y:
            break
        n += 1
    return n


def complete_words(prefix: str, answer: str) -> int:
    """Complete words of ANSWER inside PREFIX (the text of its first tokens): a word the prefix cuts (the
    answer goes on with a letter or digit) does not count."""
    prefix, answer = prefix.lstrip(), answer.lstrip()
    if not answer.startswith(prefix):  # a tokenizer that decodes a prefix differently: keep what both say
        prefix = os.path.commonprefix([prefix, answer])
    n = len(words(prefix))
    if n and prefix and not prefix[-1].isspace() and answer[len(prefix):][:1].isalnum():
        n -= 1
    return n


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= ANSWER_IN_MESSAGE else flat[: ANSWER_IN_MESSAGE - 1] + "…"


def fail(what: str, sample: ServeSample, problem: str) -> QuantizeError:
    """`serve-check: WHAT: prompt "...": PROBLEM: answer "..."` (exit 4, like a failed verification)."""
    return QuantizeError(f'serve-check: {what}: prompt "{_quote(sample.prompt)}": {problem}: answer "{_quote(sample.answer)}"')


def sample_problem(sample: ServeSample) -> str | None:
    """What is wrong with an answer on its own (no reference needed), or None."""
    if sample.finish == "error":
        return f"no answer ({sample.error or 'the request failed'})"
    if sample.template_tokens:
        return f"chat-template token(s) {', '.join(sample.template_tokens)} in the answer (a wrong or broken chat template)"
    if not sample.answer.strip():
        return "empty answer"
    return None


def check_reference(ref: ServeAnswers) -> None:
    """The fp16 model's own answers (the published fp16 repo) pass the checks that need no reference."""
    for s in ref.samples:
        problem = sample_problem(s)
        if problem:
            raise fail(ref.what, s, problem)


def check_answers(answers: ServeAnswers, ref: ServeAnswers) -> None:
    """ANSWERS against the fp16 reference REF, prompt by prompt; the first failure raised as one line.

    Ending the turn: an answer that reproduced fp16's whole answer must stop where fp16 stopped decisively
    (a lost end-of-turn token); one that took another (allowed) path may run longer, but an artifact must
    end at least one of its answers where fp16 ended any decisively (one that never stops is broken)."""
    by_prompt = {s.prompt: s for s in ref.samples}
    level = precision(answers.bits)
    most, margin = TOLERANCE[level]
    ended: list[ServeSample] = []  # this artifact's answers to the prompts fp16 ended decisively
    for s in answers.samples:
        problem = sample_problem(s)
        if problem:
            raise fail(answers.what, s, problem)
        r = by_prompt.get(s.prompt)
        if r is None:
            continue
        need = min(most, sum(1 for m in r.word_margins if m >= margin))
        got = common_words(s.answer, r.answer)
        if got < need:
            raise fail(answers.what, s, f"begins unlike the fp16 model's answer \"{_quote(r.answer)}\" ({got} of the first {need} "
                                        f"word(s) agree; {level}: up to {most} words fp16 chose by >= {margin} nats)")
        if r.finish == "stop" and r.stop_margin >= margin:
            ended.append(s)
            if s.finish != "stop" and got >= len(words(r.answer)):
                raise fail(answers.what, s, f"did not end its turn where the fp16 model's identical answer did (after {r.tokens} tokens; "
                                            f"went on to {s.tokens}, finish reason {s.finish!r})")
    if ended and not any(s.finish == "stop" for s in ended):
        s = ended[0]
        raise fail(answers.what, s, f"ended its turn within {s.tokens} tokens on none of the {len(ended)} prompt(s) whose fp16 answer "
                                    f"ended (finish reason {s.finish!r})")
