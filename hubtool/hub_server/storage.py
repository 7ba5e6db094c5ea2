"""Repos on disk for the local Hub: a content-addressed blob store plus JSON commits and refs.

Layout under the root:
    blobs/ab/<sha256>                      file contents (LFS uploads, regular files, Xet reads)
    xet-cas/stores/<id>/                   hf-xet's file-backed CAS, one per repo (see xet.py)
    repos/<type>/<ns>/<name>/repo.json     {private, created, xet_store}
    repos/<type>/<ns>/<name>/objects.json  {sha256: [...]}: the LFS/Xet objects this repo owns
    repos/<type>/<ns>/<name>/refs.json     {branches, tags: {name: commit id}, prs: {N: commit id}}
    repos/<type>/<ns>/<name>/commits/<id>.json   {parents, title, message, date, author, files}
    repos/<type>/<ns>/<name>/discussions.json    discussions and pull requests, with events
Every JSON write goes to a temp file and is renamed into place, so a killed server never
leaves a half-written repo (leftover temp files are removed at the next start). One lock
serialises ref updates (commits are small). Names reach the disk only through validate.py and
`validate.under`, which refuses any path resolving outside the root.

Objects are content-addressed and shared on disk, but *owned* per repo, as on the Hub: a commit
may name an LFS/Xet object only if it was uploaded to that repo (its bytes sent there, or written
by hf-xet into that repo's store) or a commit of that repo already holds it. Knowing a sha256 is
not enough to claim another repo's (private) bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from hubtool.hub_server import validate
from hubtool.hub_server.errors import StorageError
from hubtool.hub_server.validate import PR_REF_RE, REPO_TYPES
from hubtool.hub_server.xet import XetStore

__all__ = ["REPO_TYPES", "RepoRef", "Storage", "StorageError", "git_blob_sha1", "lfs_pointer", "wants_lfs"]
# Temp files older than this at start-up are leftovers of a killed server or an abandoned upload.
STALE_TEMP_SECONDS = 300
_TEMP_PREFIXES = (".upload-", ".in-")
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
    """A repo address: type ('model'|'dataset'|'space') and 'ns/name', validated on creation."""

    type: str
    repo_id: str

    def __post_init__(self) -> None:
        validate.repo_type(self.type)
        validate.repo_id(self.repo_id)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/", 1)[0]


class Storage:
    """All repos under one root directory; every path it touches is checked to stay under it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()
        self.blob_dir = self.root / "blobs"
        self._own_readers = _readers_dir_beside(self.root)
        self.xet = XetStore(self.root / "xet-cas", self._own_readers / "xet-readers" if self._own_readers else None)
        self._lock = threading.RLock()
        # Replicas of a previous run (under the root, or this run's own temp folder) serve no token now.
        shutil.rmtree(self.root / "xet-readers", ignore_errors=True)
        self.removed_temp_files = self.clean_stale_temp_files(older_than=0)

    def close(self) -> None:
        """Remove this server's reader replicas (and their temp folder); repos are untouched."""
        self.xet.remove_all_replicas()
        if self._own_readers is not None:
            shutil.rmtree(self._own_readers, ignore_errors=True)

    def clean_stale_temp_files(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Delete temp files (interrupted uploads, half-written JSON) untouched for `older_than` seconds.

        At start every one goes (older_than=0): the root lock (see root_lock.py) means no other
        server is writing here, so any temp file is a leftover of an interrupted upload.
        """
        cutoff = time.time() - older_than
        removed = 0
        for folder in (self.blob_dir, self.root / "repos"):
            if not folder.is_dir():
                continue
            for dirpath, _dirs, names in os.walk(folder):
                for name in names:
                    if not (name.startswith(_TEMP_PREFIXES) or (name.startswith(".") and ".json." in name) or ".tmp-" in name):
                        continue
                    path = Path(dirpath) / name
                    try:
                        if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                            path.unlink()
                            removed += 1
                    except OSError:
                        continue
        return removed

    # ------------------------------------------------------------------ blobs
    def blob_path(self, sha256: str) -> Path:
        validate.oid(sha256)
        return validate.under(self.blob_dir, sha256[:2], sha256)

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def blob_size(self, sha256: str) -> int | None:
        """Size of a stored object (LFS blob or Xet file), None if this server never received it."""
        path = self.blob_path(sha256)
        if path.is_file():
            return path.stat().st_size
        found = self.xet.lookup(sha256)
        return found[1] if found else None

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha):
            dest = self.blob_path(sha)
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".in-", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return sha

    def put_stream(self, expected_sha256: str, stream: BinaryIO, length: int | None, max_size: int | None = None) -> int:
        """Store an LFS upload, verifying its sha256 before it becomes visible; returns the size.

        The temp file is removed on every failure (bad hash, short body, timeout, dropped client).
        """
        dest = self.blob_path(expected_sha256)
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
                    if max_size is not None and size > max_size:
                        raise StorageError(413, "PayloadTooLarge", f"upload larger than {max_size} bytes")
            if digest.hexdigest() != expected_sha256:
                raise StorageError(400, "BadRequest", f"uploaded content does not match sha256 {expected_sha256}")
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
            self.xet.materialize(entry["sha256"], entry["xet"], entry["size"], path)
        return path

    # ------------------------------------------------------------------ repos
    def repo_dir(self, ref: RepoRef) -> Path:
        ns, name = ref.repo_id.split("/")
        return validate.under(self.root, "repos", ref.type, ns, name)

    def canonical(self, ref: RepoRef) -> RepoRef:
        """REF spelled as the stored repo is, when one matches it case-insensitively (else REF).

        Repo names are case-insensitive on the Hub: `acme/CaseRepo` and `acme/caserepo` are one repo.
        """
        if (self.repo_dir(ref) / "repo.json").is_file():
            return ref
        ns, name = ref.repo_id.split("/")
        base = self.root / "repos" / ref.type
        for ns_dir in _case_matches(base, ns):
            for name_dir in _case_matches(ns_dir, name):
                if (name_dir / "repo.json").is_file():
                    return RepoRef(ref.type, f"{ns_dir.name}/{name_dir.name}")
        return ref

    def exists(self, ref: RepoRef) -> bool:
        return (self.repo_dir(ref) / "repo.json").is_file()

    def repo_meta(self, ref: RepoRef) -> dict[str, Any]:
        try:
            return json.loads((self.repo_dir(ref) / "repo.json").read_text())
        except FileNotFoundError:
            raise StorageError(404, "RepoNotFound", f"Repository {ref.repo_id} not found") from None

    def list_repos(self, repo_type: str) -> list[tuple[RepoRef, dict[str, Any]]]:
        """Every repo of a type with its metadata, sorted by id."""
        base = self.root / "repos" / validate.repo_type(repo_type)
        out = []
        for meta_file in sorted(base.glob("*/*/repo.json")):
            try:
                ref = RepoRef(repo_type, f"{meta_file.parent.parent.name}/{meta_file.parent.name}")
                out.append((ref, json.loads(meta_file.read_text())))
            except (StorageError, OSError, ValueError):
                continue
        return out

    # ------------------------------------------------------------------ object ownership
    def xet_store_id(self, ref: RepoRef) -> str:
        """The repo's own Xet store id (made on first use; repos of older servers get one then)."""
        with self._lock:
            meta = self.repo_meta(ref)
            if not meta.get("xet_store"):
                meta["xet_store"] = secrets.token_hex(16)
                write_json_atomic(self.repo_dir(ref) / "repo.json", meta)
            return str(meta["xet_store"])

    def owned(self, ref: RepoRef) -> set[str]:
        """sha256 of every object this repo owns: uploaded to it, or held by one of its commits."""
        path = self.repo_dir(ref) / "objects.json"
        try:
            return set(json.loads(path.read_text())["sha256"])
        except FileNotFoundError:
            pass
        with self._lock:  # a repo of an older server: what its commits hold is its own
            found: set[str] = set()
            for commit_file in (self.repo_dir(ref) / "commits").glob("*.json"):
                try:
                    found |= {e["sha256"] for e in json.loads(commit_file.read_text())["files"].values()}
                except (OSError, ValueError, KeyError, TypeError):
                    continue
            write_json_atomic(path, {"sha256": sorted(found)})
            return found

    def own(self, ref: RepoRef, oids: set[str]) -> None:
        """Record OIDS as owned by REF (their bytes were sent to it)."""
        with self._lock:
            have = self.owned(ref)
            if not set(oids) <= have:
                write_json_atomic(self.repo_dir(ref) / "objects.json", {"sha256": sorted(have | set(oids))})

    def owns(self, ref: RepoRef, sha256: str) -> bool:
        return sha256 in self.owned(ref)

    def create_repo(self, ref: RepoRef, *, private: bool, author: str) -> bool:
        """Create with an initial commit holding .gitattributes (as the Hub does); False if it exists."""
        with self._lock:
            if self.exists(ref):
                return False
            sha = self.put_bytes(GITATTRIBUTES)
            files = {".gitattributes": _entry_regular(GITATTRIBUTES, sha)}
            commit = self._write_commit(ref, parents=[], title="initial commit", message="", author=author, files=files)
            write_json_atomic(self.repo_dir(ref) / "refs.json", {"branches": {"main": commit}, "tags": {}, "prs": {}})
            write_json_atomic(self.repo_dir(ref) / "objects.json", {"sha256": [sha]})
            write_json_atomic(self.repo_dir(ref) / "repo.json", {"private": private, "created": _now(), "xet_store": secrets.token_hex(16)})
            return True

    def delete_repo(self, ref: RepoRef) -> None:
        with self._lock:
            store = self.repo_meta(ref).get("xet_store")
            shutil.rmtree(self.repo_dir(ref))
            if store:
                self.xet.drop_store(str(store))

    def move_repo(self, src: RepoRef, dst: RepoRef) -> None:
        """Rename/transfer a repo (same type); 409 if the destination exists."""
        if src.type != dst.type:
            raise StorageError(400, "BadRequest", "a repo cannot change type when moved")
        with self._lock:
            self.repo_meta(src)
            if self.exists(dst):
                raise StorageError(409, "Conflict", f"Repository {dst.repo_id} already exists")
            target = self.repo_dir(dst)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.repo_dir(src), target)

    def set_private(self, ref: RepoRef, private: bool) -> None:
        with self._lock:
            meta = self.repo_meta(ref)
            meta["private"] = private
            write_json_atomic(self.repo_dir(ref) / "repo.json", meta)

    # ------------------------------------------------------------------ refs
    def refs(self, ref: RepoRef) -> dict[str, dict[str, str]]:
        self.repo_meta(ref)
        refs = json.loads((self.repo_dir(ref) / "refs.json").read_text())
        refs.setdefault("tags", {})
        refs.setdefault("prs", {})
        return refs

    def _write_refs(self, ref: RepoRef, refs: dict[str, Any]) -> None:
        write_json_atomic(self.repo_dir(ref) / "refs.json", refs)

    def resolve(self, ref: RepoRef, revision: str) -> str:
        """Branch, tag, refs/pr/N or full commit id -> commit id."""
        refs = self.refs(ref)
        for kind in ("branches", "tags"):
            if revision in refs.get(kind, {}):
                return refs[kind][revision]
        pr = PR_REF_RE.fullmatch(revision)
        if pr and pr.group(1) in refs["prs"]:
            return refs["prs"][pr.group(1)]
        if validate.is_commit_id(revision) and (self.repo_dir(ref) / "commits" / f"{revision}.json").is_file():
            return revision
        raise StorageError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def create_branch(self, ref: RepoRef, branch: str, starting_point: str | None) -> None:
        validate.ref_name(branch, "branch")
        with self._lock:
            refs = self.refs(ref)
            if branch in refs["branches"]:
                raise StorageError(409, "Conflict", f"Reference already exists: refs/heads/{branch}")
            refs["branches"][branch] = self.resolve(ref, starting_point or "main")
            self._write_refs(ref, refs)

    def create_tag(self, ref: RepoRef, tag: str, revision: str) -> None:
        validate.ref_name(tag, "tag")
        with self._lock:
            refs = self.refs(ref)
            if tag in refs["tags"]:
                raise StorageError(409, "Conflict", f"Reference already exists: refs/tags/{tag}")
            refs["tags"][tag] = self.resolve(ref, revision)
            self._write_refs(ref, refs)

    def delete_tag(self, ref: RepoRef, tag: str) -> None:
        with self._lock:
            refs = self.refs(ref)
            if tag not in refs["tags"]:
                raise StorageError(404, "RevisionNotFound", f"Invalid rev id: {tag}")
            del refs["tags"][tag]
            self._write_refs(ref, refs)

    def delete_branch(self, ref: RepoRef, branch: str) -> None:
        with self._lock:
            refs = self.refs(ref)
            if branch == "main":
                raise StorageError(403, "Forbidden", "the default branch 'main' cannot be deleted")
            if branch not in refs["branches"]:
                raise StorageError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            del refs["branches"][branch]
            self._write_refs(ref, refs)

    def _head(self, refs: dict[str, Any], revision: str) -> tuple[str, str]:
        """(kind, key) of a writable ref: a branch or an open PR's refs/pr/N; 404 otherwise."""
        if revision in refs["branches"]:
            return "branches", revision
        pr = PR_REF_RE.fullmatch(revision)
        if pr and pr.group(1) in refs["prs"]:
            return "prs", pr.group(1)
        raise StorageError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    # ------------------------------------------------------------------ commits
    def commit(self, ref: RepoRef, commit_id: str) -> dict[str, Any]:
        if not validate.is_commit_id(commit_id):
            raise StorageError(404, "RevisionNotFound", f"Invalid rev id: {commit_id}")
        try:
            return json.loads((self.repo_dir(ref) / "commits" / f"{commit_id}.json").read_text())
        except FileNotFoundError:
            raise StorageError(404, "RevisionNotFound", f"Invalid rev id: {commit_id}") from None

    def files_at(self, ref: RepoRef, revision: str) -> tuple[str, dict[str, dict[str, Any]]]:
        commit_id = self.resolve(ref, revision)
        return commit_id, self.commit(ref, commit_id)["files"]

    def history(self, ref: RepoRef, revision: str) -> list[dict[str, Any]]:
        """Commits reachable by first parents, newest first."""
        out = []
        commit_id: str | None = self.resolve(ref, revision)
        while commit_id:
            data = self.commit(ref, commit_id)
            out.append({"id": commit_id, **data})
            commit_id = data["parents"][0] if data["parents"] else None
        return out

    def last_commits(self, ref: RepoRef, revision: str, paths: list[str]) -> dict[str, dict[str, str]]:
        """path (file or folder) -> {id, title, date} of the newest commit that changed it."""
        history = self.history(ref, revision)
        out: dict[str, dict[str, str]] = {}
        for i, commit in enumerate(history):
            older = history[i + 1]["files"] if i + 1 < len(history) else {}
            changed = {p for p in set(commit["files"]) | set(older) if commit["files"].get(p) != older.get(p)}
            for path in paths:
                if path in out:
                    continue
                if path in changed or any(c.startswith(path + "/") for c in changed):
                    out[path] = {"id": commit["id"], "title": commit["title"], "date": commit["date"]}
            if len(out) == len(paths):
                break
        return out

    def apply_commit(
        self,
        ref: RepoRef,
        revision: str,
        *,
        title: str,
        message: str,
        author: str,
        parent: str | None,
        operations: list[dict[str, Any]],
        create_pr: bool = False,
    ) -> tuple[str, int | None]:
        """Apply operations on top of REVISION (a branch or refs/pr/N); 412 if `parent` is stale.

        With `create_pr`, the commit goes to a new pull request against REVISION (from `parent`
        when given) instead; returns (commit id, PR number or None).
        """
        with self._lock:
            refs = self.refs(ref)
            kind, key = self._head(refs, revision)
            head = refs[kind][key]
            if create_pr:
                if kind != "branches":
                    raise StorageError(400, "BadRequest", "a pull request can only target a branch")
                base_commit = self.resolve(ref, parent) if parent else head
            else:
                if parent and parent != head:
                    raise StorageError(412, "PreconditionFailed", f"A commit has happened since {parent}; head is {head}")
                base_commit = head
            files = dict(self.commit(ref, base_commit)["files"])
            owned = self.owned(ref)
            store = self.xet_store_id(ref)
            for op in operations:
                self._apply(files, op, owned, store)
            self.own(ref, {e["sha256"] for e in files.values()})
            commit_id = self._write_commit(ref, parents=[base_commit], title=title, message=message, author=author, files=files)
            if create_pr:
                num = self._new_discussion(ref, refs, title=title, description=message, author=author,
                                           pull_request=True, base=key, start=base_commit)
                refs["prs"][str(num)] = commit_id
                self._add_event(ref, num, "commit", author, {"subject": title, "oid": commit_id})
                self._write_refs(ref, refs)
                return commit_id, num
            if kind == "prs":
                self._add_event(ref, int(key), "commit", author, {"subject": title, "oid": commit_id})
            refs[kind][key] = commit_id
            self._write_refs(ref, refs)
            return commit_id, None

    def squash(self, ref: RepoRef, branch: str, message: str, author: str) -> str:
        """Replace BRANCH's history with one parentless commit holding its current files."""
        with self._lock:
            refs = self.refs(ref)
            if branch not in refs["branches"]:
                raise StorageError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            files = self.commit(ref, refs["branches"][branch])["files"]
            commit_id = self._write_commit(ref, parents=[], title=message, message="", author=author, files=files)
            refs["branches"][branch] = commit_id
            self._write_refs(ref, refs)
            return commit_id

    def _apply(self, files: dict[str, dict[str, Any]], op: Any, owned: set[str], store: str) -> None:
        if not isinstance(op, dict) or not isinstance(op.get("value"), dict):
            raise StorageError(400, "BadRequest", "each commit operation must be an object {key, value}")
        key, value = op.get("key"), op["value"]
        if key == "deletedFolder":
            path = validate.file_path(str(value.get("path", "")).rstrip("/"))
        else:
            path = validate.file_path(value.get("path"))
        if key == "file":
            content = value.get("content")
            if not isinstance(content, str):
                raise StorageError(400, "BadRequest", f"file {path}: 'content' must be a string")
            encoding = value.get("encoding", "base64")
            if encoding == "base64":
                try:
                    data = base64.b64decode(content, validate=True)
                except (binascii.Error, ValueError):
                    raise StorageError(400, "BadRequest", f"file {path}: content is not valid base64") from None
            elif encoding in ("utf-8", "utf8"):
                data = content.encode()
            else:
                raise StorageError(400, "BadRequest", f"file {path}: unsupported encoding {str(encoding)[:40]!r}")
            files[path] = _entry_regular(data, self.put_bytes(data))
        elif key == "lfsFile":
            oid = validate.oid(value.get("oid"))
            if value.get("algo", "sha256") != "sha256":
                raise StorageError(400, "BadRequest", f"{path}: only sha256 LFS objects are supported")
            # Only objects this repo owns: uploaded to it (LFS PUT, or hf-xet into its store) or already in it.
            xet_file = self.xet.lookup(oid, store) or (self.xet.lookup(oid, "") if oid in owned else None)
            if oid not in owned and xet_file is None:
                raise StorageError(
                    400, "BadRequest",
                    f"LFS object {oid} for {path} was never uploaded to this repo (no LFS upload here, and no hf-xet "
                    "shard in this repo's Xet store records it: if this was a Xet upload, this hf-xet's local CAS "
                    "layout is not the one xet.py reads)",
                )
            earlier = next((e for e in files.values() if e.get("sha256") == oid and e.get("lfs")), None)
            if self.has_blob(oid):
                known = self.blob_path(oid).stat().st_size
            elif xet_file is not None:
                known = xet_file.size
            elif earlier is not None:
                known = int(earlier["size"])
            else:
                raise StorageError(400, "BadRequest", f"LFS object {oid} for {path} is missing from the store")
            xet_hash = xet_file.xet_hash if xet_file is not None else (earlier.get("xet") if earlier else None)
            # A copy of an LFS file names only the oid: the size is the stored object's.
            if "size" in value and validate.size(value["size"], f"{path}: size") != known:
                raise StorageError(400, "BadRequest", f"{path}: size {value['size']} does not match LFS object {oid} ({known} bytes)")
            files[path] = {"size": known, "sha256": oid, "lfs": True, "xet": xet_hash, "oid": git_blob_sha1(lfs_pointer(oid, known))}
        elif key == "deletedFile":
            if path not in files:
                raise StorageError(404, "EntryNotFound", f"cannot delete {path}: A file with this name doesn't exist")
            del files[path]
        elif key == "deletedFolder":
            for name in [p for p in files if p.startswith(path + "/")]:
                del files[name]
        else:
            raise StorageError(400, "BadRequest", f"unsupported commit operation {str(key)[:40]!r}")

    def _write_commit(self, ref: RepoRef, *, parents: list[str], title: str, message: str, author: str, files: dict) -> str:
        body = {"parents": parents, "title": title, "message": message, "author": author, "date": _now(), "files": files}
        commit_id = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
        write_json_atomic(self.repo_dir(ref) / "commits" / f"{commit_id}.json", body)
        return commit_id

    # ------------------------------------------------------------------ discussions and pull requests
    def discussions(self, ref: RepoRef) -> list[dict[str, Any]]:
        self.repo_meta(ref)
        try:
            return json.loads((self.repo_dir(ref) / "discussions.json").read_text())
        except FileNotFoundError:
            return []

    def discussion(self, ref: RepoRef, num: int) -> dict[str, Any]:
        for item in self.discussions(ref):
            if item["num"] == num:
                return item
        raise StorageError(404, "DiscussionNotFound", f"Discussion #{num} not found on {ref.repo_id}")

    def _save_discussions(self, ref: RepoRef, items: list[dict[str, Any]]) -> None:
        write_json_atomic(self.repo_dir(ref) / "discussions.json", items)

    def create_discussion(self, ref: RepoRef, *, title: str, description: str, author: str, pull_request: bool) -> int:
        """A discussion, or a pull request whose refs/pr/N starts at main's head (as on the Hub)."""
        with self._lock:
            refs = self.refs(ref)
            head = refs["branches"]["main"]
            num = self._new_discussion(ref, refs, title=title, description=description, author=author,
                                       pull_request=pull_request, base="main", start=head)
            if pull_request:
                refs["prs"][str(num)] = head
                self._write_refs(ref, refs)
            return num

    def _new_discussion(self, ref: RepoRef, refs: dict[str, Any], *, title: str, description: str, author: str,
                        pull_request: bool, base: str, start: str) -> int:
        items = self.discussions(ref)
        num = max((d["num"] for d in items), default=0) + 1
        now = _now()
        items.append({
            "num": num, "title": title.strip() or f"#{num}", "isPullRequest": pull_request, "status": "open",
            "author": author, "createdAt": now, "base": base if pull_request else None, "start": start if pull_request else None,
            "mergeCommitId": None,
            "events": [{"id": f"{num:08x}{0:08x}", "type": "comment", "author": author, "createdAt": now,
                        "data": {"edited": False, "hidden": False, "latest": {"raw": description}}}],
        })
        self._save_discussions(ref, items)
        return num

    def _add_event(self, ref: RepoRef, num: int, kind: str, author: str, data: dict[str, Any]) -> dict[str, Any]:
        items = self.discussions(ref)
        event: dict[str, Any] = {}
        for item in items:
            if item["num"] == num:
                event = {"id": f"{num:08x}{len(item['events']):08x}", "type": kind, "author": author, "createdAt": _now(), "data": data}
                item["events"].append(event)
        self._save_discussions(ref, items)
        return event

    def change_status(self, ref: RepoRef, num: int, status: str, author: str) -> dict[str, Any]:
        """Open or close a discussion/PR; returns the status-change event."""
        if status not in ("open", "closed"):
            raise StorageError(400, "BadRequest", f"invalid status {str(status)[:20]!r}: open or closed")
        with self._lock:
            items = self.discussions(ref)
            item = next((d for d in items if d["num"] == num), None)
            if item is None:
                raise StorageError(404, "DiscussionNotFound", f"Discussion #{num} not found on {ref.repo_id}")
            if item["status"] == "merged":
                raise StorageError(400, "BadRequest", f"#{num} is merged; its status cannot change")
            item["status"] = status
            self._save_discussions(ref, items)
            return self._add_event(ref, num, "status-change", author, {"status": status})

    def merge_pull_request(self, ref: RepoRef, num: int, author: str, comment: str | None = None) -> str:
        """Merge refs/pr/NUM into its base branch with a merge commit; 409 naming conflicting files."""
        with self._lock:
            item = self.discussion(ref, num)
            if not item["isPullRequest"]:
                raise StorageError(400, "BadRequest", f"#{num} is a discussion, not a pull request")
            if item["status"] != "open":
                raise StorageError(400, "BadRequest", f"pull request #{num} is {item['status']}, not open")
            refs = self.refs(ref)
            if item["base"] not in refs["branches"]:
                raise StorageError(404, "RevisionNotFound", f"Invalid rev id: {item['base']}")
            pr_head = refs["prs"][str(num)]
            base_head = refs["branches"][item["base"]]
            start = self.commit(ref, item["start"])["files"]
            ours = self.commit(ref, base_head)["files"]
            theirs = self.commit(ref, pr_head)["files"]
            merged = dict(ours)
            conflicts = []
            for path in sorted(set(start) | set(theirs)):
                if theirs.get(path) == start.get(path):
                    continue  # the PR did not touch it
                if ours.get(path) not in (start.get(path), theirs.get(path)):
                    conflicts.append(path)
                elif path in theirs:
                    merged[path] = theirs[path]
                else:
                    merged.pop(path, None)
            if conflicts:
                raise StorageError(409, "Conflict", f"pull request #{num} conflicts with {item['base']} on: {', '.join(conflicts[:20])}")
            commit_id = self._write_commit(ref, parents=[base_head, pr_head], title=f"Merge refs/pr/{num}: {item['title']}",
                                           message=comment or "", author=author, files=merged)
            refs["branches"][item["base"]] = commit_id
            self._write_refs(ref, refs)
            items = self.discussions(ref)
            for d in items:
                if d["num"] == num:
                    d["status"] = "merged"
                    d["mergeCommitId"] = commit_id
            self._save_discussions(ref, items)
            if comment:
                self._add_event(ref, num, "comment", author, {"edited": False, "hidden": False, "latest": {"raw": comment}})
            self._add_event(ref, num, "status-change", author, {"status": "merged"})
            return commit_id


def _case_matches(folder: Path, name: str) -> list[Path]:
    """Entries of FOLDER whose name equals NAME ignoring case (exact spelling first)."""
    try:
        found = [p for p in folder.iterdir() if p.name.lower() == name.lower() and not p.is_symlink()]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.name != name)


def _readers_dir_beside(root: Path) -> Path | None:
    """A private temp folder for Xet read replicas when it shares ROOT's filesystem (hard links work,
    and read tokens then name a temp path, not the root); None means ROOT/xet-readers."""
    try:
        tmp = Path(tempfile.gettempdir())
        if tmp.stat().st_dev != root.stat().st_dev:
            return None
        return Path(tempfile.mkdtemp(prefix="hubtool-hub-"))
    except OSError:
        return None


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
