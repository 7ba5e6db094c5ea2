"""What a model folder's Hugging Face tokenizer answers to the GGUF tokenizer check, as a record.

`verify gguf` holds llama.cpp's tokenizer against the HF one: the ids of a test string and of a
rendered chat turn, and the chat template. The HF side depends only on the tokenizer files, so the
release's fp16 reference stage (which loads the tokenizer anyway, to cut the held-out windows) records
it beside the log-probs, keyed by a hash of those files; verify:gguf then needs neither transformers
nor the tokenizer (~1–2 s of a ~6 s SmolLM2 verification). Without a matching record the tokenizer is
loaded and probed on the spot: the same function, the same answers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtool.model_dir import TOKENIZER_FILES

TEST_STRING = (
    "Hello world! GGUF tokenizers must agree: 3.14159, naïve café, Straße, 日本語 — tabs\tand  spaces.\n"
    "def f(x):\n    return x ** 2  # comment"
)
CHAT_TURN = [{"role": "user", "content": "Say hi."}]
# files whose content decides what AutoTokenizer loads and answers (config.json: the tokenizer class by model_type)
_KEY_FILES = ("config.json",) + TOKENIZER_FILES
_KEY_DIRS = ("additional_chat_templates",)


@dataclass(frozen=True)
class TokenizerProbe:
    """The HF tokenizer's side of the GGUF tokenizer check."""

    files_sha256: str  # of the tokenizer files it was taken from (tokenizer_files_hash)
    test_ids: tuple[int, ...]  # TEST_STRING with special tokens (BOS where the tokenizer adds one)
    chat_template: Any  # the tokenizer's own value: a string, a {name: template} dict, or None
    chat_text: str | None  # CHAT_TURN rendered with the generation prompt
    chat_ids: tuple[int, ...] | None  # chat_text without added special tokens

    def to_json(self) -> dict[str, Any]:
        return {"files_sha256": self.files_sha256, "test_ids": list(self.test_ids), "chat_template": self.chat_template,
                "chat_text": self.chat_text, "chat_ids": None if self.chat_ids is None else list(self.chat_ids)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TokenizerProbe":
        chat_ids = data.get("chat_ids")
        return cls(str(data["files_sha256"]), tuple(int(i) for i in data["test_ids"]), data.get("chat_template"), data.get("chat_text"),
                   None if chat_ids is None else tuple(int(i) for i in chat_ids))


def tokenizer_files_hash(model_dir: Path) -> str:
    """sha256 over the names and bytes of the folder's tokenizer files (and config.json)."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    paths = [model_dir / n for n in _KEY_FILES]
    for d in _KEY_DIRS:
        if (model_dir / d).is_dir():
            paths += sorted(p for p in (model_dir / d).rglob("*") if p.is_file())
    for p in paths:
        if p.is_file():
            h.update(str(p.relative_to(model_dir)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def probe_tokenizer(tokenizer: Any, model_dir: Path | None = None) -> TokenizerProbe:
    """TOKENIZER's answers (loaded from MODEL_DIR, whose files key the record; none: unkeyed) to the check's test string and chat turn."""
    test_ids = tuple(tokenizer(TEST_STRING, add_special_tokens=True)["input_ids"])
    template = getattr(tokenizer, "chat_template", None)
    chat_text = chat_ids = None
    if template:
        chat_text = tokenizer.apply_chat_template(CHAT_TURN, tokenize=False, add_generation_prompt=True)
        chat_ids = tuple(tokenizer(chat_text, add_special_tokens=False)["input_ids"])
    return TokenizerProbe(tokenizer_files_hash(model_dir) if model_dir is not None else "", test_ids, template or None, chat_text, chat_ids)
