"""The shared stage cache on its own: what it refuses to download, and how it waits out a busy Xet store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import hubtool.release.store as store
from hubtool.errors import StageError
from hubtool.release.cache import Hasher
from hubtool.release.graph import Stage

STAGE = Stage(name="merge", kind="merge", key="abc123", needs=())


def _publish(cache: Path, files: dict[str, bytes], names: dict[str, str] | None = None) -> None:
    """A finished stage in a folder cache; NAMES renames entries in stage.json (as a tampered record would)."""
    folder = cache / STAGE.folder_name
    meta = {}
    for rel, data in files.items():
        (folder / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / "out" / rel).write_bytes(data)
        meta[(names or {}).get(rel, rel)] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "stage.json").write_text(json.dumps({"name": STAGE.name, "key": STAGE.key, "files": meta}))


def test_download_checks_and_places_every_file(tmp_path):
    _publish(tmp_path / "cache", {"model.safetensors": b"w" * 100, "sub/config.json": b"{}"})
    remote = store.RemoteCache(str(tmp_path / "cache"))
    dest = tmp_path / "work" / STAGE.folder_name
    remote.download(STAGE, dest, Hasher(tmp_path / "work"))
    assert (dest / "out" / "sub" / "config.json").read_bytes() == b"{}" and (dest / "stage.json").is_file()


@pytest.mark.parametrize("bad", ["../escape.txt", "/etc/escape.txt", "sub//x", "./x", "a\\..\\b"])
def test_stage_record_naming_a_file_outside_its_folder_is_refused(tmp_path, bad):
    _publish(tmp_path / "cache", {"x": b"data"}, names={"x": bad})
    remote = store.RemoteCache(str(tmp_path / "cache"))
    with pytest.raises(StageError, match="leaves the stage folder"):
        remote.download(STAGE, tmp_path / "work" / STAGE.folder_name, Hasher(tmp_path / "work"))
    assert not (tmp_path / "work" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    work = tmp_path / "work"
    assert not work.exists() or list(work.iterdir()) == []  # nothing half-fetched left behind


def test_a_busy_xet_store_is_waited_out_other_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    remote = store.RemoteCache(str(tmp_path / "cache"))
    calls = []

    def busy_twice(*args):
        calls.append(args)
        if len(calls) <= 2:
            raise RuntimeError("Internal error: Error opening redb database: Database already open. Cannot acquire lock.")
        return "done"

    assert remote._call("downloading merge/x", busy_twice, "a") == "done" and len(calls) == 3

    def broken(*args):
        raise RuntimeError("Internal error: disk on fire\nsecond line")

    with pytest.raises(StageError, match=r"downloading merge/x failed \(RuntimeError: Internal error: disk on fire\)") as err:
        remote._call("downloading merge/x", broken)
    assert "second line" not in str(err.value)

    monkeypatch.setattr(store, "BUSY_WAIT_S", -1.0)  # past the deadline: the busy error is reported, not retried forever
    calls.clear()
    with pytest.raises(StageError, match="Database already open"):
        remote._call("downloading merge/x", busy_twice)
    assert len(calls) == 1


def _stage_folder(root: Path, n_files: int) -> Path:
    """A finished stage in a work dir: N_FILES shards plus stage.json (as StageStore writes it)."""
    folder = root / STAGE.folder_name
    meta = {}
    for i in range(n_files):
        data = bytes([i % 256]) * (1000 + i)
        rel = f"model-{i + 1:05d}-of-{n_files:05d}.safetensors"
        (folder / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / "out" / rel).write_bytes(data)
        meta[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "stage.json").write_text(json.dumps({"name": STAGE.name, "key": STAGE.key, "files": meta}))
    return folder


def test_hf_cache_commits_a_30_file_stage_once_and_fetches_it_whole(tmp_path, local_hub):
    """hf:// caches: one commit per stage (HfFileSystem made one per file: 31 here), the same bytes back."""
    from huggingface_hub import HfApi

    folder = _stage_folder(tmp_path / "work-a", 30)
    remote = store.RemoteCache("hf://datasets/acme/stage-cache/v1", endpoint=local_hub.url)
    api = HfApi(endpoint=local_hub.url)
    before = len(api.list_repo_commits("acme/stage-cache", repo_type="dataset"))
    assert not remote.has(STAGE)
    remote.upload(STAGE, folder)
    commits = api.list_repo_commits("acme/stage-cache", repo_type="dataset")
    assert len(commits) - before == 1
    files = api.list_repo_files("acme/stage-cache", repo_type="dataset")
    assert f"v1/{STAGE.folder_name}/stage.json" in files and sum(f.endswith(".safetensors") for f in files) == 30

    other = store.RemoteCache("hf://datasets/acme/stage-cache/v1", endpoint=local_hub.url)  # another machine
    assert other.has(STAGE)
    dest = tmp_path / "work-b" / STAGE.folder_name
    other.download(STAGE, dest, Hasher(tmp_path / "work-b"))
    for src in (folder / "out").iterdir():
        assert (dest / "out" / src.name).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["out", "stage.json"]  # no snapshot leftovers
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_hf_cache_refuses_a_stage_whose_files_do_not_match_its_record(tmp_path, local_hub):
    """A tampered shard in the cache repo is caught by its sha256 and nothing is placed in the work dir."""
    from huggingface_hub import HfApi

    folder = _stage_folder(tmp_path / "work-a", 3)
    remote = store.RemoteCache("hf://acme/stage-cache", endpoint=local_hub.url)
    remote.upload(STAGE, folder)
    HfApi(endpoint=local_hub.url).upload_file(path_or_fileobj=b"tampered", repo_id="acme/stage-cache",
                                              path_in_repo=f"{STAGE.folder_name}/out/model-00002-of-00003.safetensors")
    dest = tmp_path / "work-b" / STAGE.folder_name
    with pytest.raises(StageError, match="model-00002-of-00003.safetensors: does not match its stage.json"):
        remote.download(STAGE, dest, Hasher(tmp_path / "work-b"))
    assert not dest.exists() and list((tmp_path / "work-b").iterdir()) == []
