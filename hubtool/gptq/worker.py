"""gptqmodel's load → quantize → save, run in a child process.

gptqmodel's loader patches transformers process-wide: for MoE models (Mixtral, Qwen-MoE) defuser
swaps transformers' fused expert classes for per-expert ones and replaces the checkpoint conversion
mapping, for every model the process builds, loads or saves afterwards. In a child, the caller's
transformers stays as it was (later GGUF export, verification and cards see the real classes), and
the host memory gptqmodel held goes back to the system when the child ends.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from hubtool.child import killed_on_exit
from hubtool.errors import QuantizeError


@dataclass(frozen=True)
class GPTQJob:
    """Everything the child needs; written as JSON beside the output."""

    model_dir: str
    raw_dir: str  # gptqmodel's own save, rewritten into the clean format by the parent
    offload_dir: str
    log_dir: str
    device: str
    quantize_config: dict
    examples: list[dict[str, list[int]]]
    trust_remote_code: bool
    quiet: bool
    mse_grid: int = 100  # the clipping search's grid (hubtool/gptq/search.py), used when quantize_config's mse > 0


def run_gptq_job(job: GPTQJob, work: Path) -> dict:
    """Run JOB in `python -m hubtool.gptq.worker`; a failure comes back as one QuantizeError line.

    Returns the settings gptqmodel's QuantizeConfig actually held, one per key of job.quantize_config."""
    from hubtool import progress

    spec, result = work / "gptq-job.json", work / "gptq-result.json"
    spec.write_text(json.dumps(asdict(job)), encoding="utf-8")
    with progress.stdout_to_stderr():  # the child's stdout (gptqmodel's bars) goes where ours would
        with subprocess.Popen([sys.executable, "-m", "hubtool.gptq.worker", str(spec), str(result)]) as proc, killed_on_exit(proc):
            rc = proc.wait()
    outcome = json.loads(result.read_text(encoding="utf-8")) if result.is_file() else {}
    spec.unlink(missing_ok=True)
    result.unlink(missing_ok=True)
    if rc != 0 or not outcome.get("ok"):
        reason = outcome.get("error") or f"the worker process exited with status {rc}"
        hint = outcome.get("hint") or "see the output above"
        raise QuantizeError(f"{job.model_dir}: gptqmodel failed ({reason}); {hint}")
    return outcome.get("settings") or {}


def _main(spec: Path, result: Path) -> int:
    from hubtool import progress

    job = GPTQJob(**json.loads(spec.read_text(encoding="utf-8")))
    try:
        with progress.quiet_libraries(verbose=not job.quiet):
            settings = _quantize(job)
    except BaseException as exc:  # reported to the parent as one line; the traceback only with --verbose
        if not job.quiet:
            traceback.print_exc()
        numeric = type(exc).__name__ in ("RuntimeError", "ValueError", "LinAlgError", "_LinAlgError")
        result.write_text(json.dumps({
            "ok": False,
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
            "hint": "try more calibration samples or a larger --damp-percent" if numeric else "run with --verbose for the worker's traceback",
        }), encoding="utf-8")
        return 1
    result.write_text(json.dumps({"ok": True, "settings": settings}), encoding="utf-8")
    return 0


def _quantize(job: GPTQJob) -> dict:
    from transformers import AutoTokenizer

    from hubtool.gptq.quantize import _gptqmodel, _gptqmodel_logs_in, compute_dtype
    from hubtool.gptq.search import clipping_search
    from hubtool.progress import stdout_to_stderr

    gptqmodel = _gptqmodel()
    tokenizer = AutoTokenizer.from_pretrained(job.model_dir, trust_remote_code=job.trust_remote_code)
    qcfg = gptqmodel.QuantizeConfig(**job.quantize_config, offload_to_disk=True, offload_to_disk_path=job.offload_dir)
    # what the quantizer will really use (gptqmodel resolves some settings itself, e.g. act_group_aware vs desc_act)
    settings = {k: _plain(getattr(qcfg, k, None)) for k in job.quantize_config}
    search = clipping_search(job.mse_grid) if job.quantize_config.get("mse") else contextlib.nullcontext()
    with stdout_to_stderr(), _gptqmodel_logs_in(Path(job.log_dir)), search:
        model = gptqmodel.GPTQModel.load(job.model_dir, qcfg, dtype=compute_dtype(job.device), device=job.device,
                                         trust_remote_code=job.trust_remote_code)
        model.quantize(job.examples, batch_size=1, tokenizer=tokenizer)
        model.save(job.raw_dir)
    return settings


def _plain(value: object) -> object:
    """A JSON value for a QuantizeConfig field (enums by value)."""
    value = getattr(value, "value", value)
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1]), Path(sys.argv[2])))
