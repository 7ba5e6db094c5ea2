"""Xet mode for the local Hub: hf-xet writes chunks into a file-backed CAS folder we hand it.

Each repo has its own store, `xet-cas/stores/<id>` (the id lives in repo.json, so a moved repo
keeps it): a Xet write token for a repo names that store only, so what a client uploads there is
owned by that repo and a commit elsewhere cannot claim it. hf-xet stores xorbs and shard files
there itself (xet-core's local store), so file bytes never pass through our HTTP server. A commit
only names files by sha256, so we read the shard files' file-info sections to map sha256 -> xet
file hash, size and the xorbs holding it (for `X-Xet-Hash`, tree `xetHash`, and replicas).
Stores of servers before per-repo stores (`xet-cas/xet/xorbs`) are still read.

The shard layout is internal to xet-core (checked with hf-xet 1.8): if it changes, `lookup`
finds nothing and commits of Xet-uploaded files fail with a clear 400, never silently.

A read token names a *replica* holding only the shards and xorbs of the files the token's repo
revision has (hard links where the filesystem allows), never the whole CAS: a reader of one
public repo cannot list or fetch another repo's objects. Replicas live outside the root where
the temp folder shares its filesystem (so the token does not reveal the root path), and are
bounded: one per (repo, commit) is handed out again while no process holds it open, a held one
gets a sibling, none unused for longer than a token's life survives, and READER_CAP is a hard
ceiling. xet-core keeps an index database (redb) that one process opens at a time (flock), which
is how a held replica is told apart; concurrent readers never meet.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import os
import re
import shutil
import struct
import threading
import time
import uuid
from dataclasses import dataclass
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
WRITER_WAIT_S = 900.0  # how long a reader waits for an upload that holds a store's index
_XORB_PREFIX = "default."  # xet-core names a xorb file `default.<hash>` in <store>/xet/xorbs/xorbs
READER_MAX_AGE_S = 3600 + 600  # a read token lasts an hour: its replica goes a little after
# Replicas are reused per (repo store, commit) while no process holds them open, so their number is
# the distinct commits read in the last hour plus concurrent downloads; READER_CAP is a hard ceiling
# (least recently handed out go first). Each holds hard links to one revision's objects + hf-xet's
# ~1 MB index copy: at most ~128 MB of copies.
READER_CAP = 128
_STORE_ID_RE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class XetFile:
    """One file recorded in a shard: its xet hash, size, the shard naming it and the xorbs holding it."""

    xet_hash: str
    size: int
    shard: Path
    xorbs: tuple[str, ...]
    store: str  # store id, "" for the pre-per-repo shared store


def _merkle_hex(raw: bytes) -> str:
    """xet-core prints a 32-byte MerkleHash as four little-endian u64s, each in big-endian hex."""
    return "".join(raw[i : i + 8][::-1].hex() for i in range(0, 32, 8))


def parse_shard_files(data: bytes) -> dict[str, tuple[str, int, tuple[str, ...]]]:
    """sha256 -> (xet hash, size, xorb hashes) for every file recorded (with its sha256) in one shard."""
    found: dict[str, tuple[str, int, tuple[str, ...]]] = {}
    off = _SHARD_HEADER_SIZE
    while off + _ENTRY_SIZE <= len(data):
        file_hash = data[off : off + 32]
        if file_hash == _BOOKEND:
            break
        flags, n_entries = struct.unpack_from("<II", data, off + 32)
        entries = off + _ENTRY_SIZE
        size = sum(struct.unpack_from("<I", data, entries + i * _ENTRY_SIZE + 36)[0] for i in range(n_entries))
        xorbs = tuple(dict.fromkeys(_merkle_hex(data[entries + i * _ENTRY_SIZE : entries + i * _ENTRY_SIZE + 32]) for i in range(n_entries)))
        off = entries + n_entries * _ENTRY_SIZE
        if flags & _FLAG_VERIFICATION:
            off += n_entries * _ENTRY_SIZE
        if flags & _FLAG_METADATA_EXT:
            found[_merkle_hex(data[off : off + 32])] = (_merkle_hex(file_hash), size, xorbs)
            off += _ENTRY_SIZE
    return found


def parse_shard(data: bytes) -> dict[str, tuple[str, int]]:
    """sha256 -> (xet hash, size) for every file recorded (with its sha256) in one shard file."""
    return {sha: (xh, size) for sha, (xh, size, _) in parse_shard_files(data).items()}


class XetStore:
    """The CAS folders hf-xet writes into (one per repo), plus a sha256 -> XetFile index read from their shards."""

    def __init__(self, cas_dir: Path, readers_dir: Path | None = None) -> None:
        self.cas_dir = Path(cas_dir)
        self.cas_dir.mkdir(parents=True, exist_ok=True)
        self.readers_dir = Path(readers_dir) if readers_dir else self.cas_dir.parent / "xet-readers"
        self._index: dict[str, list[XetFile]] = {}
        self._seen: set[Path] = set()
        self._lock = threading.Lock()
        self._replicas_lock = threading.Lock()

    def store_dir(self, store_id: str) -> Path:
        """The CAS folder of one repo's store (`store_id` from repo.json; "" is the legacy shared one)."""
        if store_id == "":
            return self.cas_dir
        if not _STORE_ID_RE.fullmatch(store_id):
            raise StorageError(500, "InternalError", "bad xet store id in repo.json")
        return self.cas_dir / "stores" / store_id

    def cas_url(self, store_id: str) -> str:
        """The write URL of a repo's store (writers of that repo may see its path)."""
        path = self.store_dir(store_id)
        path.mkdir(parents=True, exist_ok=True)
        return f"local://{path.resolve()}"

    def lookup(self, sha256: str, store_id: str | None = None) -> XetFile | None:
        """The Xet file with this sha256, in STORE_ID's store only (None: in any store)."""
        with self._lock:
            if not any(store_id is None or f.store == store_id for f in self._index.get(sha256, ())):
                self._rescan()
            for found in self._index.get(sha256, ()):
                if store_id is None or found.store == store_id:
                    return found
            return None

    def find(self, sha256: str, xet_hash: str, prefer: str | None = None) -> XetFile | None:
        """The record of a committed file (sha256 + xet hash): in store PREFER if it has one (the
        same bytes pushed to two repos are in both stores), else in whichever store holds it."""
        with self._lock:
            for attempt in range(2):
                matches = [f for f in self._index.get(sha256, ()) if f.xet_hash == xet_hash]
                if matches and (attempt == 1 or prefer is None or any(f.store == prefer for f in matches)):
                    return next((f for f in matches if f.store == prefer), matches[0])
                if attempt == 0:
                    self._rescan()
        return None

    def _rescan(self) -> None:
        # Shard files are content-addressed and immutable once renamed into place: read each once.
        for shard in self.cas_dir.rglob("*.mdb"):
            if shard in self._seen or shard.parent.name != "shards" or shard.name.startswith("."):
                continue  # shard-cache/ is hf-xet's client cache; xorbs/shards/ is the store's own
            rel = shard.relative_to(self.cas_dir).parts
            store = rel[1] if rel[0] == "stores" and len(rel) > 2 else ""
            try:
                files = parse_shard_files(shard.read_bytes())
            except (OSError, struct.error):
                continue  # half-written by a concurrent upload: retried on the next lookup
            for sha, (xet_hash, size, xorbs) in files.items():
                self._index.setdefault(sha, []).append(XetFile(xet_hash, size, shard, xorbs, store))
            self._seen.add(shard)

    def reader_replica(self, files: list[tuple[str, str]], store: str | None = None, key: str | None = None) -> Path:
        """A store for readers holding only FILES' ((sha256, xet hash)) shards and xorbs, taken from
        STORE (the repo's own) where it has them.

        With KEY (repo store + commit), a replica of that key that no process holds open is handed
        out again (clients cache a token for an hour, so its folder must outlive a burst of other
        tokens); one that is held (xet-core's index lock) gets a sibling, so readers never meet.
        """
        tag = hashlib.sha1(key.encode()).hexdigest()[:16] if key else "once"
        with self._replicas_lock:
            if key and self.readers_dir.is_dir():
                for old in sorted(self.readers_dir.glob(f"*-{tag}-*"), key=_mtime, reverse=True):
                    if not _held(old):
                        os.utime(old)
                        return old
        self.remove_old_replicas()
        self.readers_dir.mkdir(parents=True, exist_ok=True)
        replica = self.readers_dir / f"{int(time.time())}-{tag}-{uuid.uuid4().hex[:12]}"
        copy = replica / _STORE
        for sub in ("xorbs", "shards"):
            (copy / sub).mkdir(parents=True)
        records = [f for f in (self.find(sha, xh, store) for sha, xh in files) if f is not None]
        # xet-core finds files through its index database (redb): copy the one of the store holding
        # most of these files (a repo's files are in its own store; only a root of an older server
        # mixes stores), taken while no upload holds it. It indexes that store only: that one repo.
        # The index names every shard of its store, which must all be there (they describe that one
        # repo's uploads; a shared store of an older server also lists other repos' file hashes, but
        # only these files' xorbs, the bytes, are linked).
        stores = collections.Counter(f.store for f in records)
        if stores:
            pool = self.store_dir(stores.most_common(1)[0][0]) / _STORE
            index = pool / _INDEX_DB
            if index.is_file():
                with open(index, "rb") as fh:
                    _wait_for_writers(fh, index)
                    try:
                        shutil.copyfile(index, copy / _INDEX_DB)
                        for f in (pool / "shards").iterdir() if (pool / "shards").is_dir() else ():
                            if f.is_file() and not f.name.startswith("."):
                                _link_or_copy(f, copy / "shards" / f.name)
                    finally:
                        fcntl.flock(fh, fcntl.LOCK_UN)
        for found in records:
            sources = [found.shard] + [found.shard.parent.parent / "xorbs" / f"{_XORB_PREFIX}{x}" for x in found.xorbs]
            for src in sources:  # each with xet-core's `.tagset` sidecar
                for part in (src, src.with_name(src.name + ".tagset")):
                    dest = copy / src.parent.name / part.name
                    if part.is_file() and not dest.exists():
                        _link_or_copy(part, dest)
        return replica

    def remove_old_replicas(self, keep: int = READER_CAP - 1) -> None:
        """Drop replicas unused for longer than a token's life, then the least recently handed out
        beyond KEEP; one a process holds open stays (it is at most one per concurrent download)."""
        with self._replicas_lock:
            if not self.readers_dir.is_dir():
                return
            cutoff = time.time() - READER_MAX_AGE_S
            live = []
            for old in list(self.readers_dir.iterdir()):
                if _mtime(old) < cutoff and not _held(old):
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    live.append((_mtime(old), old.name, old))
            excess = max(len(live) - keep, 0)
            for _, _, old in sorted(live):
                if excess <= 0:
                    break
                if not _held(old):
                    shutil.rmtree(old, ignore_errors=True)
                    excess -= 1

    def drop_store(self, store_id: str) -> None:
        """Delete a deleted repo's store and forget its files."""
        path = self.store_dir(store_id)
        with self._lock:
            shutil.rmtree(path, ignore_errors=True)
            for sha in list(self._index):
                self._index[sha] = [f for f in self._index[sha] if f.store != store_id]
            self._seen = {p for p in self._seen if path not in p.parents}

    def replica_count(self) -> int:
        return sum(1 for _ in self.readers_dir.iterdir()) if self.readers_dir.is_dir() else 0

    def remove_all_replicas(self) -> None:
        shutil.rmtree(self.readers_dir, ignore_errors=True)

    def materialize(self, sha256: str, xet_hash: str, size: int, dest: Path, store: str | None = None) -> None:
        """Reassemble a Xet-stored file into `dest` with hf-xet's own reader (atomic rename)."""
        import hf_xet

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        replica = self.reader_replica([(sha256, xet_hash)], store)
        try:
            session = hf_xet.XetSession()
            with session.new_file_download_group(
                endpoint=f"local://{replica.resolve()}", token="local", token_expiry_unix_secs=int(time.time()) + 3600
            ) as group:
                group.start_download_file(hf_xet.XetFileInfo(xet_hash, size), str(tmp))
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(replica, ignore_errors=True)
            if tmp.exists():
                tmp.unlink()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _held(replica: Path) -> bool:
    """True while a process has this replica's index open (xet-core holds redb's flock on it)."""
    index = replica / _STORE / _INDEX_DB
    try:
        with open(index, "rb") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False
    except OSError:
        return False


def _wait_for_writers(fh: Any, index: Path) -> None:
    """Take the index's lock (redb's own, flock) so no upload changes it while we copy."""
    deadline = time.monotonic() + WRITER_WAIT_S
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise StorageError(503, "ServiceUnavailable", f"an upload has held the Xet index for {WRITER_WAIT_S:.0f} s; retry later") from None
            time.sleep(0.1)


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links, or another device
        shutil.copyfile(src, dest)
