"""GPTQ quantization in the standard checkpoint format: presets, calibration, gptqmodel run, verification."""

from hubtool.gptq.presets import DEFAULT_PRESET, GPTQPreset, list_presets, load_preset
from hubtool.gptq.quantize import quantize_gptq, read_gptq_info
from hubtool.gptq.verify import verify_gptq

__all__ = ["DEFAULT_PRESET", "GPTQPreset", "list_presets", "load_preset", "quantize_gptq", "read_gptq_info", "verify_gptq"]
