"""A local Hub-compatible server: the unmodified huggingface_hub client can create repos and
branches, upload (Xet and classic LFS), list and download against it, with no token or internet.

It is what the tests push to and the default target for rehearsing a release. Use
`serve_in_thread(root)` from Python (a context manager) or `hubtool hub serve` from a shell.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import json
import secrets
import threading
import urllib.request
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hubtool.hub_server.faults import DROP_CONNECTION, FaultRule, Faults
from hubtool.hub_server.root_lock import RootLock
from hubtool.hub_server.storage import Storage

__all__ = ["DROP_CONNECTION", "HubState", "LocalHub", "bind_warning", "make_server", "serve_in_thread"]


@dataclass
class HubState:
    """What every request handler shares: storage, faults, optional auth, and a request log.

    `users` maps token -> (user name, org names). None (the default) means an open Hub: any
    caller, with or without a token, may write anywhere — right for offline rehearsal. With
    `users` set, writes need a known token (401) and a namespace it owns (403), private repos
    are hidden from others, and pull requests may be opened by any known user who can read the repo.
    Fault injection over HTTP (`/_hubtool/faults`) changes what every client sees: only the users
    named in `admins` may use it, and in open mode nobody unless `open_faults` is set (tests do;
    `hubtool hub serve --allow-faults`). Tokens live only in memory: nothing the server stores or
    logs contains them.
    """

    storage: Storage
    url: str = ""
    users: dict[str, tuple[str, list[str]]] | None = None
    verbose: bool = False
    admins: frozenset[str] = frozenset()
    open_faults: bool = False
    faults: Faults = field(default_factory=Faults)
    requests: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10000))
    max_body: int = 256 * 1024 * 1024  # JSON / NDJSON bodies (read into memory)
    max_upload: int = 50 * 1000**3  # one LFS object, streamed to disk (the Hub's per-file limit)
    read_timeout: float = 60.0  # seconds a client may stall mid-request before its thread is freed
    # A body's total time: read_timeout plus 1 s per min_body_rate bytes (64 KiB/s: a 50 GB upload gets ~9 days)
    min_body_rate: float = 64 * 1024
    tree_page_size: int = 1000
    tree_page_size_expand: int = 50
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    collections: Any = None  # hub_server.collections_api.Collections, made from storage when not given

    def __post_init__(self) -> None:
        if self.collections is None:
            from hubtool.hub_server.collections_api import Collections

            self.collections = Collections(self.storage.root, self.storage._lock)

    def sign(self, oid: str, scope: str) -> str:
        """Signature for a presigned LFS upload URL of OID into repo SCOPE ("type/ns/name")."""
        return hmac.new(self.secret, f"{scope}\0{oid}".encode(), hashlib.sha256).hexdigest()[:32]

    def record(self, method: str, path: str) -> None:
        self.requests.append((method, path))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], hub: HubState, lock: RootLock) -> None:
        from hubtool.hub_server.handlers import HubHandler

        self.hub = hub
        self._root_lock = lock
        super().__init__(address, HubHandler)

    def server_close(self) -> None:
        super().server_close()
        self.hub.storage.close()
        self._root_lock.release()


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_warning(host: str, users: dict | None) -> str | None:
    """The warning to print when binding HOST: anything but loopback exposes the repos to the network."""
    if is_loopback(host):
        return None
    who = "anyone who can reach it can read every repo and write anywhere (open mode: no token needed)" if users is None \
        else "anyone who can reach it can read public repos and try tokens"
    return f"warning: the local Hub listens on {host}, not loopback: {who}; it serves plain HTTP"


def make_server(root: Path, host: str = "127.0.0.1", port: int = 0, *, users: dict[str, tuple[str, list[str]]] | None = None,
                verbose: bool = False, **limits: Any) -> _Server:
    """A bound (not yet serving) server; `server.hub.url` is its endpoint.

    `limits` overrides HubState fields (max_body, max_upload, read_timeout, tree_page_size, admins, ...).
    ROOT is locked for this server's life (a second server on it is refused with a StorageError
    naming the first process); temp files under ROOT (interrupted uploads of a previous run) are
    removed first.
    """
    lock = RootLock(Path(root))
    try:
        hub = HubState(Storage(Path(root)), users=users, verbose=verbose, **limits)
        server = _Server((host, port), hub, lock)
    except BaseException:
        lock.release()
        raise
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    hub.url = f"http://{shown}:{bound_port}"
    return server


_IN_PROCESS: dict[str, Path] = {}  # url -> root of the local Hubs this process serves


def local_root(url: str | None) -> Path | None:
    """The folder behind URL when it is a local Hub served by this process (a full disk is that folder's)."""
    return _IN_PROCESS.get((url or "").rstrip("/"))


class LocalHub:
    """A local Hub serving from a background thread; `with serve_in_thread(root) as hub: hub.url`."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self.state = server.hub
        self.url = server.hub.url
        self.root = server.hub.storage.root
        self._thread = threading.Thread(target=server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        _IN_PROCESS[self.url] = Path(self.root)

    def inject_fault(self, method: str, path_regex: str, status: int, times: int = 1) -> FaultRule:
        """Fail the next `times` requests matching METHOD and the raw URL path regex with STATUS (0 = drop)."""
        return self.state.faults.add(method, path_regex, status, times)

    def clear_faults(self) -> None:
        self.state.faults.clear()

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, raw path) of every request served so far, oldest first."""
        return list(self.state.requests)

    def stop(self) -> None:
        _IN_PROCESS.pop(self.url, None)
        self._server.shutdown()
        self._server.server_close()  # drops the root lock and this server's Xet read replicas
        self._thread.join(timeout=10)

    def __enter__(self) -> "LocalHub":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(root: Path, port: int = 0, *, host: str = "127.0.0.1", users: dict[str, tuple[str, list[str]]] | None = None,
                    **limits: Any) -> LocalHub:
    """Start a local Hub on HOST:PORT (0 = any free port) storing repos under ROOT."""
    return LocalHub(make_server(root, host, port, users=users, **limits))


def inject_fault(url: str, method: str, path_regex: str, status: int, times: int = 1, *, token: str | None = None) -> dict:
    """Add a fault to a local Hub running in another process (`POST /_hubtool/faults`; TOKEN when it has users)."""
    body = json.dumps({"method": method, "path_regex": path_regex, "status": status, "times": times}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(f"{url.rstrip('/')}/_hubtool/faults", data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())
