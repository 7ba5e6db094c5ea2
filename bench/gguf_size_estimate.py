"""The release plan's GGUF size estimates against the files llama.cpp writes.

    python bench/gguf_size_estimate.py [--model tiny|smollm2|gemma3] [--types q4_k_m,q8_0,...]

Exports the model's fp16 folder to each type (llama.cpp's converter and quantizer) and prints, per
type, the plan's estimate, the real size and their ratio (the target is within 15 %).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def model_folder(key: str, scratch: Path) -> Path:
    if key == "tiny":
        from tests.tiny import make_tiny_llama, train_tokenizer

        return make_tiny_llama(scratch / "tiny", train_tokenizer(scratch / "tok"))
    from hubtool.real_models import export_fp16, real_model

    return export_fp16(real_model(key), scratch / key)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--types", default="q4_k_m,q5_k_m,q6_k,q8_0")
    ap.add_argument("--scratch", type=Path)
    args = ap.parse_args()
    from hubtool.gguf import export_gguf
    from hubtool.gguf.types import parse_types
    from hubtool.release.plan import gguf_estimates

    types = parse_types(args.types)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = args.scratch or Path(tmp)
        folder = model_folder(args.model, scratch)
        estimates = gguf_estimates(folder, types)
        rows = export_gguf(folder, scratch / "gguf", types, name="m", split_max_size="0", overwrite=True)
        print(f"{'type':<8} {'estimate MB':>12} {'file MB':>10} {'ratio':>7}")
        for r in rows:
            est, real = estimates[r["type"]], int(r["size_bytes"])
            print(f"{r['type']:<8} {est / 1e6:>12.3f} {real / 1e6:>10.3f} {est / real:>7.3f}")


if __name__ == "__main__":
    main()
