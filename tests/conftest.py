from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import make_tiny_llama, train_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tokenizer_dir) -> Path:
    """A random fp16 tiny Llama, two shards, with tokenizer and chat template."""
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", tokenizer_dir, max_shard_size="60KB")
