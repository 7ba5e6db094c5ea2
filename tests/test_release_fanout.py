"""A release split into jobs, as a CI matrix runs it: `--plan-json`, then `--stage` processes with their
own work dirs sharing only a stage cache (a local folder, or a repo on the local Hub through hf://),
three of them at once, then `--publish`; and a release with `--jobs 2`, whose scheduler runs the stages as
processes on one machine: the Hub ends up byte-identical to a single-process release.
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
from hubtool.machine import cores
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
serve: {prompts: ["Say hi."], max_tokens: 8}
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
    """The reference: the same release in one process (`--jobs 1`: stage after stage), pushed to its own local Hub."""
    root = fan_inputs["root"] / "single"
    root.mkdir()
    with serve_in_thread(root / "hub") as hub:
        _run(_cmd(fan_inputs, root / "work", "--endpoint", hub.url, "--json", "--jobs", "1"), root)
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
    assert len(folders) == 11 and all((tmp_path / "cache" / f / "stage.json").is_file() for f in folders)  # 7 + 4 serve checks
    assert list((tmp_path / "cache" / "locks").iterdir()) == []


def test_stage_jobs_sharing_a_hub_repo_cache_publish_what_one_process_does(fan_inputs, single, tmp_path):
    """The cache is a private repo on the (local) Hub, reached with huggingface_hub's HfFileSystem."""
    from huggingface_hub import HfApi

    with serve_in_thread(tmp_path / "hub") as hub:
        _fan_out(fan_inputs, tmp_path, "hf://datasets/acme/fan-stage-cache", hub.url)
        state = _hub_state(hub.url)
        files = HfApi(endpoint=hub.url).list_repo_files("acme/fan-stage-cache", repo_type="dataset")
    assert state == single  # list_models lists model repos only: the cache (a dataset repo) is not part of the release
    assert sum(f.endswith("/stage.json") for f in files) == 11 and not any(f.startswith("locks/") for f in files)


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
    assert len(errors) == 1 and "cannot publish yet: 10 stage(s) not done" in errors[0] and "verify:gguf" in errors[0]
    assert "serve:gguf:Q8_0" in errors[0]
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


def _stage_files(work: Path) -> dict[str, dict]:
    """Every finished stage's output files (name -> size, sha256) by stage name; reference.json, which
    names the folder the reference was computed from (inside each run's own work dir), without that path."""
    out = {}
    for record in sorted((work / "stages").glob("*/stage.json")):
        data = json.loads(record.read_text())
        files = dict(data["files"])
        if "reference.json" in files:
            files["reference.json"] = {k: v for k, v in json.loads((record.parent / "out" / "reference.json").read_text()).items() if k != "model"}
        out[data["name"]] = files
    return out


def test_concurrent_release_is_byte_identical_to_a_sequential_one(fan_inputs, single, tmp_path):
    """`--jobs 2`: GPTQ runs beside the GGUF chain and the reference, each stage in its own process; the
    stage outputs and the Hub are the same bytes as the one-process run, and the log reads stage by stage."""
    with serve_in_thread(tmp_path / "hub") as hub:
        res = _run(_cmd(fan_inputs, tmp_path / "work", "--endpoint", hub.url, "--json", "--jobs", "2"), tmp_path)
        assert _hub_state(hub.url) == single
    summary = json.loads(res.stdout)
    assert summary["concurrency"]["jobs"] == 2 and summary["concurrency"]["max_running"] == 2
    assert summary["concurrency"]["peak_tree_rss_bytes"] > 0
    assert [st["name"] for st in summary["stages"]] == [s["name"] for s in summary["plan"]["stages"]]
    assert not any(st["cached"] for st in summary["stages"]) and all(st["peak_rss_bytes"] > 0 for st in summary["stages"])
    # each stage ran on its share of the cores (engines side by side, not a thread per core each); GPTQ, whose
    # weights depend on torch's thread count, on every core, as in the sequential run
    share = max(1, cores() // 2)
    assert summary["concurrency"]["threads_per_stage"] == share
    assert {st["name"]: st["threads"] for st in summary["stages"]} == {
        st["name"]: cores() if st["name"].startswith("gptq:") else share for st in summary["stages"]}
    assert _stage_files(tmp_path / "work") == _stage_files(fan_inputs["root"] / "single" / "work")
    err = res.stderr.splitlines()
    names = [s["name"] for s in summary["plan"]["stages"]]
    for i, name in enumerate(names, 1):
        assert f"[{i}/{len(names) + 2}] {name}: running" in err and any(ln.startswith(f"[{i}/{len(names) + 2}] {name}: done in ") for ln in err)
    start = next(i for i, ln in enumerate(err) if ln.startswith("running up to 2 stage(s) at once")) + 1
    stage_lines = err[start:err.index(f"[{len(names) + 1}/{len(names) + 2}] cards")]
    # every line a stage process wrote names its stage (the scheduler's prefix where the line itself doesn't)
    assert stage_lines and all(any(n in ln for n in names) for ln in stage_lines), [ln for ln in stage_lines if not any(n in ln for n in names)]
    # the rerun finds everything cached and starts no stage process
    again = _run(_cmd(fan_inputs, tmp_path / "work", "--json", "--jobs", "2", "--local-hub", str(tmp_path / "hub2")), tmp_path)
    assert all(st["cached"] for st in json.loads(again.stdout)["stages"]) and "running up to" in again.stderr


HOLD = """
import os, pathlib, time
if os.environ.get("TEST_HOLD"):
    import hubtool.release.store as store
    _compute = store.StageStore._compute
    def held(self, stage, fn, **kw):
        if stage.name not in os.environ["TEST_HOLD"].split(","):
            return _compute(self, stage, fn, **kw)
        def half_written(out):  # writes part of its output, then works on until stopped
            out.mkdir(parents=True, exist_ok=True)
            (out / "part-1.bin").write_bytes(b"x" * 1000)
            (out.parent / "held").touch()
            while True:
                time.sleep(0.05)
        return _compute(self, stage, half_written, **kw)
    store.StageStore._compute = held
"""


def _sessions() -> dict[int, int]:
    """pid -> session id of every process on the machine."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(stat.parent.name)] = int(fields[3])
    return out


def test_sigterm_during_a_concurrent_release_leaves_no_child_and_no_half_written_stage(fan_inputs, tmp_path):
    import signal

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD)
    work = tmp_path / "work"
    env = {**_env(tmp_path), "PYTHONPATH": f"{ROOT}{os.pathsep}{hook}", "TEST_HOLD": "gptq:gptq-4bit-32g-actorder,gguf:F16-base"}
    proc = subprocess.Popen(_cmd(fan_inputs, work, "--jobs", "3", "--local-hub", str(tmp_path / "hub")), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while len(list(work.glob("stages/*/held"))) < 2:  # GPTQ and the GGUF base are both half-way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the two stages never started"
        time.sleep(0.05)
    locks = [json.loads(p.read_text()) for p in (work / "stages" / "locks").glob("*.json")]
    children = {lock["pid"] for lock in locks}
    assert len(children) >= 2 and proc.pid not in children  # each stage in a process of its own
    assert all(_sessions().get(pid) == pid for pid in children)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert errors == ["error: stopped by SIGTERM; outputs were not written, temp files were removed (re-run to resume)"], err[-3000:]
    assert "Traceback" not in err
    assert not any(sid in children for sid in _sessions().values())  # no stage process, nor anything it started, is left
    folders = [p for p in (work / "stages").iterdir() if p.name != "locks"]
    assert any(p.name.startswith("merge-") for p in folders)  # finished before the signal: kept
    assert all((p / "stage.json").is_file() for p in folders), [p.name for p in folders]
    assert list((work / "stages" / "locks").iterdir()) == []
