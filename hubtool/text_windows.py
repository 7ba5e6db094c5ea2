"""Tokenized text cut into model-sized windows: the one rule GPTQ calibration, the importance matrix
and both verifications (with the fp16 reference they share) use.

A window is BOS (when the tokenizer has one) followed by up to `size - 1` text tokens, the way
llama.cpp's perplexity and imatrix tools feed text; keeping one rule means the reference computed
once per release holds exactly the windows each verify step asks for.
"""

from __future__ import annotations

from typing import Any

CHUNK_CHARS = 20000  # paragraph-aligned tokenizer calls for a whole corpus


def bos_id(tokenizer: Any) -> int | None:
    return getattr(tokenizer, "bos_token_id", None)


def encode(tokenizer: Any, text: str, *, max_tokens: int | None = None) -> list[int]:
    """Token ids of TEXT without special tokens; only the first MAX_TOKENS when given.

    A bounded prefix (verification, imatrix) is tokenized in one call, exactly as a whole file; a
    whole corpus (calibration, possibly many MB) in paragraph-aligned chunks of about CHUNK_CHARS
    characters, so it stays under the tokenizer's max-length warning.
    """
    if max_tokens is not None:
        return tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    ids: list[int] = []
    chunk: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        chunk.append(para)
        size += len(para)
        if size > CHUNK_CHARS:
            ids += tokenizer("\n\n".join(chunk) + "\n\n", add_special_tokens=False)["input_ids"]
            chunk, size = [], 0
    if chunk:
        ids += tokenizer("\n\n".join(chunk), add_special_tokens=False)["input_ids"]
    return ids


def windows(ids: list[int], size: int, bos: int | None, *, whole: bool = False, min_text: int = 1) -> list[list[int]]:
    """Consecutive, non-overlapping windows of SIZE tokens over IDS, BOS first when not None.

    WHOLE keeps only full windows; otherwise the last may be short, but not under MIN_TEXT text tokens.
    """
    head = [bos] if bos is not None else []
    step = max(1, size - len(head))
    least = step if whole else min_text
    return [head + ids[i : i + step] for i in range(0, len(ids), step) if min(step, len(ids) - i) >= least]
