"""GGUF export with llama.cpp's own converter and C quantizer, plus verification in llama.cpp.

Public API (used by the release command): `export_gguf` and `verify_gguf`. Heavy libraries
(llama_cpp, gguf, torch, transformers) are imported inside the functions.
"""

from hubtool.gguf.export import export_gguf
from hubtool.gguf.verify import verify_gguf

__all__ = ["export_gguf", "verify_gguf"]
