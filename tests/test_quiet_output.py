"""Library chatter (gptqmodel's banner and INFO lines, torchao, torch _pytree, warnings) only with --verbose."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.extras import require_extra

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys, warnings
    import os
    from hubtool.progress import log, quiet_libraries, stdout_to_stderr
    with quiet_libraries(verbose=sys.argv[1] == "verbose"), stdout_to_stderr():
        import gptqmodel  # banner, ENV INFO lines, GIL WARN; torchao 'Failed to load'; torch _pytree warnings
        warnings.warn("a library FutureWarning", FutureWarning)
        print("a library progress bar on stdout")  # gptqmodel's logbar bars, llama.cpp prints
        os.write(1, b"a C library line on fd 1\\n")
        log("hubtool: stage 1/1 done")
    import logging, os
    assert "TQDM_DISABLE" not in os.environ  # the quiet block's environment is undone too
    logging.getLogger("after").warning("logging restored after the quiet block")
""")


def run(mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


def test_library_chatter_only_with_verbose():
    require_extra("gptqmodel", "gptq")
    loud = run("verbose")
    assert loud.returncode == 0, loud.stderr[-2000:]
    quiet = run("quiet")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    everything = loud.stdout + loud.stderr
    # the noise is real (so this test can fail) ...
    assert "GPT-QModel" in everything and "INFO" in everything and "a library FutureWarning" in everything
    assert "a library progress bar on stdout" in loud.stderr and "a C library line on fd 1" in loud.stderr
    # ... and quiet mode leaves hubtool's own line, and restores logging afterwards
    lines = [line for line in (quiet.stdout + quiet.stderr).splitlines() if line.strip()]
    assert lines == ["hubtool: stage 1/1 done", "WARNING:after:logging restored after the quiet block"], lines


def test_gptq_worker_starts_without_warnings(tiny_llama, tmp_path):
    """GPTQ runs in a child process (`python -m hubtool.gptq.worker`; gptqmodel patches transformers
    process-wide). Starting it must not add warnings of its own: runpy warns when the module it runs was
    already imported by its package, as it was before quantize.py imported the worker lazily."""
    require_extra("gptqmodel", "gptq")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "hubtool", "quantize", "gptq", str(tiny_llama), "-o", str(tmp_path / "q"),
                          "--samples", "4", "--seq-len", "32", "--device", "cpu"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "gptq: wrote" in res.stderr
    assert "RuntimeWarning" not in res.stderr and "found in sys.modules" not in res.stderr, res.stderr[-2000:]


def test_every_command_keeps_library_chatter_behind_verbose(tiny_llama, tmp_path):
    """Not only release and demo: `quantize gptq` used to print gptqmodel's banner and ~170 INFO/WARN lines."""
    require_extra("gptqmodel", "gptq")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def gptq(out: str, *extra: str) -> str:
        res = subprocess.run([sys.executable, "-m", "hubtool", "quantize", "gptq", str(tiny_llama), "-o", str(tmp_path / out),
                              "--samples", "4", "--seq-len", "32", "--device", "cpu", *extra], capture_output=True, text=True,
                             env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout + res.stderr

    loud, quiet = gptq("loud", "--verbose"), gptq("quiet")
    assert "GPT-QModel" in loud and "INFO" in loud  # the chatter is real, so this test can fail
    assert "GPT-QModel" not in quiet and "INFO" not in quiet and "WARN" not in quiet, quiet[-2000:]
    assert "gptq: wrote" in quiet
