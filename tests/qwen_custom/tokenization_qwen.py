"""Tokenizer of the original Qwen layout: a tiktoken BPE read from `qwen.tiktoken` (base64 token, rank per
line), written for hubtool's tests. Special tokens come after the ranks, as in Qwen; `mergeable_ranks` and
`special_tokens` are the attributes llama.cpp's converter reads.
"""

import base64
import os

import tiktoken
from transformers import AddedToken, PreTrainedTokenizer

VOCAB_FILES_NAMES = {"vocab_file": "qwen.tiktoken"}
# the pre-tokenizer of the vocabulary this folder ships (see tokenizer_config.json `pat_str`)
DEFAULT_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"


def load_ranks(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f.read().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


class QWenTokenizer(PreTrainedTokenizer):
    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, special_tokens=None, pat_str=None, errors="replace", **kwargs):
        self.errors = errors
        self.vocab_file = vocab_file
        self.mergeable_ranks = load_ranks(vocab_file)
        first = 1 + max(self.mergeable_ranks.values())
        names = list(special_tokens or [ENDOFTEXT, "<|im_start|>", "<|im_end|>"])
        self.special_tokens = {t: first + i for i, t in enumerate(names)}
        self.pat_str = pat_str or DEFAULT_PAT
        self._encoding = tiktoken.Encoding("qwen-test", pat_str=self.pat_str, mergeable_ranks=self.mergeable_ranks,
                                           special_tokens=self.special_tokens)
        self.decoder = {v: k for k, v in self.mergeable_ranks.items()}
        self.decoder.update({v: k for k, v in self.special_tokens.items()})
        kwargs.setdefault("eos_token", ENDOFTEXT)
        kwargs.setdefault("pad_token", ENDOFTEXT)
        super().__init__(errors=errors, special_tokens=names, pat_str=self.pat_str, **kwargs)

    @property
    def vocab_size(self):
        return self._encoding.n_vocab

    def __len__(self):
        return self._encoding.n_vocab

    def get_vocab(self):
        return {**self.mergeable_ranks, **self.special_tokens}

    def _add_tokens(self, new_tokens, special_tokens=False):
        for t in new_tokens:
            name = t.content if isinstance(t, AddedToken) else t
            if name not in self.special_tokens:
                raise ValueError(f"{name!r}: this tokenizer has a fixed vocabulary")
        return 0

    def tokenize(self, text, **kwargs):
        """Tokens as bytes (special tokens as their str), like Qwen's own tokenizer."""
        return [self.decoder[i] for i in self._encoding.encode(text, allowed_special=set(self.special_tokens))]

    def _tokenize(self, text, **kwargs):
        return self.tokenize(text)

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, (str, bytes)):
            return self._convert_token_to_id(tokens)
        return [self._convert_token_to_id(t) for t in tokens]

    def _convert_token_to_id(self, token):
        if token in self.special_tokens:
            return self.special_tokens[token]
        return self.mergeable_ranks.get(token.encode() if isinstance(token, str) else token)

    def _convert_id_to_token(self, index):
        return self.decoder[index]

    def convert_tokens_to_string(self, tokens):
        out = b""
        for t in tokens:
            out += t.encode() if isinstance(t, str) else t
        return out.decode("utf-8", errors=self.errors)

    def _decode(self, token_ids, skip_special_tokens=False, **kwargs):
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if skip_special_tokens:
            token_ids = [i for i in token_ids if i not in self.special_tokens.values()]
        return self._encoding.decode(token_ids, errors=self.errors)

    def save_vocabulary(self, save_directory, filename_prefix=None):
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "qwen.tiktoken")
        with open(path, "wb") as f:
            for token, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1]):
                f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
        return (path,)
