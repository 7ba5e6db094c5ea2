"""The extras helper: a missing extra skips a local run but fails a CI run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    test = tmp_path / "test_needs_missing_extra.py"
    test.write_text(textwrap.dedent("""
        from tests.extras import require_extra

        require_extra("hubtool_no_such_module_xyz", "gguf")


        def test_never_runs():
            assert False
    """), encoding="utf-8")
    import os

    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           "-c", "/dev/null", str(test)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


def test_missing_extra_skips_locally(tmp_path):
    r = run_pytest(tmp_path, None)
    assert r.returncode in (0, 5), r.stdout + r.stderr  # 5: the only module was skipped, nothing collected
    assert "1 skipped" in r.stdout and "hubtool[gguf]" in r.stdout and "failed" not in r.stdout


def test_missing_extra_fails_in_ci(tmp_path):
    r = run_pytest(tmp_path, "true")
    assert r.returncode not in (0, 5), r.stdout
    assert "CI=true" in r.stdout and "hubtool_no_such_module_xyz is missing" in r.stdout
    assert "1 skipped" not in r.stdout
