"""Xet mode for the local Hub: hf-xet writes chunks into a file-backed CAS folder we hand it.

The client is given `casUrl = local://<root>/xet-cas`; hf-xet then stores xorbs and shard
files there itself (xet-core's local store), so file bytes never pass through our HTTP server.
A commit only names files by sha256, so we read the shard files' file-info sections to map
sha256 -> xet file hash (for `X-Xet-Hash` and tree `xetHash`), and use hf-xet's own downloader
to materialise a blob when a plain HTTP client asks for the bytes.

The shard layout is internal to xet-core (checked with hf-xet 1.8): if it changes, `lookup`
finds nothing and commits of Xet-uploaded files fail with a clear 400, never silently.

xet-core's local store keeps an index database (redb) that one process opens at a time, for as long
as a transfer runs; the real Hub's CAS has no such limit. So every reader (a read token, or our own
reassembly of a blob) gets a private replica: xorbs and shards hard-linked, the index copied while no
writer holds it. Concurrent downloads then never meet; uploads still go one process at a time into
the shared store (a second concurrent upload gets xet-core's "Database already open", which
hubtool's own stage cache waits out).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from hubtool.hub_server.errors import StorageError

_SHARD_HEADER_SIZE = 48  # 32-byte tag, u64 version, u64 footer size
_ENTRY_SIZE = 48  # every record in the file-info section is 48 bytes
_FLAG_VERIFICATION = 0x8000_0000
_FLAG_METADATA_EXT = 0x4000_0000
_BOOKEND = b"\xff" * 32
_STORE = Path("xet", "xorbs")  # where xet-core's LocalClient keeps its files under a local:// CAS URL
_INDEX_DB = "global_dedup_lookup.redb"
READER_MAX_AGE_S = 6 * 3600  # replicas older than this (tokens last an hour) are removed
WRITER_WAIT_S = 900.0  # how long a reader waits for an upload that holds the index


def _merkle_hex(raw: bytes) -> str:
    """xet-core prints a 32-byte MerkleHash as four little-endian u64s, each in big-endian hex."""
    return "".join(raw[i : i + 8][::-1].hex() for i in range(0, 32, 8))


def parse_shard(data: bytes) -> dict[str, tuple[str, int]]:
    """sha256 -> (xet hash, size) for every file recorded (with its sha256) in one shard file."""
    found: dict[str, tuple[str, int]] = {}
    off = _SHARD_HEADER_SIZE
    while off + _ENTRY_SIZE <= len(data):
        file_hash = data[off : off + 32]
        if file_hash == _BOOKEND:
            break
        flags, n_entries = struct.unpack_from("<II", data, off + 32)
        entries = off + _ENTRY_SIZE
        size = sum(struct.unpack_from("<I", data, entries + i * _ENTRY_SIZE + 36)[0] for i in range(n_entries))
        off = entries + n_entries * _ENTRY_SIZE
        if flags & _FLAG_VERIFICATION:
            off += n_entries * _ENTRY_SIZE
        if flags & _FLAG_METADATA_EXT:
            found[_merkle_hex(data[off : off + 32])] = (_merkle_hex(file_hash), size)
            off += _ENTRY_SIZE
    return found


class XetStore:
    """The CAS folder hf-xet writes into, plus a sha256 -> xet hash index read from its shards."""

    def __init__(self, cas_dir: Path) -> None:
        self.cas_dir = Path(cas_dir)
        self.cas_dir.mkdir(parents=True, exist_ok=True)
        self.readers_dir = self.cas_dir.parent / "xet-readers"
        self._index: dict[str, tuple[str, int]] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    @property
    def cas_url(self) -> str:
        return f"local://{self.cas_dir.resolve()}"

    def lookup(self, sha256: str) -> tuple[str, int] | None:
        """(xet hash, size) of the file with this sha256 if hf-xet has stored it here."""
        with self._lock:
            if sha256 not in self._index:
                self._rescan()
            return self._index.get(sha256)

    def _rescan(self) -> None:
        # Shard files are content-addressed and immutable once renamed into place: read each once.
        for shard in self.cas_dir.rglob("*.mdb"):
            if shard.name in self._seen:
                continue
            try:
                self._index.update(parse_shard(shard.read_bytes()))
            except (OSError, struct.error):
                continue  # half-written by a concurrent upload: retried on the next lookup
            self._seen.add(shard.name)

    def reader_replica(self) -> Path:
        """A private copy of the store for one reader, so that readers never contend for the index."""
        self._remove_old_replicas()
        replica = self.readers_dir / f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
        pool, copy = self.cas_dir / _STORE, replica / _STORE
        for sub in ("xorbs", "shards"):
            (copy / sub).mkdir(parents=True)
        index = pool / _INDEX_DB
        if index.is_file():
            with open(index, "rb") as fh:
                self._wait_for_writers(fh, index)
                try:
                    shutil.copyfile(index, copy / _INDEX_DB)
                    for sub in ("xorbs", "shards"):
                        for f in (pool / sub).iterdir() if (pool / sub).is_dir() else ():
                            if f.is_file() and not f.name.startswith("."):
                                _link_or_copy(f, copy / sub / f.name)
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        return replica

    @staticmethod
    def _wait_for_writers(fh: Any, index: Path) -> None:
        """Take the index's lock (redb's own, flock) so no upload changes it while we copy."""
        deadline = time.monotonic() + WRITER_WAIT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StorageError(503, "ServiceUnavailable", f"an upload has held {index} for {WRITER_WAIT_S:.0f} s; retry later") from None
                time.sleep(0.1)

    def _remove_old_replicas(self) -> None:
        if not self.readers_dir.is_dir():
            return
        cutoff = time.time() - READER_MAX_AGE_S
        for old in self.readers_dir.iterdir():
            stamp = old.name.split("-", 1)[0]
            if stamp.isdigit() and int(stamp) < cutoff:
                shutil.rmtree(old, ignore_errors=True)

    def materialize(self, xet_hash: str, size: int, dest: Path) -> None:
        """Reassemble a Xet-stored file into `dest` with hf-xet's own reader (atomic rename)."""
        import hf_xet

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        replica = self.reader_replica()
        try:
            session = hf_xet.XetSession()
            with session.new_file_download_group(
                endpoint=f"local://{replica.resolve()}", token="local", token_expiry_unix_secs=int(time.time()) + 3600
            ) as group:
                group.start_download_file(hf_xet.XetFileInfo(xet_hash, size), str(tmp))
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(replica, ignore_errors=True)


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(src, dest)
