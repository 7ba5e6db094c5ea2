"""`python -m hubtool.hub_server [--root DIR] [--port P]`: same as `hubtool hub serve`."""

from __future__ import annotations

import sys

from hubtool.cli import main

if __name__ == "__main__":
    sys.exit(main(["hub", "serve", *sys.argv[1:]]))
