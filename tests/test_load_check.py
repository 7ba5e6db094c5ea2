"""The release's load check: each repo loads as its card says, and fp16 overflow is caught and handled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hubtool.errors import QuantizeError
from hubtool.release.load_check import check_transformers_repo, choose_load_dtype
from tests.tiny import make_tiny_llama


def _overflowing(root: Path, tokenizer_dir: Path, dtype: torch.dtype) -> Path:
    """A tiny Llama whose MLP outputs exceed float16's range (65504), as Gemma's activations do:
    every weight is finite in float16, the activations are not."""
    from safetensors.torch import load_file, save_file

    folder = make_tiny_llama(root, tokenizer_dir, dtype=dtype)
    path = folder / "model.safetensors"
    tensors = load_file(path)
    for name in list(tensors):
        if "mlp" in name:
            tensors[name] = (tensors[name].float().sign() * 30.0).to(dtype)
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("overflow")
    fp16 = _overflowing(root / "fp16", tokenizer_dir, torch.float16)
    bf16 = _overflowing(root / "bf16", tokenizer_dir, torch.bfloat16)
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    return {"fp16": fp16, "bf16": bf16}


def test_fp16_overflow_is_detected_as_a_user_loads_it(models):
    with pytest.raises(QuantizeError, match="NaN/inf logits"):
        check_transformers_repo(models["fp16"], "auto", what="acme/x@main")
    assert isinstance(check_transformers_repo(models["fp16"], "float32", what="acme/x@main"), str)


def test_overflow_makes_the_cards_load_bf16_for_a_bf16_source(models):
    choice = choose_load_dtype(models["fp16"], models["bf16"])
    assert choice.dtype == "bfloat16"
    assert "overflow" in choice.warning and "dtype: bfloat16" in choice.warning
    assert isinstance(check_transformers_repo(models["fp16"], choice.dtype, what="acme/x@main"), str)


def test_overflow_of_an_fp16_source_falls_back_to_fp32(models):
    choice = choose_load_dtype(models["fp16"], models["fp16"])
    assert choice.dtype == "float32" and "dtype: bfloat16" not in choice.warning


def test_a_model_that_runs_in_its_own_dtype_keeps_auto(tiny_llama):
    assert choose_load_dtype(tiny_llama, tiny_llama).dtype == "auto"
    assert check_transformers_repo(tiny_llama, "auto", what="acme/tiny@main") is not None
