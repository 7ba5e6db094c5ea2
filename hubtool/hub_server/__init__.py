"""A local Hub-compatible server: the unmodified huggingface_hub client can create repos and
branches, upload (Xet and classic LFS), list and download against it, with no token or internet.

It is what the tests push to and the default target for rehearsing a release. Use
`serve_in_thread(root)` from Python (a context manager) or `hubtool hub serve` from a shell.
"""

from __future__ import annotations

import collections
import json
import threading
import urllib.request
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

from hubtool.hub_server.faults import DROP_CONNECTION, FaultRule, Faults
from hubtool.hub_server.storage import Storage

__all__ = ["DROP_CONNECTION", "HubState", "LocalHub", "make_server", "serve_in_thread"]


@dataclass
class HubState:
    """What every request handler shares: storage, faults, optional auth, and a request log.

    `users` maps token -> (user name, org names). None (the default) means an open Hub: any
    caller, with or without a token, may write anywhere — right for offline rehearsal. With
    `users` set, writes need a known token (401) and a namespace it owns (403). Tokens live
    only in memory: nothing the server stores or logs contains them.
    """

    storage: Storage
    url: str = ""
    users: dict[str, tuple[str, list[str]]] | None = None
    verbose: bool = False
    faults: Faults = field(default_factory=Faults)
    requests: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10000))

    def record(self, method: str, path: str) -> None:
        self.requests.append((method, path))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], hub: HubState) -> None:
        from hubtool.hub_server.handlers import HubHandler

        super().__init__(address, HubHandler)
        self.hub = hub


def make_server(root: Path, host: str = "127.0.0.1", port: int = 0, *, users: dict[str, tuple[str, list[str]]] | None = None, verbose: bool = False) -> _Server:
    """A bound (not yet serving) server; `server.hub.url` is its endpoint."""
    hub = HubState(Storage(Path(root)), users=users, verbose=verbose)
    server = _Server((host, port), hub)
    bound_host, bound_port = server.server_address[:2]
    hub.url = f"http://{bound_host}:{bound_port}"
    return server


class LocalHub:
    """A local Hub serving from a background thread; `with serve_in_thread(root) as hub: hub.url`."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self.state = server.hub
        self.url = server.hub.url
        self.root = server.hub.storage.root
        self._thread = threading.Thread(target=server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()

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
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> "LocalHub":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(root: Path, port: int = 0, *, host: str = "127.0.0.1", users: dict[str, tuple[str, list[str]]] | None = None) -> LocalHub:
    """Start a local Hub on HOST:PORT (0 = any free port) storing repos under ROOT."""
    return LocalHub(make_server(root, host, port, users=users))


def inject_fault(url: str, method: str, path_regex: str, status: int, times: int = 1) -> dict:
    """Add a fault to a local Hub running in another process (`POST /_hubtool/faults`)."""
    body = json.dumps({"method": method, "path_regex": path_regex, "status": status, "times": times}).encode()
    req = urllib.request.Request(f"{url.rstrip('/')}/_hubtool/faults", data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())
