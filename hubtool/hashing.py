"""File hashing shared by merge provenance, the release cache and the demo's download check."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Streaming sha256 of a file: the hash the Hub's LFS/Xet layer and our caches key on."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
