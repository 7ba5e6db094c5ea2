from __future__ import annotations

from pathlib import Path

import pytest

# tests.tiny imports torch; it is imported inside the fixtures that build models, so the pure card and
# server tests start without loading torch.


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from tests.tiny import train_tokenizer

    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tokenizer_dir) -> Path:
    """A random fp16 tiny Llama, two shards, with tokenizer and chat template."""
    from tests.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", tokenizer_dir, max_shard_size="60KB")


# --- local Hub (hubtool.hub_server) -------------------------------------------------------
@pytest.fixture(params=["xet", "lfs"])
def hub_mode(request, monkeypatch) -> str:
    """Upload path of the real huggingface_hub client: "xet" (default client path) or classic "lfs".

    Override per test with `@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)`.
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", request.param == "lfs")
    return request.param


@pytest.fixture
def local_hub(tmp_path, hub_mode, monkeypatch):
    """A local Hub on 127.0.0.1 (open: any or no token may write), repos under a temp dir.

    Yields a LocalHub (`.url`, `.inject_fault(...)`, `.requests`, `.mode`); HF_ENDPOINT points at it
    and the huggingface_hub download cache is a temp dir, so nothing touches the real Hub.
    """
    from huggingface_hub import constants

    from hubtool.hub_server import serve_in_thread

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    with serve_in_thread(tmp_path / "local-hub", open_faults=True) as hub:
        hub.mode = hub_mode
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub
