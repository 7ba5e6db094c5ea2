"""Content hashes for the release cache: a stage's output is keyed by what went into it.

Hashing a multi-GB model on every run would dominate a no-op re-run, so file digests are
memoised in the work dir by (path, size, mtime_ns, inode); a changed file changes one of those.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hubtool.hashing import sha256_file

HASH_CACHE = "hashes.json"
MEMO_MIN_BYTES = 1 << 20


class Hasher:
    """sha256 of files and folders, remembered across runs in WORK/hashes.json."""

    def __init__(self, work_dir: Path) -> None:
        self.path = Path(work_dir) / HASH_CACHE
        self._memo: dict[str, str] = {}
        if self.path.is_file():
            try:
                self._memo = json.loads(self.path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, OSError):
                self._memo = {}
        self._dirty = False

    def file(self, path: Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        digest = self._memo.get(key)
        if digest is None:
            digest = sha256_file(path)
            if st.st_size >= MEMO_MIN_BYTES:  # small files are cheaper to hash than to remember
                self._memo[key] = digest
                self._dirty = True
        return digest

    def files(self, folder: Path) -> dict[str, str]:
        """{relative path: sha256} of every non-hidden file under FOLDER."""
        folder = Path(folder)
        out = {}
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder)
            if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                out[rel.as_posix()] = self.file(p)
        return out

    def folder(self, folder: Path) -> str:
        """One digest for a folder's content (names + bytes), independent of where it lives."""
        return digest_of(self.files(folder))

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # a concurrent release's stage processes share the work dir: keep what they remembered too
            saved = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        except (json.JSONDecodeError, OSError):
            saved = {}
        memo = {**(saved if isinstance(saved, dict) else {}), **self._memo}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo), encoding="utf-8")
        os.replace(tmp, self.path)
        self._dirty = False


def digest_of(value: Any) -> str:
    """sha256 of a JSON-able value in canonical form (the stage key)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
