"""An hf:// stage cache: commits and time to upload and fetch one stage, per file (before) vs per stage (now).

    python bench/stage_cache.py [--files 30] [--mb 4]

Runs the local Hub in-process (no network, no token). "per file" is what the cache did before: one
HfFileSystem `put_file` per shard, then stage.json (a commit each); "per stage" is RemoteCache.upload
today (one create_commit) and RemoteCache.download (one snapshot_download). Both upload the same
bytes into their own repo, side by side in one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_stage(root: Path, n_files: int, size: int):
    from hubtool.release.graph import Stage

    stage = Stage(name="merge", kind="merge", key="bench0000", needs=())
    folder = root / stage.folder_name
    meta = {}
    for i in range(n_files):
        data = os.urandom(size)
        rel = f"model-{i + 1:05d}-of-{n_files:05d}.safetensors"
        (folder / "out").mkdir(parents=True, exist_ok=True)
        (folder / "out" / rel).write_bytes(data)
        meta[rel] = {"size": size, "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "stage.json").write_text(json.dumps({"name": stage.name, "key": stage.key, "files": meta}))
    return stage, folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=30)
    ap.add_argument("--mb", type=float, default=4.0, help="size of each file in MB")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stage-cache-bench-"))
    os.environ["HF_HOME"] = str(tmp / "hf-home")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from huggingface_hub import HfApi, HfFileSystem

    from hubtool.hub_server import serve_in_thread
    from hubtool.release.cache import Hasher
    from hubtool.release.store import STAGE_OUTPUT, STAGE_RECORD, RemoteCache

    stage, folder = make_stage(tmp / "work", args.files, int(args.mb * 1e6))
    rows = []
    # each mode on its own fresh local Hub: a shared Xet store would dedupe the second upload to nothing
    with serve_in_thread(tmp / "hub-a") as hub:  # before: a commit per file through HfFileSystem, stage.json last
        api = HfApi(endpoint=hub.url)
        api.create_repo("bench/per-file", repo_type="dataset", private=True)
        fs = HfFileSystem(endpoint=hub.url)
        t = time.perf_counter()
        for shard in sorted((folder / STAGE_OUTPUT).iterdir()):
            fs.put_file(str(shard), f"datasets/bench/per-file/{stage.folder_name}/{STAGE_OUTPUT}/{shard.name}")
        fs.put_file(str(folder / STAGE_RECORD), f"datasets/bench/per-file/{stage.folder_name}/{STAGE_RECORD}")
        up = time.perf_counter() - t
        t = time.perf_counter()
        dest = tmp / "fetch-a"
        dest.mkdir()
        for shard in sorted((folder / STAGE_OUTPUT).iterdir()):
            fs.get_file(f"datasets/bench/per-file/{stage.folder_name}/{STAGE_OUTPUT}/{shard.name}", str(dest / shard.name))
        down = time.perf_counter() - t
        rows.append(("per file (before)", len(api.list_repo_commits("bench/per-file", repo_type="dataset")) - 1, up, down))
    with serve_in_thread(tmp / "hub-b") as hub:  # now: RemoteCache, one commit, one snapshot
        api = HfApi(endpoint=hub.url)
        remote = RemoteCache("hf://datasets/bench/per-stage", endpoint=hub.url)
        t = time.perf_counter()
        remote.upload(stage, folder)
        up = time.perf_counter() - t
        t = time.perf_counter()
        remote.download(stage, tmp / "fetch-b" / stage.folder_name, Hasher(tmp / "fetch-b"))
        down = time.perf_counter() - t
        rows.append(("per stage (now)", len(api.list_repo_commits("bench/per-stage", repo_type="dataset")) - 1, up, down))
    print(f"{args.files} files x {args.mb:g} MB, local Hub in-process, load average {os.getloadavg()[0]:.2f}")
    print(f"{'mode':<20} {'commits':>8} {'upload s':>9} {'fetch s':>8}  (fetch now includes the sha256 check)")
    for name, commits, up, down in rows:
        print(f"{name:<20} {commits:>8} {up:>9.1f} {down:>8.1f}")


if __name__ == "__main__":
    main()
