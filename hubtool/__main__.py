import os
import signal
import sys


def _early_exit(signum: int, frame: object) -> None:
    """A signal during start-up (before main() installs its handlers): nothing was written yet."""
    os.write(2, b"error: interrupted while starting; nothing was written\n")
    os._exit(128 + signum)


for _sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
    if _sig is not None:
        signal.signal(_sig, _early_exit)

from hubtool.cli import main  # noqa: E402

raise SystemExit(main())
