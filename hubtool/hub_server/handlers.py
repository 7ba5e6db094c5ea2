"""HTTP endpoints of the local Hub, in the shapes huggingface_hub 2.4 expects (docs/hub-protocol.md).

Paths are split on '/' *before* unquoting, so a revision like `gptq%2F4bit` stays one segment;
every repo id, path, ref and oid then goes through validate.py before it can address anything.
Request bodies are bounded (HubState.max_body / max_upload, a socket timeout) and read to
their end before answering, even errors, so keep-alive connections stay in sync; a body the
server will not read closes the connection instead.
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from hubtool.hub_server import collections_api, validate, web
from hubtool.hub_server.access import AccessMixin
from hubtool.hub_server.api_admin import AdminMixin
from hubtool.hub_server.api_discussions import DiscussionsMixin
from hubtool.hub_server.api_repos import ReposMixin
from hubtool.hub_server.api_uploads import UploadsMixin
from hubtool.hub_server.bodies import ChunkedReader, TimedReader
from hubtool.hub_server.errors import StorageError
from hubtool.hub_server.faults import DROP_CONNECTION
from hubtool.hub_server.storage import REPO_TYPES, RepoRef

if TYPE_CHECKING:
    from hubtool.hub_server import HubState

_TYPE_PLURALS = {f"{t}s": t for t in REPO_TYPES}
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class HubHandler(AccessMixin, ReposMixin, DiscussionsMixin, UploadsMixin, AdminMixin, BaseHTTPRequestHandler):
    """One request; `self.server.hub` (HubState) holds storage, faults, auth and limits.

    This module is the plumbing (bodies, answers, routing); the endpoints live with their concern:
    api_repos.py (repos, refs, reads), api_uploads.py (preupload, LFS, commits, Xet tokens),
    api_discussions.py, api_admin.py (faults), web.py (pages); access.py decides who may do what.
    """

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
        except (json.JSONDecodeError, KeyError, ValueError, TypeError, OverflowError, RecursionError) as exc:
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
            try:
                self.connection.settimeout(self.timeout)  # the body reader narrowed it
            except OSError:
                pass

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch

    def _stream(self) -> Any:
        """The request body as a stream; 400 for a bad Content-Length, 413 over the limit for this route."""
        if self._body_stream is None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self._body_stream = ChunkedReader(self._timed())
                self._length = None
            else:
                raw = (self.headers.get("Content-Length") or "0").strip()
                if not raw.isdigit() or len(raw) > 18:
                    self._consumed = True
                    self.close_connection = True  # the body's end is unknown: this connection is done
                    raise StorageError(400, "BadRequest", f"invalid Content-Length {raw[:40]!r}")
                self._body_stream = self._timed()
                self._length = int(raw)
                if self._length > self._limit():
                    self._consumed = True
                    self.close_connection = True  # never read a body we refuse
                    raise StorageError(413, "PayloadTooLarge", f"request body of {self._length} bytes is over the {self._limit()}-byte limit")
        return self._body_stream

    def _timed(self) -> TimedReader:
        return TimedReader(self.rfile, self.connection, self.hub.read_timeout, self.hub.min_body_rate)

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
            obj = validate.json_loads(raw)
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
            headers["X-Error-Message"] = _CONTROL_RE.sub("?", message)  # never echo a URL's control bytes into a header
        self._json(status, {"error": message, **(extra or {})}, headers)

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
            return self.lfs_batch(self._ref(repo_type, f"{segs[0]}/{segs[1][:-4]}"))
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            return self.resolve(self._ref(repo_type, f"{segs[0]}/{segs[1]}"), segs[3], "/".join(segs[4:]))
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
            ref = self._ref(_TYPE_PLURALS[segs[0]], f"{segs[1]}/{segs[2]}")
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
            return self.faults_endpoint(method)
        if len(segs) >= 2 and segs[0] == "lfs":
            oid = validate.oid(segs[1])
            if len(segs) == 2 and method == "PUT":
                return self.lfs_put(oid)
            if segs[2:] == ["verify"] and method == "POST":
                return self.lfs_verify(oid)
        raise StorageError(404, "NotFound", f"no route for {method} {self.raw_path}")

    def _repo_url(self, ref: RepoRef) -> str:
        prefix = "" if ref.type == "model" else f"{ref.type}s/"
        return f"{self.hub.url}/{prefix}{ref.repo_id}"

    # ------------------------------------------------------------------ reads