"""Finished stages: in the work dir, and with `--cache` in a shared place other machines use too.

A stage's folder (`<name>-<key>`, release/graph.py) holds `out/` and `stage.json`, written last:
a folder without it is an attempt that never finished and is started over. The shared cache is
any fsspec location — a local or network path, `s3://`, `gs://`, or a Hub repo through
huggingface_hub's `HfFileSystem` (`hf://org/cache`, `hf://datasets/org/cache`) — holding the same
folders; stage.json goes up after every file, with each file's size and sha256, so a reader never
takes a half-uploaded stage and checks what it downloads. While a stage runs, a lock in the cache
(and in the work dir) names who runs it, so the same stage started on a second machine stops with
one line instead of writing a second, mixed result.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from hubtool import __version__
from hubtool.artifacts import STAGE_OUTPUT, STAGE_RECORD, Record
from hubtool.errors import HubtoolError, QuantizeError, StageError, from_os_error, is_disk_error
from hubtool.progress import log
from hubtool.release.cache import Hasher
from hubtool.release.graph import Stage

LOCKS = "locks"
# xet-core's local CAS (the local Hub's Xet folder) is opened by one process per transfer; a second
# process's transfer meanwhile fails with this, and goes through once the first one is done.
XET_STORE_BUSY = "Database already open"
BUSY_WAIT_S = 1800.0


class StageStore:
    """Looks stages up, runs the missing ones under a lock, and shares them through the cache."""

    def __init__(self, work_dir: Path, hasher: Hasher, cache: str | None = None, *, endpoint: str | None = None,
                 token: str | None = None) -> None:
        self.root = Path(work_dir) / "stages"
        self.hasher = hasher
        self.remote = RemoteCache(cache, endpoint=endpoint, token=token) if cache else None
        self.ran: list[dict[str, Any]] = []  # what this process did per stage, for the summary

    def folder(self, stage: Stage) -> Path:
        return self.root / stage.folder_name

    def find(self, stage: Stage) -> Record | None:
        """The finished stage's record, fetched from the shared cache into the work dir if need be."""
        folder = self.folder(stage)
        if (folder / STAGE_RECORD).is_file():
            return Record.from_dir(folder)
        if self.remote is not None and self.remote.has(stage):
            self.remote.download(stage, folder, self.hasher)
            return Record.from_dir(folder)
        return None

    def run(self, stage: Stage, fn: Callable[[Path], Record], *, index: str = "", error: type[HubtoolError] = QuantizeError) -> Record:
        """STAGE's record: from the work dir or the cache, else computed by FN(out) under a lock."""
        found = self.find(stage)
        if found is not None:
            log(f"{index}{stage.name}: cached ({self.folder(stage)})")
            if self.remote is not None and not self.remote.has(stage):  # ran here before --cache was given: share it
                with self._locked(stage):
                    self.remote.upload(stage, self.folder(stage))
            self.ran.append({"name": stage.name, "key": stage.key, "cached": True, "seconds": 0.0, "out": str(found.folder)})
            return found
        with self._locked(stage):
            found = self.find(stage)  # finished elsewhere while we waited for the lock
            if found is not None:
                self.ran.append({"name": stage.name, "key": stage.key, "cached": True, "seconds": 0.0, "out": str(found.folder)})
                return found
            record = self._compute(stage, fn, index=index, error=error)
            if self.remote is not None:
                log(f"{index}{stage.name}: uploading to the stage cache {self.remote.url}")
                self.remote.upload(stage, self.folder(stage))
        return record

    def _compute(self, stage: Stage, fn: Callable[[Path], Record], *, index: str, error: type[HubtoolError]) -> Record:
        folder = self.folder(stage)
        log(f"{index}{stage.name}: running")
        if folder.exists():  # an earlier attempt that never finished (killed, crashed): start clean
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        start = time.monotonic()
        try:
            record = fn(folder / STAGE_OUTPUT)
        except HubtoolError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        except BaseException as exc:
            shutil.rmtree(folder, ignore_errors=True)  # no half-written stage output survives a failure or SIGTERM
            if not isinstance(exc, Exception):
                raise
            if is_disk_error(exc):  # the machine's fault, not the input's: say so
                raise from_os_error(exc, self.root.parent, error=error) from None  # the user's --work-dir, not stages/
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise error(f"{stage.name}: failed ({type(exc).__name__}: {first}); finished stages are cached in {self.root}, "
                        "fix the cause and re-run to resume") from exc
        seconds = round(time.monotonic() - start, 1)
        write_record(folder, stage, record, seconds, self.hasher)
        log(f"{index}{stage.name}: done in {seconds:.0f} s")
        self.ran.append({"name": stage.name, "key": stage.key, "cached": False, "seconds": seconds, "out": str(record.folder)})
        return record

    def discard_unfinished(self, stage: Stage) -> None:
        """Remove what a stopped or killed attempt at STAGE left: its folder if it has no stage.json, and its
        local lock if the process holding it is gone."""
        folder = self.folder(stage)
        if folder.exists() and not (folder / STAGE_RECORD).is_file():
            shutil.rmtree(folder, ignore_errors=True)
        for tmp in self.root.glob(f".{stage.folder_name}.fetch-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        lock = self.root / LOCKS / f"{stage.folder_name}.json"
        try:
            holder = json.loads(lock.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return
        if _stale(holder):
            lock.unlink(missing_ok=True)

    @contextmanager
    def _locked(self, stage: Stage) -> Iterator[None]:
        local = self.root / LOCKS / f"{stage.folder_name}.json"
        with _local_lock(local, stage):
            if self.remote is None:
                yield
                return
            with self.remote.lock(stage):
                yield


def write_record(folder: Path, stage: Stage, record: Record, seconds: float, hasher: Hasher) -> None:
    """stage.json, last: the stage, its record, and every output file's size and sha256 (what a cache reader checks)."""
    out = folder / STAGE_OUTPUT
    files = {}
    if out.is_dir():
        for p in sorted(out.rglob("*")):
            if p.is_file():
                files[p.relative_to(out).as_posix()] = {"size": p.stat().st_size, "sha256": hasher.file(p)}
    data = {"name": stage.name, "key": stage.key, "stage_kind": stage.kind, "kind": record.kind, "options": dict(stage.options),
            "hubtool": __version__, "seconds": seconds, "record": record.to_json(), "files": files}
    tmp = folder / f".{STAGE_RECORD}.tmp"
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, folder / STAGE_RECORD)


def _lock_body(stage: Stage) -> dict[str, Any]:
    return {"stage": stage.name, "key": stage.key, "host": socket.gethostname(), "pid": os.getpid(), "owner": uuid.uuid4().hex,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def _busy(stage: Stage, holder: dict[str, Any], where: str) -> StageError:
    return StageError(f"stage {stage.name} is already running (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
                      f"since {holder.get('started', '?')}; lock {where}): its result will be shared when it is done; "
                      "if that job is gone, delete the lock and re-run")


def _stale(holder: dict[str, Any]) -> bool:
    """A lock left by a process on this machine that no longer exists (killed -9, power loss)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except (ProcessLookupError, ValueError):
        return True
    except PermissionError:
        return False
    return False


@contextmanager
def _local_lock(path: Path, stage: Stage) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(_lock_body(stage))
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                holder = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                holder = {}
            if not _stale(holder):
                raise _busy(stage, holder, str(path)) from None
            path.unlink(missing_ok=True)
    else:
        raise StageError(f"{path}: could not take the stage lock; delete it and re-run")
    with os.fdopen(fd, "w") as f:
        f.write(body)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


class RemoteCache:
    """The shared stage cache at URL (an fsspec URL or a path)."""

    def __init__(self, url: str, *, endpoint: str | None = None, token: str | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        options: dict[str, Any] = {}
        self.local = "://" not in self.url or self.url.startswith("file://")
        if self.local:
            options = {"auto_mkdir": True}
        elif self.url.startswith("hf://"):
            from hubtool.push import resolve_endpoint

            options = {"endpoint": resolve_endpoint(endpoint).rstrip("/"), "token": token}
            _ensure_hub_repo(self.url, options["endpoint"], token)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)
        except (ImportError, ValueError) as exc:
            raise StageError(f"--cache {url}: {exc}; use a path, or an fsspec URL whose filesystem is installed (s3fs for s3://, gcsfs for gs://)") from None
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        # hf://: a stage goes up as one commit and comes down as one snapshot (HfFileSystem would make a
        # commit and a request per file: 31 commits for a 30-shard stage).
        self.hub = self.fs.resolve_path(self.root) if self.url.startswith("hf://") else None
        self.hub_options = options

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _guard(self, what: str) -> Any:
        return _RemoteErrors(self.url, what)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """FN(*ARGS) under _guard, waiting out another process's transfer on a local Hub's Xet store."""
        deadline, delay, told = time.monotonic() + BUSY_WAIT_S, 0.25, False
        while True:
            with self._guard(what):
                try:
                    return fn(*args)
                except Exception as exc:
                    if XET_STORE_BUSY not in str(exc) or time.monotonic() > deadline:
                        raise
            if not told:
                log(f"{what}: the Hub's Xet store is busy with another process's transfer; waiting for it")
                told = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def has(self, stage: Stage) -> bool:
        with self._guard(f"looking up {stage.name}"):
            self.fs.invalidate_cache()  # another machine may have added it since we last listed
            return bool(self.fs.exists(self._path(stage.folder_name, STAGE_RECORD)))

    def download(self, stage: Stage, folder: Path, hasher: Hasher) -> None:
        """The cached stage into FOLDER (via a temp folder beside it, renamed when every file checked out)."""
        with self._guard(f"reading {stage.name}"):
            record = json.loads(self.fs.cat_file(self._path(stage.folder_name, STAGE_RECORD)))
        files: dict[str, Any] = record.get("files", {})
        log(f"{stage.name}: fetching from the stage cache {self.url} ({len(files)} file(s))")
        for rel in files:
            parts = rel.split("/")
            if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
                raise StageError(f"{self.url}/{stage.folder_name}/{STAGE_RECORD}: file name {rel!r} leaves the stage folder; "
                                 "delete that stage folder from the cache and re-run the stage")
        tmp = folder.with_name(f".{folder.name}.fetch-{uuid.uuid4().hex[:8]}")
        try:
            if self.hub is not None:
                self._fetch_snapshot(stage, files, tmp / STAGE_OUTPUT)
            else:
                for rel in files:
                    dest = tmp / STAGE_OUTPUT / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self._call(f"downloading {stage.name}/{rel}", self.fs.get_file,
                               self._path(stage.folder_name, STAGE_OUTPUT, rel), str(dest))
            for rel, meta in files.items():
                dest = tmp / STAGE_OUTPUT / rel
                if not dest.is_file() or dest.stat().st_size != meta["size"] or hasher.file(dest) != meta["sha256"]:
                    raise StageError(f"{self.url}/{stage.folder_name}/{STAGE_OUTPUT}/{rel}: does not match its stage.json "
                                     "(an interrupted or concurrent upload); delete that stage folder from the cache and re-run the stage")
            (tmp / STAGE_OUTPUT).mkdir(parents=True, exist_ok=True)  # a stage whose output holds no file
            (tmp / STAGE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            if folder.exists():
                shutil.rmtree(folder)
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _in_repo(self, stage: Stage, *parts: str) -> str:
        assert self.hub is not None
        return "/".join(p for p in (self.hub.path_in_repo.strip("/"), stage.folder_name, *parts) if p)

    def _fetch_snapshot(self, stage: Stage, files: dict[str, Any], out: Path) -> None:
        """The stage's output files in one snapshot_download, moved into OUT (checked by the caller)."""
        from huggingface_hub import snapshot_download

        assert self.hub is not None
        landing = out.parent / "snapshot"
        prefix = self._in_repo(stage, STAGE_OUTPUT)
        self._call(f"downloading {stage.name}", lambda: snapshot_download(
            self.hub.repo_id, repo_type=self.hub.repo_type, revision=self.hub.revision, local_dir=landing,
            allow_patterns=[f"{prefix}/{rel}" for rel in files], endpoint=self.hub_options["endpoint"],
            token=self.hub_options["token"]))
        for rel in files:
            src = landing / prefix / rel
            if src.is_file():
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, out / rel)
        shutil.rmtree(landing, ignore_errors=True)

    def upload(self, stage: Stage, folder: Path) -> None:
        """Every output file, then stage.json (so readers see the stage only once it is whole)."""
        record = json.loads((folder / STAGE_RECORD).read_text(encoding="utf-8"))
        if self.hub is not None:
            self._commit_stage(stage, folder, record)
            return
        for rel in record.get("files", {}):
            self._call(f"uploading {stage.name}/{rel}", self.fs.put_file,
                       str(folder / STAGE_OUTPUT / rel), self._path(stage.folder_name, STAGE_OUTPUT, rel))
        with self._guard(f"uploading {stage.name}/{STAGE_RECORD}"):
            self.fs.pipe_file(self._path(stage.folder_name, STAGE_RECORD), (folder / STAGE_RECORD).read_bytes())

    def _commit_stage(self, stage: Stage, folder: Path, record: dict[str, Any]) -> None:
        """One Hub commit holding every output file and stage.json: a commit is atomic, so no reader sees half a stage."""
        from huggingface_hub import CommitOperationAdd, HfApi

        assert self.hub is not None
        operations = [CommitOperationAdd(self._in_repo(stage, STAGE_OUTPUT, rel), str(folder / STAGE_OUTPUT / rel))
                      for rel in record.get("files", {})]
        operations.append(CommitOperationAdd(self._in_repo(stage, STAGE_RECORD), str(folder / STAGE_RECORD)))
        api = HfApi(endpoint=self.hub_options["endpoint"], token=self.hub_options["token"])
        self._call(f"uploading {stage.name}", lambda: api.create_commit(
            self.hub.repo_id, operations, commit_message=f"stage {stage.folder_name}", repo_type=self.hub.repo_type,
            revision=self.hub.revision))
        self.fs.invalidate_cache()

    @contextmanager
    def lock(self, stage: Stage) -> Iterator[None]:
        """Best effort on stores without an atomic create: write our lock, re-read it, and stop if another owner won."""
        path = self._path(LOCKS, f"{stage.folder_name}.json")
        if self.local:  # a real atomic create
            with _local_lock(Path(path), stage):
                yield
            return
        with self._guard(f"locking {stage.name}"):
            if self.fs.exists(path):
                holder = json.loads(self.fs.cat_file(path))
                if not _stale(holder):
                    raise _busy(stage, holder, f"{self.url}/{LOCKS}/{stage.folder_name}.json")
            body = _lock_body(stage)
            self.fs.pipe_file(path, json.dumps(body).encode())
            time.sleep(0.5)  # a racing writer's lock lands in this window; the last one written wins
            self.fs.invalidate_cache()
            holder = json.loads(self.fs.cat_file(path))
            if holder.get("owner") != body["owner"]:
                raise _busy(stage, holder, f"{self.url}/{LOCKS}/{stage.folder_name}.json")
        try:
            yield
        finally:
            with self._guard(f"unlocking {stage.name}"):
                if self.fs.exists(path):
                    self.fs.rm_file(path)


class _RemoteErrors:
    """Failures talking to the shared cache become one StageError line naming the cache."""

    def __init__(self, url: str, what: str) -> None:
        self.url, self.what = url, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, HubtoolError) or not isinstance(exc, Exception):
            return False
        from hubtool.push import scrub

        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise StageError(f"--cache {self.url}: {self.what} failed ({type(exc).__name__}: {scrub(first, None)}); "
                         "check the cache URL and credentials and re-run (finished stages are kept)") from None


def _ensure_hub_repo(url: str, endpoint: str, token: str | None) -> None:
    """`hf://[datasets/|spaces/]org/name[/...]`: the repo is created (private) if it doesn't exist yet."""
    from huggingface_hub import HfApi

    parts = url[len("hf://"):].split("/")
    repo_type = None
    if parts and parts[0] in ("datasets", "spaces"):
        repo_type = parts.pop(0)[:-1]
    if len(parts) < 2 or not all(parts[:2]):
        raise StageError(f"--cache {url}: expected hf://ORG/NAME or hf://datasets/ORG/NAME (a Hub repo to keep the stages in)")
    with _RemoteErrors(url, "creating the cache repo"):
        HfApi(endpoint=endpoint, token=token).create_repo(f"{parts[0]}/{parts[1]}", repo_type=repo_type, private=True, exist_ok=True)
