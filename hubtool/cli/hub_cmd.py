"""`hubtool hub serve`: a local Hub-compatible server for offline rehearsal and tests."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hubtool.cli import subgroup

DEFAULT_ROOT = Path(os.environ.get("HUBTOOL_HUB_ROOT", Path.home() / ".cache" / "hubtool" / "local-hub"))


def register(sub: argparse._SubParsersAction) -> None:
    group = subgroup(sub, "hub", "local Hub-compatible server")
    p = group.add_parser("serve", help="serve repos stored under --root to the huggingface_hub client")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"where repos are stored (default {DEFAULT_ROOT})")
    p.add_argument("--port", type=int, default=8765, help="port (0 picks a free one); default 8765")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind; default 127.0.0.1 (local only)")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtool.errors import InputError
    from hubtool.hub_server import make_server
    from hubtool.progress import log

    try:
        server = make_server(args.root, args.host, args.port, verbose=args.verbose)
    except OSError as exc:
        raise InputError(f"{args.host}:{args.port}: cannot listen ({exc.strerror}); pick another --port") from None
    print(server.hub.url, flush=True)
    log(f"local Hub serving {args.root} at {server.hub.url}; use it with HF_ENDPOINT={server.hub.url} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
