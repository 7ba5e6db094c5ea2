"""A release split into jobs, as a CI matrix runs it: `--plan-json`, then `--stage` processes with their
own work dirs sharing only a stage cache (a local folder, or a repo on the local Hub through hf://),
three of them at once, then `--publish`; the Hub ends up byte-identical to a single-process release.
And the three ways a split release goes wrong each get one line: a missing input stage, the same stage
started twice at once, `--publish` before every stage is done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubtool.hub_server import serve_in_thread
from tests.peft_helpers import make_adapter
from tests.test_release import remote_state
from tests.tiny import make_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
RELEASE_YAML = """\
name: fan
namespace: acme
quants: [gptq, gguf]
gptq: {presets: [gptq-4bit-32g-actorder], samples: 8, seq_len: 64}
gguf: {types: [q8_0]}
verify: {max_tokens: 256, context: 64}
card: {license: apache-2.0, base_model: acme/tiny-base}
"""


@pytest.fixture(scope="module")
def fan_inputs(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fanout-inputs")
    base = make_tiny_llama(root / "base", tokenizer_dir)
    adapter = make_adapter(base, root / "adapter", r=4, lora_alpha=8)
    config = root / "release.yaml"
    config.write_text(RELEASE_YAML)
    return {"base": base, "adapter": adapter, "config": config, "root": root}


def _env(root: Path) -> dict[str, str]:
    # each job its own huggingface_hub home and Xet cache, as on separate machines
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(root / "hf-home"),
               HF_HUB_CACHE=str(root / "hf-home" / "hub"), HF_XET_CACHE=str(root / "hf-home" / "xet"))
    env.pop("HF_TOKEN", None)
    env.pop("HF_ENDPOINT", None)
    return env


def _cmd(inputs: dict[str, Path], work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hubtool", "release", "--base", str(inputs["base"]), "--adapter", str(inputs["adapter"]),
            "--config", str(inputs["config"]), "--work-dir", str(work), *extra]


def _run(cmd: list[str], root: Path, expect: int = 0) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(root), cwd=root, timeout=900)
    assert res.returncode == expect, res.stderr[-3000:]
    return res


def _hub_state(url: str) -> dict[str, dict[str, str]]:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=url)
    out = {}
    for model in api.list_models(author="acme"):
        for ref in api.list_repo_refs(model.id).branches:
            out[f"{model.id}@{ref.name}"] = remote_state(url, model.id, ref.name)
    return out


@pytest.fixture(scope="module")
def single(fan_inputs):
    """The reference: the same release in one process, pushed to its own local Hub."""
    root = fan_inputs["root"] / "single"
    root.mkdir()
    with serve_in_thread(root / "hub") as hub:
        _run(_cmd(fan_inputs, root / "work", "--endpoint", hub.url, "--json"), root)
        yield _hub_state(hub.url)


def _fan_out(inputs: dict[str, Path], root: Path, cache: str, endpoint: str) -> None:
    """plan -> prepare -> three concurrent quantize jobs -> verify -> publish, each in its own work dir."""
    plan = json.loads(_run(_cmd(inputs, root / "w-plan", "--plan-json"), root).stdout)
    groups = plan["groups"]
    assert [s["name"] for s in plan["stages"]][0] == "merge" and groups["prepare"] == [["merge"]]
    assert sorted(map(tuple, groups["quantize"])) == [("gguf:F16-base", "gguf:Q8_0"), ("gptq:gptq-4bit-32g-actorder",), ("verify:reference",)]
    common = ("--cache", cache, "--endpoint", endpoint)
    for i, chain in enumerate(groups["prepare"]):
        _run(_cmd(inputs, root / f"w-prepare-{i}", "--stage", ",".join(chain), *common), root)
    jobs = [subprocess.Popen(_cmd(inputs, root / f"w-quantize-{i}", "--stage", ",".join(chain), *common), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_env(root / f"w-quantize-{i}"), cwd=root)
            for i, chain in enumerate(groups["quantize"])]
    for job in jobs:
        _, err = job.communicate(timeout=900)
        assert job.returncode == 0, err[-3000:]
        assert "fetching from the stage cache" in err  # the merge came from the cache, not from a merge of its own
    for i, chain in enumerate(groups["verify"]):
        _run(_cmd(inputs, root / f"w-verify-{i}", "--stage", ",".join(chain), *common), root)
    _run(_cmd(inputs, root / "w-publish", "--publish", "--json", *common), root)


def test_stage_jobs_sharing_a_folder_cache_publish_what_one_process_does(fan_inputs, single, tmp_path):
    with serve_in_thread(tmp_path / "hub") as hub:
        _fan_out(fan_inputs, tmp_path, str(tmp_path / "cache"), hub.url)
        assert _hub_state(hub.url) == single
    # the cache holds each stage once, complete (stage.json last), and no lock is left behind
    folders = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name != "locks")
    assert len(folders) == 7 and all((tmp_path / "cache" / f / "stage.json").is_file() for f in folders)
    assert list((tmp_path / "cache" / "locks").iterdir()) == []


def test_stage_jobs_sharing_a_hub_repo_cache_publish_what_one_process_does(fan_inputs, single, tmp_path):
    """The cache is a private repo on the (local) Hub, reached with huggingface_hub's HfFileSystem."""
    from huggingface_hub import HfApi

    with serve_in_thread(tmp_path / "hub") as hub:
        _fan_out(fan_inputs, tmp_path, "hf://datasets/acme/fan-stage-cache", hub.url)
        state = _hub_state(hub.url)
        files = HfApi(endpoint=hub.url).list_repo_files("acme/fan-stage-cache", repo_type="dataset")
    assert state == single  # list_models lists model repos only: the cache (a dataset repo) is not part of the release
    assert sum(f.endswith("/stage.json") for f in files) == 7 and not any(f.startswith("locks/") for f in files)


def test_missing_input_stage_is_one_line(fan_inputs, tmp_path):
    res = _run(_cmd(fan_inputs, tmp_path / "w", "--stage", "gptq:gptq-4bit-32g-actorder", "--cache", str(tmp_path / "cache")), tmp_path, expect=7)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr
    assert "gptq:gptq-4bit-32g-actorder needs merge" in errors[0] and "--stage merge" in errors[0]
    res = _run(_cmd(fan_inputs, tmp_path / "w", "--stage", "gguf:Q4_0"), tmp_path, expect=2)
    assert "not a stage of this release" in res.stderr and "gguf:Q8_0" in res.stderr


def test_publish_before_every_stage_is_done_is_one_line(fan_inputs, tmp_path):
    cache = str(tmp_path / "cache")
    _run(_cmd(fan_inputs, tmp_path / "w1", "--stage", "merge", "--cache", cache), tmp_path)
    with serve_in_thread(tmp_path / "hub") as hub:
        res = _run(_cmd(fan_inputs, tmp_path / "w2", "--publish", "--cache", cache, "--endpoint", hub.url), tmp_path, expect=7)
        assert _hub_state(hub.url) == {}  # nothing pushed
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "cannot publish yet: 6 stage(s) not done" in errors[0] and "verify:gguf" in errors[0]
    assert "merge" not in errors[0].split("not done:")[1].split(";")[0].split(", ")


HELD = """
import os, pathlib, sys, time
import hubtool.release.store as store
_compute = store.StageStore._compute
def held(self, *a, **k):  # the stage holds its lock until the test opens the gate
    gate = pathlib.Path(os.environ["TEST_GATE"])
    while not gate.exists():
        time.sleep(0.05)
    return _compute(self, *a, **k)
store.StageStore._compute = held
from hubtool.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_same_stage_started_twice_at_once_runs_once(fan_inputs, tmp_path):
    """The second job sees the first one's lock in the shared cache and stops with one line; the first
    job's result is the one in the cache, and a later run of the same stage just uses it."""
    cache = tmp_path / "cache"
    _run(_cmd(fan_inputs, tmp_path / "w0", "--stage", "merge", "--cache", str(cache)), tmp_path)
    stage = ("--stage", "gguf:F16-base", "--cache", str(cache))
    gate = tmp_path / "gate"
    first = subprocess.Popen([sys.executable, "-c", HELD, *_cmd(fan_inputs, tmp_path / "w1", *stage)[3:]], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**_env(tmp_path), "TEST_GATE": str(gate)}, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not any((cache / "locks").glob("gguf-F16-base-*.json")):
        assert first.poll() is None and time.monotonic() < deadline, "the first job never took the lock"
        time.sleep(0.05)
    second = _run(_cmd(fan_inputs, tmp_path / "w2", *stage), tmp_path, expect=7)
    gate.touch()
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "stage gguf:F16-base is already running" in errors[0] and "lock" in errors[0]
    assert not list((tmp_path / "w2" / "stages").glob("gguf-F16-base-*"))  # the second job wrote no result of its own
    again = _run(_cmd(fan_inputs, tmp_path / "w2", *stage), tmp_path)
    assert "gguf:F16-base: cached" in again.stdout
