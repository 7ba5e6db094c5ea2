"""HTTP endpoints of the local Hub, in the shapes huggingface_hub 2.4 expects (docs/hub-protocol.md).

Paths are split on '/' *before* unquoting, so a revision like `gptq%2F4bit` stays one segment.
Every request body is read in full before answering, even errors, so keep-alive connections
stay in sync with the client.
"""

from __future__ import annotations

import base64
import json
import re
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from hubtool.hub_server import web
from hubtool.hub_server.faults import DROP_CONNECTION
from hubtool.hub_server.storage import REPO_TYPES, RepoRef, StorageError, lfs_pointer, wants_lfs

if TYPE_CHECKING:
    from hubtool.hub_server import HubState

_TYPE_PLURALS = {f"{t}s": t for t in REPO_TYPES}
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_OPEN_USER = "local"


class _ChunkedReader:
    """File-like view of a `Transfer-Encoding: chunked` request body."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.left = 0
        self.done = False

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while not self.done and (n < 0 or len(out) < n):
            if self.left == 0:
                size_line = self.raw.readline().split(b";", 1)[0].strip()
                self.left = int(size_line or b"0", 16)
                if self.left == 0:
                    while self.raw.readline().strip():  # trailers, then the blank line
                        pass
                    self.done = True
                    break
            take = self.left if n < 0 else min(self.left, n - len(out))
            data = self.raw.read(take)
            if not data:
                raise StorageError(400, "BadRequest", "chunked body ended early")
            out += data
            self.left -= len(data)
            if self.left == 0:
                self.raw.readline()  # CRLF after each chunk
        return bytes(out)


class HubHandler(BaseHTTPRequestHandler):
    """One request; `self.server.hub` (HubState) holds storage, faults and auth."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK
    # add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    server_version = "hubtool-local-hub/0.1"
    hub: "HubState"

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.hub.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)

    def _dispatch(self) -> None:
        self.hub = self.server.hub  # type: ignore[attr-defined]
        self._body_stream: Any = None
        self._consumed = False
        split = urlsplit(self.path)
        self.raw_path, self.query = split.path, parse_qs(split.query)
        self.hub.record(self.command, self.raw_path)
        try:
            fault = self.hub.faults.take(self.command, self.raw_path)
            if fault is not None:
                self._drain()
                if fault.status == DROP_CONNECTION:
                    self.close_connection = True
                    self.connection.close()
                    return
                self._error(fault.status, "InjectedFault", f"injected fault {fault.status} for {self.raw_path}")
                return
            self._route()
        except StorageError as exc:
            self._drain()
            self._error(exc.status, exc.code, str(exc))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            self._drain()
            self._error(400, "BadRequest", f"malformed request: {exc.__class__.__name__}: {exc}")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a server bug: answer 500 (the client retries) and say why on stderr
            import traceback

            traceback.print_exc()
            self.close_connection = True
            try:
                self._error(500, "InternalError", f"{exc.__class__.__name__}: {exc}")
            except OSError:
                pass
        finally:
            if not self._consumed and not self.close_connection:
                try:
                    self._drain()
                except Exception:
                    self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch

    def _stream(self) -> Any:
        if self._body_stream is None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self._body_stream = _ChunkedReader(self.rfile)
                self._length: int | None = None
            else:
                self._body_stream = self.rfile
                self._length = int(self.headers.get("Content-Length") or 0)
        return self._body_stream

    def body(self) -> bytes:
        stream = self._stream()
        self._consumed = True
        return stream.read() if self._length is None else stream.read(self._length)

    def body_json(self) -> Any:
        raw = self.body()
        if not raw:
            return {}
        ctype = self.headers.get("Content-Type", "")
        if "application/x-www-form-urlencoded" in ctype:
            return {k: (v if len(v) > 1 or k in ("paths",) else v[0]) for k, v in parse_qs(raw.decode()).items()}
        return json.loads(raw)

    def _drain(self) -> None:
        if not self._consumed:
            stream = self._stream()
            self._consumed = True
            if self._length is None:
                while stream.read(1 << 20):
                    pass
            else:
                left = self._length
                while left > 0:
                    chunk = stream.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str, message: str, extra: dict[str, Any] | None = None) -> None:
        message = message.splitlines()[0] if message else code
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        self._json(status, {"error": message, **(extra or {})}, headers)

    # ------------------------------------------------------------------ auth
    def _user(self) -> tuple[str, list[str]] | None:
        """(name, orgs) of the caller; None when auth is on and the token is missing or unknown."""
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if self.hub.users is None:
            return (_OPEN_USER, [])
        if token and token in self.hub.users:
            return self.hub.users[token]
        return None

    def _require_write(self, ref: RepoRef) -> str:
        user = self._user()
        if user is None:
            raise StorageError(401, "Unauthorized", "Invalid credentials in Authorization header")
        name, orgs = user
        if self.hub.users is not None and ref.namespace not in (name, *orgs):
            raise StorageError(403, "Forbidden", f"You don't have the rights to write to {ref.repo_id}")
        return name

    def _require_read(self, ref: RepoRef) -> None:
        meta = self.hub.storage.repo_meta(ref)
        if meta.get("private") and self.hub.users is not None:
            user = self._user()
            if user is None or ref.namespace not in (user[0], *user[1]):
                status = 401 if user is None else 404
                raise StorageError(status, "RepoNotFound", f"Repository {ref.repo_id} not found")

    # ------------------------------------------------------------------ routing
    def _route(self) -> None:
        segs = [unquote(s) for s in self.raw_path.split("/")[1:]]
        method = self.command
        if segs[:1] == ["api"]:
            return self._route_api(method, segs[1:])
        if segs[:1] == ["_hubtool"]:
            return self._route_internal(method, segs[1:])
        if web.is_page(method, segs):  # the Hub's web pages (HTML), see hubtool/hub_server/web.py
            return web.serve_page(self, segs)
        repo_type = "model"
        if segs and segs[0] in _TYPE_PLURALS and len(segs) > 3:
            repo_type, segs = _TYPE_PLURALS[segs[0]], segs[1:]
        if len(segs) >= 6 and segs[1].endswith(".git") and segs[2:] == ["info", "lfs", "objects", "batch"]:
            return self.lfs_batch(RepoRef(repo_type, f"{segs[0]}/{segs[1][:-4]}"))
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            return self.resolve(RepoRef(repo_type, f"{segs[0]}/{segs[1]}"), segs[3], "/".join(segs[4:]))
        raise StorageError(404, "NotFound", f"no route for {method} {self.raw_path}")

    def _route_api(self, method: str, segs: list[str]) -> None:
        if segs == ["whoami-v2"]:
            return self.whoami()
        if segs == ["validate-yaml"]:
            self.body()
            return self._json(200, {"errors": [], "warnings": []})
        if segs == ["repos", "create"] and method == "POST":
            return self.create_repo()
        if segs == ["repos", "delete"] and method == "DELETE":
            return self.delete_repo()
        if len(segs) >= 3 and segs[0] in _TYPE_PLURALS:
            ref = RepoRef(_TYPE_PLURALS[segs[0]], f"{segs[1]}/{segs[2]}")
            rest = segs[3:]
            op = rest[0] if rest else ""
            rev = rest[1] if len(rest) > 1 else "main"
            if not rest or op == "revision":
                return self.repo_info(ref, rev)
            routes = {
                ("GET", "refs"): lambda: self.list_refs(ref),
                ("POST", "branch"): lambda: self.create_branch(ref, "/".join(rest[1:])),
                ("DELETE", "branch"): lambda: self.delete_branch(ref, "/".join(rest[1:])),
                ("POST", "tag"): lambda: self.create_tag(ref, rev),
                ("POST", "preupload"): lambda: self.preupload(ref, rev),
                ("POST", "commit"): lambda: self.commit(ref, rev),
                ("GET", "tree"): lambda: self.tree(ref, rev, "/".join(rest[2:])),
                ("POST", "paths-info"): lambda: self.paths_info(ref, rev),
                ("GET", "commits"): lambda: self.commits(ref, rev),
                ("GET", "xet-write-token"): lambda: self.xet_token(ref, rev, write=True),
                ("GET", "xet-read-token"): lambda: self.xet_token(ref, rev, write=False),
                ("PUT", "settings"): lambda: self.settings(ref),
            }
            handler = routes.get((method, op))
            if handler is not None:
                return handler()
        raise StorageError(404, "NotFound", f"no route for {method} {self.raw_path}")

    def _route_internal(self, method: str, segs: list[str]) -> None:
        if segs == ["faults"]:
            if method == "POST":
                spec = self.body_json()
                rule = self.hub.faults.add(spec["method"], spec["path_regex"], int(spec["status"]), int(spec.get("times", 1)))
                return self._json(200, rule.as_dict())
            if method == "DELETE":
                self.hub.faults.clear()
                return self._json(200, {"faults": []})
            return self._json(200, {"faults": self.hub.faults.snapshot()})
        if len(segs) >= 2 and segs[0] == "lfs":
            oid = segs[1]
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                raise StorageError(400, "BadRequest", f"bad oid {oid!r}")
            if len(segs) == 2 and method == "PUT":
                self._stream()
                self._consumed = True
                size = self.hub.storage.put_stream(oid, self._body_stream, self._length)
                return self._json(200, {"oid": oid, "size": size})
            if segs[2:] == ["verify"] and method == "POST":
                self.body()
                if not self.hub.storage.has_blob(oid):
                    raise StorageError(404, "EntryNotFound", f"LFS object {oid} not found")
                return self._json(200, {"oid": oid})
        raise StorageError(404, "NotFound", f"no route for {method} {self.raw_path}")

    # ------------------------------------------------------------------ repos
    def _repo_url(self, ref: RepoRef) -> str:
        prefix = "" if ref.type == "model" else f"{ref.type}s/"
        return f"{self.hub.url}/{prefix}{ref.repo_id}"

    def whoami(self) -> None:
        user = self._user()
        if user is None:
            raise StorageError(401, "Unauthorized", "Invalid credentials in Authorization header")
        name, orgs = user
        self._json(200, {
            "type": "user", "name": name, "fullname": name,
            "orgs": [{"type": "org", "name": o} for o in orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
        })

    def create_repo(self) -> None:
        spec = self.body_json()
        repo_type = spec.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise StorageError(400, "BadRequest", f"unknown repo type {repo_type!r}")
        user = self._user()
        namespace = spec.get("organization") or (user[0] if user else _OPEN_USER)
        ref = RepoRef(repo_type, f"{namespace}/{spec['name']}")
        author = self._require_write(ref)
        private = bool(spec.get("private")) or spec.get("visibility") == "private"
        if not self.hub.storage.create_repo(ref, private=private, author=author):
            return self._error(409, "Conflict", "You already created this model repo", {"url": self._repo_url(ref)})
        self._json(200, {"url": self._repo_url(ref), "name": ref.repo_id, "id": ref.repo_id})

    def delete_repo(self) -> None:
        spec = self.body_json()
        ref = RepoRef(spec.get("type") or "model", f"{spec.get('organization') or _OPEN_USER}/{spec['name']}")
        self._require_write(ref)
        self.hub.storage.delete_repo(ref)
        self._json(200, {})

    def settings(self, ref: RepoRef) -> None:
        spec = self.body_json()
        self._require_write(ref)
        if "private" in spec:
            self.hub.storage.set_private(ref, bool(spec["private"]))
        self._json(200, {})

    def repo_info(self, ref: RepoRef, rev: str) -> None:
        self._require_read(ref)
        meta = self.hub.storage.repo_meta(ref)
        commit_id, files = self.hub.storage.files_at(ref, rev)
        commit = self.hub.storage.commit(ref, commit_id)
        siblings = []
        for path, entry in sorted(files.items()):
            sib: dict[str, Any] = {"rfilename": path, "size": entry["size"], "blobId": entry["oid"]}
            if entry["lfs"]:
                sib["lfs"] = {"size": entry["size"], "sha256": entry["sha256"], "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
            siblings.append(sib)
        self._json(200, {
            "_id": ref.repo_id, "id": ref.repo_id, "modelId": ref.repo_id, "author": ref.namespace,
            "sha": commit_id, "lastModified": commit["date"], "createdAt": meta["created"],
            "private": bool(meta.get("private")), "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        })

    def list_refs(self, ref: RepoRef) -> None:
        self._require_read(ref)
        refs = self.hub.storage.refs(ref)
        self._json(200, {
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in sorted(refs["branches"].items())],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in sorted(refs.get("tags", {}).items())],
            "converts": [],
            "pullRequests": [],
        })

    def create_branch(self, ref: RepoRef, branch: str) -> None:
        spec = self.body_json()
        self._require_write(ref)
        self.hub.storage.create_branch(ref, branch, spec.get("startingPoint"))
        self._json(200, {})

    def create_tag(self, ref: RepoRef, rev: str) -> None:
        spec = self.body_json()
        self._require_write(ref)
        self.hub.storage.create_tag(ref, spec["tag"], rev)
        self._json(200, {})

    def delete_branch(self, ref: RepoRef, branch: str) -> None:
        self._require_write(ref)
        self.hub.storage.delete_branch(ref, branch)
        self._json(200, {})

    # ------------------------------------------------------------------ uploads
    def preupload(self, ref: RepoRef, rev: str) -> None:
        spec = self.body_json()
        self._require_write(ref)
        _, files = self.hub.storage.files_at(ref, rev)
        out = []
        for item in spec["files"]:
            sample = base64.b64decode(item.get("sample") or "")
            lfs = wants_lfs(item["path"], int(item["size"]), sample)
            existing = files.get(item["path"])
            oid = None
            if existing is not None and existing["lfs"] == lfs:
                oid = existing["sha256"] if lfs else existing["oid"]
            out.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": out, "commitOid": None})

    def lfs_batch(self, ref: RepoRef) -> None:
        spec = self.body_json()
        if spec.get("operation") == "upload":
            self._require_write(ref)
        else:
            self._require_read(ref)
        objects = []
        for obj in spec.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            base = f"{self.hub.url}/_hubtool/lfs/{oid}"
            if spec.get("operation") == "upload" and not self.hub.storage.has_blob(oid):
                item["actions"] = {"upload": {"href": base}, "verify": {"href": f"{base}/verify"}}
            elif spec.get("operation") == "download":
                item["actions"] = {"download": {"href": base}}
            objects.append(item)
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {"Content-Type": "application/vnd.git-lfs+json"})

    def commit(self, ref: RepoRef, rev: str) -> None:
        lines = [json.loads(line) for line in self.body().decode().splitlines() if line.strip()]
        author = self._require_write(ref)
        if not lines or lines[0].get("key") != "header":
            raise StorageError(400, "BadRequest", "commit payload must start with a header line")
        header = lines[0]["value"]
        commit_id = self.hub.storage.apply_commit(
            ref, rev, title=header.get("summary") or "", message=header.get("description") or "",
            author=author, parent=header.get("parentCommit"), operations=lines[1:],
        )
        prefix = "" if ref.type == "model" else f"{ref.type}s/"
        self._json(200, {
            "success": True, "commitOid": commit_id,
            "commitUrl": f"{self.hub.url}/{prefix}{ref.repo_id}/commit/{commit_id}", "pullRequestUrl": None,
        })

    def xet_token(self, ref: RepoRef, rev: str, *, write: bool) -> None:
        if write:
            self._require_write(ref)
            if rev != "None":
                self.hub.storage.resolve(ref, rev)
        else:
            self._require_read(ref)
        exp = int(time.time()) + 3600
        cas = self.hub.storage.xet.cas_url
        token = "local-xet-write" if write else "local-xet-read"
        self._json(200, {"casUrl": cas, "accessToken": token, "exp": exp}, {
            "X-Xet-Cas-Url": cas, "X-Xet-Access-Token": token, "X-Xet-Token-Expiration": str(exp),
        })

    # ------------------------------------------------------------------ reads
    def _entry_json(self, path: str, entry: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
        if entry["lfs"]:
            out["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
        if entry.get("xet"):
            out["xetHash"] = entry["xet"]
        return out

    def tree(self, ref: RepoRef, rev: str, path: str) -> None:
        self._require_read(ref)
        _, files = self.hub.storage.files_at(ref, rev)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            raise StorageError(404, "EntryNotFound", f"{path} does not exist on {rev}")
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for name in sorted(files):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            for depth in range(1, len(parts)):
                if depth == 1 or recursive:
                    dirs.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                out.append(self._entry_json(name, files[name]))
        out += [{"type": "directory", "path": d, "size": 0, "oid": "0" * 40} for d in sorted(dirs)]
        self._json(200, out)

    def paths_info(self, ref: RepoRef, rev: str) -> None:
        spec = self.body_json()
        self._require_read(ref)
        _, files = self.hub.storage.files_at(ref, rev)
        paths = spec.get("paths", [])
        paths = [paths] if isinstance(paths, str) else paths
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append(self._entry_json(path, files[path]))
            elif any(p.startswith(path + "/") for p in files):
                out.append({"type": "directory", "path": path, "size": 0, "oid": "0" * 40})
        self._json(200, out)

    def commits(self, ref: RepoRef, rev: str) -> None:
        self._require_read(ref)
        self._json(200, [
            {"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"], "authors": [{"user": c["author"]}]}
            for c in self.hub.storage.history(ref, rev)
        ])

    def resolve(self, ref: RepoRef, rev: str, path: str) -> None:
        self._require_read(ref)
        commit_id, files = self.hub.storage.files_at(ref, rev)
        entry = files.get(path)
        if entry is None:
            raise StorageError(404, "EntryNotFound", f"{path} does not exist on {rev}", )
        headers = {"X-Repo-Commit": commit_id, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
        if entry.get("xet"):
            headers["X-Xet-Hash"] = entry["xet"]
            headers["X-Xet-Refresh-Route"] = f"{self.hub.url}/api/{ref.type}s/{ref.repo_id}/xet-read-token/{commit_id}"
        size = entry["size"]
        if self.command == "HEAD":
            self.send_response(200)
            for key, value in {**headers, "Content-Length": str(size), "Content-Type": "application/octet-stream"}.items():
                self.send_header(key, value)
            self.end_headers()
            return
        blob = self.hub.storage.open_blob(entry)
        start, end, status = 0, size - 1, 200
        match = _RANGE_RE.match(self.headers.get("Range", "").strip())
        if match and size > 0:
            lo, hi = match.groups()
            if lo:
                start, end = int(lo), min(int(hi), size - 1) if hi else size - 1
            elif hi:
                start, end = max(size - int(hi), 0), size - 1
            if start >= size or start > end:
                return self._error(416, "RangeNotSatisfiable", f"range {self.headers['Range']} outside {size} bytes")
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(length), "Content-Type": "application/octet-stream"}.items():
            self.send_header(key, value)
        self.end_headers()
        with open(blob, "rb") as fh:
            fh.seek(start)
            left = length
            while left > 0:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
