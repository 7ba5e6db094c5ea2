"""Importance matrix for IQ/low-bit GGUF types, in llama.cpp's imatrix GGUF format.

llama.cpp's `llama-imatrix` tool is not reachable through llama-cpp-python (it is a CLI built on
the eval callback of the C++ graph), so hubtool computes the same statistic with the fp16 HF
model: for every weight matrix W (a `nn.Linear`), the sum over calibration tokens of the squared
input activation per input column, and the token count. llama.cpp's quantizer uses
sum/count per column to weight rounding error, exactly as with a `llama-imatrix` file. The file
we write (`general.type = imatrix`, tensors `<gguf name>.in_sum2` and `<gguf name>.counts`) is
the format `llama-imatrix` writes and `llama-quantize --imatrix` reads, so files are
interchangeable in both directions. MoE expert tensors are not covered (refused).

The model streams block by block (hubtool.gguf.calibration_pass): each block's linears add their
inputs while the block is materialised, and the head's input is the final hidden state, so no
logits are computed and peak memory is one block plus activations, whatever the depth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hubtool.errors import InputError
from hubtool.gguf.calibration_pass import CalibrationPass, run_calibration


def compute_imatrix(model_dir: Path, text: str, *, arch_name: str, context: int = 512, max_tokens: int = 8192,
                    trust_remote_code: bool = False, device: str = "cpu", batch_tokens: int = 4096,
                    in_memory: bool = False) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """(sum of squared inputs per column, token counts) keyed by GGUF tensor name, from calibration TEXT.

    The model streams block by block on DEVICE (one decoder block's weights in memory at a time; BATCH_TOKENS
    tokens of equal-length windows per pass over the blocks); IN_MEMORY loads it whole (the fallback for code
    that can't be streamed)."""
    import json

    archs = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    if any("Mixtral" in a or "Moe" in a for a in archs):
        raise InputError(f"{model_dir}: computing an importance matrix for MoE models is not supported; pass a llama-imatrix file with --imatrix")
    return run_calibration(lambda run: _accumulate(run, batch_tokens), Path(model_dir), text, in_memory=in_memory,
                           arch_name=arch_name, context=context, max_tokens=max_tokens, what="importance matrix",
                           trust_remote_code=trust_remote_code, device=device)


def _accumulate(run: CalibrationPass, batch_tokens: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    import torch

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook_for(gguf_name: str):
        def hook(_module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            sums[gguf_name] = sums.get(gguf_name, 0) + (x * x).sum(0)
            counts[gguf_name] = counts.get(gguf_name, 0) + x.shape[0]
        return hook

    hook_fns = {name: hook_for(name) for name, _ in run.linears}
    hooks = [module.register_forward_pre_hook(hook_fns[name]) for name, module in run.linears]
    batches = run.batches(batch_tokens)
    try:
        with torch.inference_mode():
            for batch in run.progress(batches, "imatrix"):
                ids = torch.tensor(batch, device=run.device)
                if run.stream is None:
                    run.model(ids)
                    continue
                hidden = run.stream.forward_hidden(ids)  # the blocks' linears hook themselves while materialised
                if run.head is not None:  # the head's input is the final hidden state: no logits needed
                    hook_fns[run.head[0]](run.head[1], (hidden,))
    finally:
        for h in hooks:
            h.remove()
    return {k: v.cpu().numpy().astype(np.float32) for k, v in sums.items()}, {k: float(c) for k, c in counts.items()}


def save_imatrix(path: Path, sums: dict[str, np.ndarray], counts: dict[str, float], *, dataset: str, context: int) -> Path:
    """Write llama.cpp's imatrix GGUF (readable by `llama-quantize --imatrix`)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="imatrix")
    # llama-imatrix files carry general.type = imatrix; GGUFWriter always adds general.architecture.
    writer.add_type("imatrix")
    writer.add_array(gguf.Keys.IMatrix.DATASETS, [dataset])
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, int(max(counts.values(), default=0) // max(context, 1)))
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, context)
    for name in sorted(sums):
        writer.add_tensor(f"{name}.in_sum2", np.asarray(sums[name], dtype=np.float32).reshape(1, -1))
        writer.add_tensor(f"{name}.counts", np.array([[counts[name]]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def load_imatrix(path: Path) -> dict[str, np.ndarray]:
    """Per-tensor importance (sum/count per column, experts concatenated) from a GGUF imatrix file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: imatrix file not found")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError/struct errors on junk
        raise InputError(f"{path}: not a GGUF imatrix ({exc}); make one with `hubtool quantize gguf --calibration` or llama-imatrix") from None
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    out: dict[str, np.ndarray] = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        if base + ".counts" not in tensors:
            raise InputError(f"{path}: {base} has in_sum2 but no counts; the imatrix file is incomplete")
        sums = sums.reshape(tensors[base + ".counts"].size, -1)
        cnt = tensors[base + ".counts"].reshape(-1, 1)
        out[base] = (sums / np.maximum(cnt, 1)).reshape(-1).astype(np.float32)
    if not out:
        raise InputError(f"{path}: no imatrix entries (*.in_sum2); legacy .dat files are not supported — convert with llama-imatrix --output-format gguf")
    return out


def imatrix_means(sums: dict[str, np.ndarray], counts: dict[str, float]) -> dict[str, np.ndarray]:
    return {k: (v / max(counts[k], 1.0)).astype(np.float32) for k, v in sums.items()}
