"""Repos on disk for the local Hub: a content-addressed blob store plus JSON commits and refs.

Layout under the root:
    blobs/ab/<sha256>                      file contents (LFS uploads, regular files, Xet reads)
    xet-cas/                               hf-xet's file-backed CAS (see xet.py)
    repos/<type>/<ns>/<name>/repo.json     {private, created}
    repos/<type>/<ns>/<name>/refs.json     {branches: {name: commit id}}
    repos/<type>/<ns>/<name>/commits/<id>.json   {parents, title, message, date, author, files}
Every JSON write goes to a temp file and is renamed into place, so a killed server never
leaves a half-written repo. One lock serialises ref updates (commits are small).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from hubtool.hub_server.xet import XetStore

REPO_TYPES = ("model", "dataset", "space")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
GITATTRIBUTES = (
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.gguf filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.model filter=lfs diff=lfs merge=lfs -text\n"
).encode()
# Files the real Hub's default .gitattributes sends to LFS, plus anything binary or >= 10 MB.
LFS_SUFFIXES = (
    ".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".model",
    ".npy", ".npz", ".pkl", ".pickle", ".zip", ".gz", ".tar", ".zst", ".parquet", ".arrow", ".tflite",
)
LFS_MIN_SIZE = 10 * 1024 * 1024


class StorageError(Exception):
    """A request the store refuses; the handler turns it into an HTTP error with this code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def wants_lfs(path: str, size: int, sample: bytes) -> bool:
    """The upload mode the Hub would pick: LFS for model-ish suffixes, big or binary files."""
    return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\0" in sample


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RepoRef:
    """A repo address: type ('model'|'dataset'|'space') and 'ns/name'."""

    type: str
    repo_id: str

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/", 1)[0]


class Storage:
    """All repos under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.xet = XetStore(self.root / "xet-cas")
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ blobs
    def blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha):
            dest = self.blob_path(sha)
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".in-", dir=dest.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, dest)
        return sha

    def put_stream(self, expected_sha256: str, stream: BinaryIO, length: int | None) -> int:
        """Store an LFS upload, verifying its sha256 before it becomes visible; returns the size."""
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.blob_dir)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in _iter_stream(stream, length):
                    digest.update(chunk)
                    fh.write(chunk)
                    size += len(chunk)
            if digest.hexdigest() != expected_sha256:
                raise StorageError(400, "BadRequest", f"uploaded content does not match sha256 {expected_sha256}")
            dest = self.blob_path(expected_sha256)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return size

    def open_blob(self, entry: dict[str, Any]) -> Path:
        """The file holding an entry's bytes, reassembled from the Xet CAS on first read."""
        path = self.blob_path(entry["sha256"])
        if not path.is_file():
            if not entry.get("xet"):
                raise StorageError(404, "EntryNotFound", f"content of {entry['sha256']} is missing")
            self.xet.materialize(entry["xet"], entry["size"], path)
        return path

    # ------------------------------------------------------------------ repos
    def repo_dir(self, ref: RepoRef) -> Path:
        return self.root / "repos" / ref.type / ref.repo_id

    def exists(self, ref: RepoRef) -> bool:
        return (self.repo_dir(ref) / "repo.json").is_file()

    def repo_meta(self, ref: RepoRef) -> dict[str, Any]:
        try:
            return json.loads((self.repo_dir(ref) / "repo.json").read_text())
        except FileNotFoundError:
            raise StorageError(404, "RepoNotFound", f"Repository {ref.repo_id} not found") from None

    def create_repo(self, ref: RepoRef, *, private: bool, author: str) -> bool:
        """Create with an initial commit holding .gitattributes (as the Hub does); False if it exists."""
        for part in ref.repo_id.split("/"):
            if not _NAME_RE.match(part) or ".." in part:
                raise StorageError(400, "BadRequest", f"invalid repo name {ref.repo_id!r}")
        with self._lock:
            if self.exists(ref):
                return False
            sha = self.put_bytes(GITATTRIBUTES)
            files = {".gitattributes": _entry_regular(GITATTRIBUTES, sha)}
            commit = self._write_commit(ref, parents=[], title="initial commit", message="", author=author, files=files)
            write_json_atomic(self.repo_dir(ref) / "refs.json", {"branches": {"main": commit}, "tags": {}})
            write_json_atomic(self.repo_dir(ref) / "repo.json", {"private": private, "created": _now()})
            return True

    def delete_repo(self, ref: RepoRef) -> None:
        import shutil

        with self._lock:
            self.repo_meta(ref)
            shutil.rmtree(self.repo_dir(ref))

    def set_private(self, ref: RepoRef, private: bool) -> None:
        with self._lock:
            meta = self.repo_meta(ref)
            meta["private"] = private
            write_json_atomic(self.repo_dir(ref) / "repo.json", meta)

    # ------------------------------------------------------------------ refs
    def refs(self, ref: RepoRef) -> dict[str, dict[str, str]]:
        self.repo_meta(ref)
        return json.loads((self.repo_dir(ref) / "refs.json").read_text())

    def resolve(self, ref: RepoRef, revision: str) -> str:
        """Branch, tag or full commit id -> commit id."""
        refs = self.refs(ref)
        for kind in ("branches", "tags"):
            if revision in refs.get(kind, {}):
                return refs[kind][revision]
        if _SHA1_RE.match(revision) and (self.repo_dir(ref) / "commits" / f"{revision}.json").is_file():
            return revision
        raise StorageError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def create_branch(self, ref: RepoRef, branch: str, starting_point: str | None) -> None:
        if not branch or branch.startswith(("/", "refs/")) or ".." in branch or branch.endswith("/"):
            raise StorageError(400, "BadRequest", f"invalid branch name {branch!r}")
        with self._lock:
            refs = self.refs(ref)
            if branch in refs["branches"]:
                raise StorageError(409, "Conflict", f"Reference already exists: refs/heads/{branch}")
            refs["branches"][branch] = self.resolve(ref, starting_point or "main")
            write_json_atomic(self.repo_dir(ref) / "refs.json", refs)

    def create_tag(self, ref: RepoRef, tag: str, revision: str) -> None:
        if not tag or tag.startswith(("/", "refs/")) or ".." in tag:
            raise StorageError(400, "BadRequest", f"invalid tag name {tag!r}")
        with self._lock:
            refs = self.refs(ref)
            if tag in refs.setdefault("tags", {}):
                raise StorageError(409, "Conflict", f"Reference already exists: refs/tags/{tag}")
            refs["tags"][tag] = self.resolve(ref, revision)
            write_json_atomic(self.repo_dir(ref) / "refs.json", refs)

    def delete_branch(self, ref: RepoRef, branch: str) -> None:
        with self._lock:
            refs = self.refs(ref)
            if branch not in refs["branches"] or branch == "main":
                raise StorageError(404 if branch != "main" else 403, "RevisionNotFound", f"cannot delete {branch}")
            del refs["branches"][branch]
            write_json_atomic(self.repo_dir(ref) / "refs.json", refs)

    # ------------------------------------------------------------------ commits
    def commit(self, ref: RepoRef, commit_id: str) -> dict[str, Any]:
        return json.loads((self.repo_dir(ref) / "commits" / f"{commit_id}.json").read_text())

    def files_at(self, ref: RepoRef, revision: str) -> tuple[str, dict[str, dict[str, Any]]]:
        commit_id = self.resolve(ref, revision)
        return commit_id, self.commit(ref, commit_id)["files"]

    def history(self, ref: RepoRef, revision: str) -> list[dict[str, Any]]:
        out = []
        commit_id: str | None = self.resolve(ref, revision)
        while commit_id:
            data = self.commit(ref, commit_id)
            out.append({"id": commit_id, **data})
            commit_id = data["parents"][0] if data["parents"] else None
        return out

    def apply_commit(
        self,
        ref: RepoRef,
        branch: str,
        *,
        title: str,
        message: str,
        author: str,
        parent: str | None,
        operations: list[dict[str, Any]],
    ) -> str:
        """Apply add/delete operations on top of BRANCH's head; 412 if `parent` is stale."""
        with self._lock:
            refs = self.refs(ref)
            if branch not in refs["branches"]:
                raise StorageError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            head = refs["branches"][branch]
            if parent and parent != head:
                raise StorageError(412, "PreconditionFailed", f"A commit has happened since {parent}; head is {head}")
            files = dict(self.commit(ref, head)["files"])
            for op in operations:
                self._apply(files, op)
            commit_id = self._write_commit(ref, parents=[head], title=title, message=message, author=author, files=files)
            refs["branches"][branch] = commit_id
            write_json_atomic(self.repo_dir(ref) / "refs.json", refs)
            return commit_id

    def _apply(self, files: dict[str, dict[str, Any]], op: dict[str, Any]) -> None:
        key, value = op["key"], op["value"]
        path = str(value.get("path", "")).strip("/")
        if not path or ".." in path.split("/"):
            raise StorageError(400, "BadRequest", f"invalid path {path!r}")
        if key == "file":
            import base64

            data = base64.b64decode(value["content"]) if value.get("encoding", "base64") == "base64" else value["content"].encode()
            files[path] = _entry_regular(data, self.put_bytes(data))
        elif key == "lfsFile":
            oid, size = value["oid"], int(value["size"])
            xet_hash = None
            if not self.has_blob(oid):
                found = self.xet.lookup(oid)
                if found is None:
                    raise StorageError(
                        400, "BadRequest",
                        f"LFS object {oid} for {path} was never uploaded (no LFS upload, and no hf-xet shard under "
                        f"{self.xet.cas_dir} records it: if this was a Xet upload, this hf-xet's local CAS layout "
                        "is not the one xet.py reads)",
                    )
                xet_hash, size = found
            files[path] = {"size": size, "sha256": oid, "lfs": True, "xet": xet_hash, "oid": git_blob_sha1(lfs_pointer(oid, size))}
        elif key == "deletedFile":
            if path not in files:
                raise StorageError(404, "EntryNotFound", f"cannot delete {path}: no such file")
            del files[path]
        elif key == "deletedFolder":
            for name in [p for p in files if p.startswith(path + "/")]:
                del files[name]
        else:
            raise StorageError(400, "BadRequest", f"unsupported commit operation {key!r}")

    def _write_commit(self, ref: RepoRef, *, parents: list[str], title: str, message: str, author: str, files: dict) -> str:
        body = {"parents": parents, "title": title, "message": message, "author": author, "date": _now(), "files": files}
        commit_id = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
        write_json_atomic(self.repo_dir(ref) / "commits" / f"{commit_id}.json", body)
        return commit_id


def _entry_regular(data: bytes, sha256: str) -> dict[str, Any]:
    return {"size": len(data), "sha256": sha256, "lfs": False, "xet": None, "oid": git_blob_sha1(data)}


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _iter_stream(stream: BinaryIO, length: int | None, bufsize: int = 1 << 20):
    """Chunks of a request body of known length (chunked bodies are de-chunked by the handler)."""
    if length is None:
        while True:
            chunk = stream.read(bufsize)
            if not chunk:
                return
            yield chunk
    remaining = length
    while remaining > 0:
        chunk = stream.read(min(bufsize, remaining))
        if not chunk:
            raise StorageError(400, "BadRequest", "request body ended early")
        remaining -= len(chunk)
        yield chunk
