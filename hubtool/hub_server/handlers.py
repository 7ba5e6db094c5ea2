"""HTTP endpoints of the local Hub, in the shapes huggingface_hub 2.4 expects (docs/hub-protocol.md).

Paths are split on '/' *before* unquoting, so a revision like `gptq%2F4bit` stays one segment;
every repo id, path, ref and oid then goes through validate.py before it can address anything.
Request bodies are bounded (HubState.max_body / max_upload, a socket timeout) and read to
their end before answering, even errors, so keep-alive connections stay in sync; a body the
server will not read closes the connection instead.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from hubtool.hub_server import collections_api, web
from hubtool.hub_server.faults import DROP_CONNECTION
from hubtool.hub_server import validate
from hubtool.hub_server.errors import StorageError
from hubtool.hub_server.storage import REPO_TYPES, RepoRef, lfs_pointer, wants_lfs
from hubtool.hub_server.validate import PR_REF_RE

if TYPE_CHECKING:
    from hubtool.hub_server import HubState

_TYPE_PLURALS = {f"{t}s": t for t in REPO_TYPES}
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_OPEN_USER = "local"
_DISCUSSION_PAGE = 50


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
                size_line = self.raw.readline(1024).split(b";", 1)[0].strip()
                if not size_line or len(size_line) > 15 or not all(c in b"0123456789abcdefABCDEF" for c in size_line):
                    raise StorageError(400, "BadRequest", f"bad chunk size {size_line[:20]!r}")
                self.left = int(size_line, 16)
                if self.left == 0:
                    for _ in range(100):  # trailers, then the blank line
                        if not self.raw.readline(8192).strip():
                            break
                    self.done = True
                    break
            take = self.left if n < 0 else min(self.left, n - len(out))
            data = self.raw.read(take)
            if not data:
                raise StorageError(400, "BadRequest", "chunked body ended early")
            out += data
            self.left -= len(data)
            if self.left == 0:
                self.raw.readline(8)  # CRLF after each chunk
        return bytes(out)


class HubHandler(BaseHTTPRequestHandler):
    """One request; `self.server.hub` (HubState) holds storage, faults, auth and limits."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK
    # add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    server_version = "hubtool-local-hub/0.1"
    hub: "HubState"

    # ------------------------------------------------------------------ plumbing
    def setup(self) -> None:
        # A socket timeout frees the thread of a client that announces a body and never sends it.
        self.timeout = self.server.hub.read_timeout  # type: ignore[attr-defined]
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.hub.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)

    def _dispatch(self) -> None:
        self.hub = self.server.hub  # type: ignore[attr-defined]
        self._body_stream: Any = None
        self._consumed = False
        self._length: int | None = None
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
            self._error(exc.status, exc.code, str(exc), exc.extra)
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            self._drain()
            self._error(400, "BadRequest", f"malformed request: {exc.__class__.__name__}: {exc}")
        except TimeoutError:
            self.close_connection = True  # the client stopped sending: give the thread back
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
        """The request body as a stream; 400 for a bad Content-Length, 413 over the limit for this route."""
        if self._body_stream is None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self._body_stream = _ChunkedReader(self.rfile)
                self._length = None
            else:
                raw = (self.headers.get("Content-Length") or "0").strip()
                if not raw.isdigit() or len(raw) > 18:
                    self._consumed = True
                    self.close_connection = True  # the body's end is unknown: this connection is done
                    raise StorageError(400, "BadRequest", f"invalid Content-Length {raw[:40]!r}")
                self._body_stream = self.rfile
                self._length = int(raw)
                if self._length > self._limit():
                    self._consumed = True
                    self.close_connection = True  # never read a body we refuse
                    raise StorageError(413, "PayloadTooLarge", f"request body of {self._length} bytes is over the {self._limit()}-byte limit")
        return self._body_stream

    def _limit(self) -> int:
        """Largest body this request may carry: LFS uploads stream to disk, everything else is read into memory."""
        if self.command == "PUT" and self.raw_path.startswith("/_hubtool/lfs/"):
            return self.hub.max_upload
        return self.hub.max_body

    def body(self) -> bytes:
        stream = self._stream()
        self._consumed = True
        try:
            return self._read_body(stream)
        except StorageError:
            self.close_connection = True  # where the next request starts is unknown
            raise

    def _read_body(self, stream: Any) -> bytes:
        if self._length is not None:
            data = stream.read(self._length)
            if len(data) < self._length:
                self.close_connection = True
                raise StorageError(400, "BadRequest", "request body ended early")
            return data
        data = stream.read(self.hub.max_body + 1)
        if len(data) > self.hub.max_body:
            self.close_connection = True
            raise StorageError(413, "PayloadTooLarge", f"request body is over the {self.hub.max_body}-byte limit")
        return data

    def body_json(self, *, required: bool = False) -> dict[str, Any]:
        """The body as a JSON object (or form fields); 400 for anything else."""
        raw = self.body()
        if not raw:
            if required:
                raise StorageError(400, "BadRequest", "a JSON object body is required")
            return {}
        ctype = self.headers.get("Content-Type", "")
        try:
            if "application/x-www-form-urlencoded" in ctype:
                return {k: (v if len(v) > 1 or k in ("paths",) else v[0]) for k, v in parse_qs(raw.decode()).items()}
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(400, "BadRequest", f"body is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise StorageError(400, "BadRequest", f"body must be a JSON object, not {type(obj).__name__}")
        return obj

    def _drain(self) -> None:
        """Read what is left of the body so a keep-alive connection stays in sync (or close it)."""
        if self._consumed:
            return
        try:
            stream = self._stream()
        except StorageError:
            return
        self._consumed = True
        budget = 16 << 20  # past this, closing is cheaper than reading
        if self._length is None:
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    return
                budget -= len(chunk)
                if budget < 0:
                    self.close_connection = True
                    return
        left = self._length
        if left > budget:
            self.close_connection = True
            return
        while left > 0:
            chunk = stream.read(min(left, 1 << 20))
            if not chunk:
                self.close_connection = True
                break
            left -= len(chunk)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str, message: str, extra: dict[str, Any] | None = None) -> None:
        message = message.splitlines()[0] if message else code
        headers = {"X-Error-Code": code}
        # Headers are Latin-1 on the wire: a message naming a non-ASCII file or branch goes in the
        # (UTF-8 JSON) body only, which the client reads too.
        if message.isascii():
            headers["X-Error-Message"] = message
        self._json(status, {"error": message, **(extra or {})}, headers)

    # ------------------------------------------------------------------ auth
    def _user(self) -> tuple[str, list[str]] | None:
        """(name, orgs) of the caller; None when auth is on and the token is missing or unknown."""
        if self.hub.users is None:
            return (_OPEN_USER, [])
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if token and token in self.hub.users:
            return self.hub.users[token]
        return None

    def _require_user(self) -> tuple[str, list[str]]:
        user = self._user()
        if user is None:
            raise StorageError(401, "Unauthorized", "Invalid credentials in Authorization header")
        return user

    def _can_write(self, ref: RepoRef, user: tuple[str, list[str]]) -> bool:
        return self.hub.users is None or ref.namespace in (user[0], *user[1])

    def _require_write(self, ref: RepoRef) -> str:
        """The caller's name if they may write to REF's namespace: 401 without a known token, else 403."""
        user = self._require_user()
        if not self._can_write(ref, user):
            raise StorageError(403, "Forbidden", f"You don't have the rights to write to {ref.repo_id}")
        return user[0]

    def _require_read(self, ref: RepoRef) -> None:
        meta = self.hub.storage.repo_meta(ref)
        if meta.get("private") and self.hub.users is not None:
            user = self._user()
            if user is None or ref.namespace not in (user[0], *user[1]):
                status = 401 if user is None else 404
                raise StorageError(status, "RepoNotFound", f"Repository {ref.repo_id} not found")

    def _require_contributor(self, ref: RepoRef, pr_num: int | None = None) -> str:
        """Who may open (or push to) a pull request: any known user who can read the repo; a PR's
        own ref also takes pushes from its author. Writers of the namespace may always."""
        user = self._require_user()
        self._require_read(ref)
        if self._can_write(ref, user) or pr_num is None:
            return user[0]
        if self.hub.storage.discussion(ref, pr_num).get("author") == user[0]:
            return user[0]
        raise StorageError(403, "Forbidden", f"You don't have the rights to push to refs/pr/{pr_num} of {ref.repo_id}")

    def _require_commit(self, ref: RepoRef, rev: str, create_pr: bool) -> str:
        if create_pr:
            return self._require_contributor(ref)
        pr = PR_REF_RE.fullmatch(rev)
        if pr:
            return self._require_contributor(ref, int(pr.group(1)))
        return self._require_write(ref)

    def _flag(self, name: str) -> bool:
        return self.query.get(name, ["0"])[0].lower() in ("1", "true")

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
        if segs[:1] == ["collections"]:
            return collections_api.route(self, method, segs[1:])
        if segs == ["repos", "create"] and method == "POST":
            return self.create_repo()
        if segs == ["repos", "delete"] and method == "DELETE":
            return self.delete_repo()
        if segs == ["repos", "move"] and method == "POST":
            return self.move_repo()
        if len(segs) == 1 and segs[0] in _TYPE_PLURALS and method == "GET":
            return self.list_repos(_TYPE_PLURALS[segs[0]])
        if len(segs) >= 3 and segs[0] in _TYPE_PLURALS:
            ref = RepoRef(_TYPE_PLURALS[segs[0]], f"{segs[1]}/{segs[2]}")
            rest = segs[3:]
            op = rest[0] if rest else ""
            rev = rest[1] if len(rest) > 1 else "main"
            if not rest or (op == "revision" and method == "GET"):
                return self.repo_info(ref, rev)
            if op == "discussions":
                return self._route_discussions(method, ref, rest[1:])
            routes = {
                ("GET", "refs"): lambda: self.list_refs(ref),
                ("POST", "branch"): lambda: self.create_branch(ref, "/".join(rest[1:])),
                ("DELETE", "branch"): lambda: self.delete_branch(ref, "/".join(rest[1:])),
                ("POST", "tag"): lambda: self.create_tag(ref, rev),
                ("DELETE", "tag"): lambda: self.delete_tag(ref, "/".join(rest[1:])),
                ("POST", "super-squash"): lambda: self.super_squash(ref, rev),
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

    def _route_discussions(self, method: str, ref: RepoRef, rest: list[str]) -> None:
        if not rest:
            if method == "GET":
                return self.list_discussions(ref)
            if method == "POST":
                return self.create_discussion(ref)
        elif rest[0].isdigit() and len(rest[0]) < 10:
            num = int(rest[0])
            if len(rest) == 1 and method == "GET":
                return self.discussion_details(ref, num)
            if rest[1:] == ["merge"] and method == "POST":
                return self.merge_pr(ref, num)
            if rest[1:] == ["status"] and method == "POST":
                return self.discussion_status(ref, num)
        raise StorageError(404, "NotFound", f"no route for {method} {self.raw_path}")

    def _route_internal(self, method: str, segs: list[str]) -> None:
        if segs == ["faults"]:
            # Fault injection changes what every client sees: behind the same auth as writes.
            self._require_user()
            if method == "POST":
                spec = self.body_json(required=True)
                try:
                    rule = self.hub.faults.add(str(spec["method"]), str(spec["path_regex"]), int(spec["status"]), int(spec.get("times", 1)))
                except re.error as exc:
                    raise StorageError(400, "BadRequest", f"invalid path_regex: {exc}") from None
                return self._json(200, rule.as_dict())
            if method == "DELETE":
                self.hub.faults.clear()
                return self._json(200, {"faults": []})
            return self._json(200, {"faults": self.hub.faults.snapshot()})
        if len(segs) >= 2 and segs[0] == "lfs":
            oid = validate.oid(segs[1])
            if len(segs) == 2 and method == "PUT":
                # The client PUTs to the batch answer's href without its token (a presigned URL):
                # with auth on, the href carries a signature only this server can make.
                if self.hub.users is not None and not hmac.compare_digest(self.query.get("sig", [""])[0], self.hub.sign(oid)):
                    self._require_user()
                stream = self._stream()
                self._consumed = True
                try:
                    size = self.hub.storage.put_stream(oid, stream, self._length, max_size=self.hub.max_upload)
                except (StorageError, OSError):
                    self.close_connection = True  # part of the body may still be in flight
                    raise
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
        name, orgs = self._require_user()
        self._json(200, {
            "type": "user", "name": name, "fullname": name,
            "orgs": [{"type": "org", "name": o} for o in orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
        })

    def _ref_from_body(self, spec: dict[str, Any]) -> RepoRef:
        """The repo a create/delete body names: {name, organization?, type?} (the caller's namespace by default)."""
        repo_type = spec.get("type") or "model"
        validate.repo_type(repo_type)
        name = spec.get("name")
        if not isinstance(name, str):
            raise StorageError(400, "BadRequest", "'name' must be a string")
        namespace = spec.get("organization")
        if namespace is None:
            user = self._user()
            namespace = user[0] if user else _OPEN_USER
        if not isinstance(namespace, str):
            raise StorageError(400, "BadRequest", "'organization' must be a string")
        return RepoRef(repo_type, f"{namespace}/{name}")

    def create_repo(self) -> None:
        spec = self.body_json(required=True)
        ref = self._ref_from_body(spec)
        author = self._require_write(ref)
        private = spec.get("private") is True or spec.get("visibility") == "private"
        if not self.hub.storage.create_repo(ref, private=private, author=author):
            return self._error(409, "Conflict", "You already created this model repo", {"url": self._repo_url(ref)})
        self._json(200, {"url": self._repo_url(ref), "name": ref.repo_id, "id": ref.repo_id})

    def delete_repo(self) -> None:
        ref = self._ref_from_body(self.body_json(required=True))
        self._require_write(ref)
        self.hub.storage.delete_repo(ref)
        self._json(200, {})

    def move_repo(self) -> None:
        spec = self.body_json(required=True)
        repo_type = validate.repo_type(spec.get("type") or "model")
        src, dst = RepoRef(repo_type, spec.get("fromRepo")), RepoRef(repo_type, spec.get("toRepo"))
        self._require_write(src)
        self._require_write(dst)
        self.hub.storage.move_repo(src, dst)
        self._json(200, {})

    def settings(self, ref: RepoRef) -> None:
        spec = self.body_json(required=True)
        self._require_write(ref)
        unknown = sorted(set(spec) - {"private", "visibility", "gated"})
        if unknown or not spec:
            raise StorageError(400, "BadRequest", f"unsupported settings {unknown[:5]}: the local Hub knows visibility, private, gated=false")
        if "gated" in spec and spec["gated"] not in (False, None):
            raise StorageError(400, "BadRequest", "gated repos are not supported by the local Hub")
        visibility = spec.get("visibility")
        if visibility is not None and visibility not in ("public", "private"):
            raise StorageError(400, "BadRequest", f"invalid visibility {str(visibility)[:20]!r}: public or private")
        private = spec.get("private")
        if private is not None and not isinstance(private, bool):
            raise StorageError(400, "BadRequest", "'private' must be true or false")
        if visibility is not None:
            private = visibility == "private"
        if private is not None:
            self.hub.storage.set_private(ref, private)
        self._json(200, {})

    def _readable(self, ref: RepoRef) -> bool:
        try:
            self._require_read(ref)
            return True
        except StorageError:
            return False

    def list_repos(self, repo_type: str) -> None:
        """GET /api/models|datasets|spaces?author=&search=&limit=: repos this caller can see."""
        author = self.query.get("author", [None])[0]
        search = (self.query.get("search", [""])[0] or "").lower()
        limit = int(self.query.get("limit", ["1000"])[0])
        out = []
        for ref, meta in self.hub.storage.list_repos(repo_type):
            if author and ref.namespace != author or search and search not in ref.repo_id.lower() or not self._readable(ref):
                continue
            out.append({"_id": ref.repo_id, "id": ref.repo_id, "author": ref.namespace, "private": bool(meta.get("private")),
                        "createdAt": meta["created"], "downloads": 0, "likes": 0, "tags": []})
            if len(out) >= limit:
                break
        self._json(200, out)

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
        prs = []
        if self._flag("include_prs"):
            prs = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c} for n, c in sorted(refs["prs"].items(), key=lambda kv: int(kv[0]))]
        self._json(200, {
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in sorted(refs["branches"].items())],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in sorted(refs["tags"].items())],
            "converts": [],
            "pullRequests": prs,
        })

    def create_branch(self, ref: RepoRef, branch: str) -> None:
        spec = self.body_json()
        self._require_write(ref)
        self.hub.storage.create_branch(ref, branch, spec.get("startingPoint"))
        self._json(200, {})

    def create_tag(self, ref: RepoRef, rev: str) -> None:
        spec = self.body_json(required=True)
        self._require_write(ref)
        self.hub.storage.create_tag(ref, spec.get("tag"), rev)
        self._json(200, {})

    def delete_tag(self, ref: RepoRef, tag: str) -> None:
        self._require_write(ref)
        self.hub.storage.delete_tag(ref, tag)
        self._json(200, {})

    def delete_branch(self, ref: RepoRef, branch: str) -> None:
        self._require_write(ref)
        self.hub.storage.delete_branch(ref, branch)
        self._json(200, {})

    def super_squash(self, ref: RepoRef, branch: str) -> None:
        spec = self.body_json()
        author = self._require_write(ref)
        message = spec.get("message") or f"Super-squash branch '{branch}'"
        if not isinstance(message, str):
            raise StorageError(400, "BadRequest", "'message' must be a string")
        commit_id = self.hub.storage.squash(ref, branch, message, author)
        self._json(200, {"commitId": commit_id})

    # ------------------------------------------------------------------ discussions and pull requests
    def _discussion_json(self, ref: RepoRef, item: dict[str, Any], *, details: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "num": item["num"], "title": item["title"], "status": item["status"], "isPullRequest": item["isPullRequest"],
            "createdAt": item["createdAt"], "author": {"name": item["author"], "type": "user"},
            "repo": {"name": ref.repo_id, "type": ref.type}, "pinned": False,
            "numComments": sum(1 for e in item["events"] if e["type"] == "comment"),
        }
        if details:
            out["events"] = [{**e, "author": {"name": e["author"], "type": "user"}} for e in item["events"]]
            if item["isPullRequest"]:
                out["changes"] = {"base": f"refs/heads/{item['base']}", "mergeCommitId": item.get("mergeCommitId")}
                out["filesWithConflicts"] = []
        return out

    def list_discussions(self, ref: RepoRef) -> None:
        """GET .../discussions?p=&type=&status=&author=: 50 per page, newest first, as the Hub pages them."""
        self._require_read(ref)
        kind = self.query.get("type", ["all"])[0]
        status = self.query.get("status", ["all"])[0]
        author = self.query.get("author", [None])[0]
        page = int(self.query.get("p", ["0"])[0])
        items = [d for d in reversed(self.hub.storage.discussions(ref))
                 if (kind == "all" or (kind == "pull_request") == d["isPullRequest"])
                 and (status == "all" or d["status"] == status) and (author is None or d["author"] == author)]
        start = page * _DISCUSSION_PAGE
        self._json(200, {"discussions": [self._discussion_json(ref, d) for d in items[start:start + _DISCUSSION_PAGE]],
                         "count": len(items), "start": start, "numClosedDiscussions": sum(1 for d in items if d["status"] != "open")})

    def create_discussion(self, ref: RepoRef) -> None:
        spec = self.body_json(required=True)
        author = self._require_contributor(ref)
        title, description = spec.get("title"), spec.get("description") or ""
        if not isinstance(title, str) or not title.strip() or not isinstance(description, str):
            raise StorageError(400, "BadRequest", "'title' (non-empty) and 'description' must be strings")
        num = self.hub.storage.create_discussion(ref, title=title, description=description, author=author,
                                                 pull_request=spec.get("pullRequest") is True)
        self._json(200, {"num": num, "url": f"{self._repo_url(ref)}/discussions/{num}", "pullRequest": spec.get("pullRequest") is True})

    def discussion_details(self, ref: RepoRef, num: int) -> None:
        self._require_read(ref)
        self._json(200, self._discussion_json(ref, self.hub.storage.discussion(ref, num), details=True))

    def merge_pr(self, ref: RepoRef, num: int) -> None:
        spec = self.body_json()
        author = self._require_write(ref)
        comment = spec.get("comment")
        commit_id = self.hub.storage.merge_pull_request(ref, num, author, comment if isinstance(comment, str) else None)
        self._json(200, {"commitId": commit_id})

    def discussion_status(self, ref: RepoRef, num: int) -> None:
        spec = self.body_json(required=True)
        user = self._require_user()
        item = self.hub.storage.discussion(ref, num)
        if not self._can_write(ref, user) and item["author"] != user[0]:
            raise StorageError(403, "Forbidden", f"You don't have the rights to change #{num} of {ref.repo_id}")
        event = self.hub.storage.change_status(ref, num, spec.get("status"), user[0])
        self._json(200, {"newStatus": {**event, "author": {"name": event["author"], "type": "user"}}})

    # ------------------------------------------------------------------ uploads
    def preupload(self, ref: RepoRef, rev: str) -> None:
        spec = self.body_json(required=True)
        self._require_commit(ref, rev, self._flag("create_pr"))
        _, files = self.hub.storage.files_at(ref, rev)
        items = spec.get("files")
        if not isinstance(items, list):
            raise StorageError(400, "BadRequest", "'files' must be a list")
        out = []
        for item in items:
            if not isinstance(item, dict):
                raise StorageError(400, "BadRequest", "each file must be an object {path, size, sample}")
            path = validate.file_path(item.get("path"))
            try:
                sample = base64.b64decode(item.get("sample") or "", validate=True)
            except (binascii.Error, ValueError):
                raise StorageError(400, "BadRequest", f"{path}: sample is not valid base64") from None
            lfs = wants_lfs(path, int(item["size"]), sample)
            existing = files.get(path)
            oid = None
            if existing is not None and existing["lfs"] == lfs:
                oid = existing["sha256"] if lfs else existing["oid"]
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": out, "commitOid": None})

    def lfs_batch(self, ref: RepoRef) -> None:
        spec = self.body_json(required=True)
        if spec.get("operation") not in ("upload", "download") or not isinstance(spec.get("objects"), list):
            raise StorageError(400, "BadRequest", "LFS batch needs operation upload|download and a list of objects")
        upload = spec.get("operation") == "upload"
        if upload:
            # Blobs are content-addressed and inert until a commit names them: anyone who may
            # open a pull request may upload them (the commit itself checks write access).
            self._require_contributor(ref)
        else:
            self._require_read(ref)
        objects = []
        for obj in spec["objects"]:
            if not isinstance(obj, dict):
                raise StorageError(400, "BadRequest", "each object must be {oid, size}")
            oid, size = validate.oid(obj.get("oid")), int(obj["size"])
            if size < 0 or size > self.hub.max_upload:
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": f"size must be 0-{self.hub.max_upload} bytes"}})
                continue
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            base = f"{self.hub.url}/_hubtool/lfs/{oid}"
            if upload and not self.hub.storage.has_blob(oid):
                item["actions"] = {"upload": {"href": f"{base}?sig={self.hub.sign(oid)}"}, "verify": {"href": f"{base}/verify"}}
            objects.append(item)
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {"Content-Type": "application/vnd.git-lfs+json"})

    def commit(self, ref: RepoRef, rev: str) -> None:
        raw = self.body()
        create_pr = self._flag("create_pr")
        author = self._require_commit(ref, rev, create_pr)
        try:
            lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(400, "BadRequest", f"commit payload is not NDJSON: {exc}") from None
        if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header" or not isinstance(lines[0].get("value"), dict):
            raise StorageError(400, "BadRequest", "commit payload must start with a header line")
        header = lines[0]["value"]
        summary, description, parent = header.get("summary") or "", header.get("description") or "", header.get("parentCommit")
        if not isinstance(summary, str) or not isinstance(description, str) or not (parent is None or isinstance(parent, str)):
            raise StorageError(400, "BadRequest", "header summary/description/parentCommit must be strings")
        commit_id, pr_num = self.hub.storage.apply_commit(
            ref, rev, title=summary, message=description, author=author, parent=parent, operations=lines[1:], create_pr=create_pr,
        )
        self._json(200, {
            "success": True, "commitOid": commit_id, "commitUrl": f"{self._repo_url(ref)}/commit/{commit_id}",
            "pullRequestUrl": f"{self._repo_url(ref)}/discussions/{pr_num}" if pr_num else None,
        })

    def xet_token(self, ref: RepoRef, rev: str, *, write: bool) -> None:
        if write:
            self._require_commit(ref, rev, self._flag("create_pr"))
            if rev != "None":
                self.hub.storage.resolve(ref, rev)
        else:
            self._require_read(ref)
        exp = int(time.time()) + 3600
        xet = self.hub.storage.xet
        cas = xet.cas_url if write else f"local://{xet.reader_replica().resolve()}"
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
        """Files then folders, in pages with a `Link: <...>; rel="next"` header; `expand` adds lastCommit."""
        self._require_read(ref)
        commit_id, files = self.hub.storage.files_at(ref, rev)
        recursive = self._flag("recursive")
        expand = self._flag("expand")
        path = path.strip("/")
        if path:
            validate.file_path(path)
        prefix = f"{path}/" if path else ""
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
        page_size = self.hub.tree_page_size_expand if expand else self.hub.tree_page_size
        cursor = self.query.get("cursor", ["0"])[0]
        start = int(cursor) if cursor.isdigit() else 0
        page = out[start:start + page_size]
        headers = {}
        if start + page_size < len(out):
            query = urlencode({**{k: v[0] for k, v in self.query.items()}, "cursor": start + page_size})
            headers["Link"] = f'<{self.hub.url}{self.raw_path}?{query}>; rel="next"'
        if expand:
            last = self.hub.storage.last_commits(ref, commit_id, [e["path"] for e in page])
            for entry in page:
                entry["lastCommit"] = last.get(entry["path"])
        self._json(200, page, headers)

    def paths_info(self, ref: RepoRef, rev: str) -> None:
        spec = self.body_json()
        self._require_read(ref)
        commit_id, files = self.hub.storage.files_at(ref, rev)
        paths = spec.get("paths", [])
        paths = [paths] if isinstance(paths, str) else paths
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise StorageError(400, "BadRequest", "'paths' must be a list of strings")
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append(self._entry_json(path, files[path]))
            elif path and any(p.startswith(path + "/") for p in files):
                out.append({"type": "directory", "path": path, "size": 0, "oid": "0" * 40})
        expand = spec.get("expand") in (True, "true", "1", "True")
        if expand:
            last = self.hub.storage.last_commits(ref, commit_id, [e["path"] for e in out])
            for entry in out:
                entry["lastCommit"] = last.get(entry["path"])
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
            raise StorageError(404, "EntryNotFound", f"{path} does not exist on {rev}")
        headers = {"X-Repo-Commit": commit_id, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
        if entry.get("xet"):
            headers["X-Xet-Hash"] = entry["xet"]
            headers["X-Xet-Refresh-Route"] = f"{self.hub.url}/api/{ref.type}s/{ref.repo_id}/xet-read-token/{commit_id}"
        self._send_blob(entry, headers)

    def _send_blob(self, entry: dict[str, Any], headers: dict[str, str]) -> None:
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
