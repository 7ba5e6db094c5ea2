"""`hubtool hub serve`: a local Hub-compatible server for offline rehearsal and tests."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from hubtool.cli import subgroup

DEFAULT_ROOT = Path(os.environ.get("HUBTOOL_HUB_ROOT", Path.home() / ".cache" / "hubtool" / "local-hub"))


def register(sub: argparse._SubParsersAction) -> None:
    group = subgroup(sub, "hub", "local Hub-compatible server")
    p = group.add_parser("serve", help="serve repos stored under --root to the huggingface_hub client")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"where repos are stored (default {DEFAULT_ROOT})")
    p.add_argument("--port", type=int, default=8765, help="port (0 picks a free one); default 8765")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind; default 127.0.0.1 (local only)")
    p.add_argument("--users", type=Path, metavar="FILE",
                   help='require tokens: JSON {"TOKEN": {"name": "alice", "orgs": ["acme"], "admin": false}}; writes need a token owning '
                        "the namespace, private repos are hidden, fault injection needs an admin (default: open, any caller may write)")
    p.add_argument("--allow-faults", action="store_true",
                   help="open mode: let any caller inject faults through /_hubtool/faults (for test rigs; off by default)")
    p.add_argument("--allow-open-network", action="store_true",
                   help="with a non-loopback --host and no --users, let anyone on the network write (refused without this flag)")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtool.atomic import check_folder
    from hubtool.errors import InputError, from_os_error
    from hubtool.hub_server import bind_warning, is_loopback, make_server
    from hubtool.hub_server.errors import StorageError
    from hubtool.progress import log

    users = load_users(args.users) if args.users else None
    admins = load_admins(args.users) if args.users else frozenset()
    if users is None and not is_loopback(args.host) and not args.allow_open_network:
        # Open mode takes no token at all: on a network interface that is a world-writable store.
        raise InputError(f"--host {args.host}: an open local Hub (no --users) only listens on loopback; "
                         "pass --users FILE to require tokens, or --allow-open-network to expose it anyway")
    if isinstance(args.port, bool) or not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: a port is 0-65535 (0 picks a free one); e.g. --port 8765")
    check_folder(args.root, flag="--root")
    try:
        server = make_server(args.root, args.host, args.port, users=users, verbose=args.verbose,
                             admins=admins, open_faults=bool(args.allow_faults))
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL) or (exc.errno in (errno.EACCES, errno.EPERM) and exc.filename is None):
            raise InputError(f"{args.host}:{args.port}: cannot listen ({exc.strerror}); pick another --port") from None
        raise from_os_error(exc, args.root) from None
    except OverflowError:
        raise InputError(f"--port {args.port}: a port is 0-65535 (0 picks a free one); e.g. --port 8765") from None
    except StorageError as exc:  # the root is served by another process (its lock names it)
        raise InputError(f"--root {exc}") from None
    print(server.hub.url, flush=True)
    warning = bind_warning(args.host, users)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if server.hub.storage.removed_temp_files:
        log(f"removed {server.hub.storage.removed_temp_files} stale temp file(s) of interrupted uploads under {args.root}")
    log(f"local Hub serving {args.root} at {server.hub.url}; use it with HF_ENDPOINT={server.hub.url} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def load_users(path: Path) -> dict[str, tuple[str, list[str]]]:
    """Read --users FILE: {token: {"name": user, "orgs": [org, ...]}}; one-line InputError if malformed."""
    from hubtool.errors import InputError

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read users file ({exc.__class__.__name__}); pass a JSON object {{TOKEN: {{name, orgs}}}}") from None
    users: dict[str, tuple[str, list[str]]] = {}
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: users file must be a non-empty JSON object {{TOKEN: {{name, orgs}}}}")
    for n, (token, spec) in enumerate(data.items(), 1):
        name = spec.get("name") if isinstance(spec, dict) else None
        orgs = spec.get("orgs", []) if isinstance(spec, dict) else None
        if not isinstance(name, str) or not name or not isinstance(orgs, list) or not all(isinstance(o, str) for o in orgs) or len(token) < 8:
            raise InputError(f"{path}: entry {n} must be TOKEN (8+ chars): {{\"name\": USER, \"orgs\": [ORG, ...]}}")
        if not isinstance(spec.get("admin", False), bool):
            raise InputError(f"{path}: entry {n}: \"admin\" must be true or false")
        users[token] = (name, list(orgs))
    return users


def load_admins(path: Path) -> frozenset[str]:
    """The user names marked `"admin": true` in --users FILE (already checked by load_users)."""
    data = json.loads(path.read_text())
    return frozenset(spec["name"] for spec in data.values() if spec.get("admin") is True)
