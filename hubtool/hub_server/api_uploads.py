"""Upload endpoints of the local Hub: preupload, LFS batch/PUT/verify, commits, Xet tokens."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from hubtool.hub_server import validate
from hubtool.hub_server.errors import StorageError
from hubtool.hub_server.storage import RepoRef, wants_lfs

if TYPE_CHECKING:
    from hubtool.hub_server import HubState


class UploadsMixin:
    """Preupload, LFS, commit and Xet-token endpoints, for a HubHandler."""

    hub: "HubState"
    query: dict[str, list[str]]
    raw_path: str
    command: str

    def preupload(self, ref: RepoRef, rev: str) -> None:
        spec = self.body_json(required=True)
        self._require_commit(ref, rev, self._flag("create_pr"))
        _, files = self.hub.storage.files_at(ref, rev)
        items = spec.get("files")
        if not isinstance(items, list):
            raise StorageError(400, "BadRequest", "'files' must be a list")
        out = []
        for item in items:
            if not isinstance(item, dict):
                raise StorageError(400, "BadRequest", "each file must be an object {path, size, sample}")
            path = validate.file_path(item.get("path"))
            try:
                sample = base64.b64decode(item.get("sample") or "", validate=True)
            except (binascii.Error, ValueError):
                raise StorageError(400, "BadRequest", f"{path}: sample is not valid base64") from None
            lfs = wants_lfs(path, validate.size(item.get("size"), f"{path}: size"), sample)
            existing = files.get(path)
            oid = None
            if existing is not None and existing["lfs"] == lfs:
                oid = existing["sha256"] if lfs else existing["oid"]
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": out, "commitOid": None})

    def lfs_batch(self, ref: RepoRef) -> None:
        spec = self.body_json(required=True)
        if spec.get("operation") not in ("upload", "download") or not isinstance(spec.get("objects"), list):
            raise StorageError(400, "BadRequest", "LFS batch needs operation upload|download and a list of objects")
        upload = spec.get("operation") == "upload"
        if upload:
            # Blobs are content-addressed and inert until a commit names them: anyone who may
            # open a pull request may upload them (the commit itself checks write access).
            self._require_contributor(ref)
        else:
            self._require_read(ref)
        objects = []
        for obj in spec["objects"]:
            if not isinstance(obj, dict):
                raise StorageError(400, "BadRequest", "each object must be {oid, size}")
            oid = validate.oid(obj.get("oid"))
            size = obj.get("size")
            if not validate.is_size(size) or size > self.hub.max_upload:
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": f"size must be 0-{self.hub.max_upload} bytes"}})
                continue
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            base = f"{self.hub.url}/_hubtool/lfs/{oid}"
            # An object is this repo's only once its bytes were sent here: a blob stored for another
            # repo is asked for again (knowing a sha256 proves nothing).
            if upload and not (self.hub.storage.has_blob(oid) and self.hub.storage.owns(ref, oid)):
                scope = f"{ref.type}/{ref.repo_id}"
                query = urlencode({"repo": scope, "sig": self.hub.sign(oid, scope)})
                item["actions"] = {"upload": {"href": f"{base}?{query}"}, "verify": {"href": f"{base}/verify?{urlencode({'repo': scope})}"}}
            objects.append(item)
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {"Content-Type": "application/vnd.git-lfs+json"})

    def commit(self, ref: RepoRef, rev: str) -> None:
        raw = self.body()
        create_pr = self._flag("create_pr")
        author = self._require_commit(ref, rev, create_pr)
        try:
            lines = [validate.json_loads(line) for line in raw.decode().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(400, "BadRequest", f"commit payload is not NDJSON: {exc}") from None
        if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header" or not isinstance(lines[0].get("value"), dict):
            raise StorageError(400, "BadRequest", "commit payload must start with a header line")
        header = lines[0]["value"]
        summary, description, parent = header.get("summary") or "", header.get("description") or "", header.get("parentCommit")
        if not isinstance(summary, str) or not isinstance(description, str) or not (parent is None or isinstance(parent, str)):
            raise StorageError(400, "BadRequest", "header summary/description/parentCommit must be strings")
        commit_id, pr_num = self.hub.storage.apply_commit(
            ref, rev, title=summary, message=description, author=author, parent=parent, operations=lines[1:], create_pr=create_pr,
        )
        self._json(200, {
            "success": True, "commitOid": commit_id, "commitUrl": f"{self._repo_url(ref)}/commit/{commit_id}",
            "pullRequestUrl": f"{self._repo_url(ref)}/discussions/{pr_num}" if pr_num else None,
        })

    def xet_token(self, ref: RepoRef, rev: str, *, write: bool) -> None:
        if write:
            self._require_commit(ref, rev, self._flag("create_pr"))
            if rev != "None":
                self.hub.storage.resolve(ref, rev)
        else:
            self._require_read(ref)
        exp = int(time.time()) + 3600
        storage = self.hub.storage
        if write:
            cas = storage.xet.cas_url(storage.xet_store_id(ref))  # this repo's own store: uploads there are its own
        else:
            # A replica of only this revision's Xet files (the caller may read this repo): never the whole CAS.
            commit_id, files = storage.files_at(ref, rev)
            wanted = sorted({(e["sha256"], e["xet"]) for e in files.values() if e.get("xet")})
            store = storage.xet_store_id(ref)
            cas = f"local://{storage.xet.reader_replica(wanted, store, key=f'{store}/{commit_id}')}"
        token = "local-xet-write" if write else "local-xet-read"
        self._json(200, {"casUrl": cas, "accessToken": token, "exp": exp}, {
            "X-Xet-Cas-Url": cas, "X-Xet-Access-Token": token, "X-Xet-Token-Expiration": str(exp),
        })

    def lfs_put(self, oid: str) -> None:
        """PUT /_hubtool/lfs/OID?repo=&sig=: store an LFS upload; the repo it was signed for then owns it."""
        scope = self.query.get("repo", [None])[0]
        ref = self._scope_ref(scope)
        # The client PUTs to the batch answer's href without its token (a presigned URL):
        # with auth on, the href carries a signature only this server can make, for one repo.
        signed = scope is not None and hmac.compare_digest(self.query.get("sig", [""])[0], self.hub.sign(oid, scope))
        if self.hub.users is not None and not signed:
            if ref is None:
                raise StorageError(401, "Unauthorized", "an LFS upload needs the batch answer's signed URL")
            self._require_contributor(ref)
        stream = self._stream()
        self._consumed = True
        try:
            size = self.hub.storage.put_stream(oid, stream, self._length, max_size=self.hub.max_upload)
        except (StorageError, OSError):
            self.close_connection = True  # part of the body may still be in flight
            raise
        if ref is not None:
            self.hub.storage.own(ref, {oid})  # its bytes were sent to this repo: it owns them
        self._json(200, {"oid": oid, "size": size})

    def lfs_verify(self, oid: str) -> None:
        ref = self._scope_ref(self.query.get("repo", [None])[0])
        self.body()
        if not self.hub.storage.has_blob(oid) or (ref is not None and not self.hub.storage.owns(ref, oid)):
            raise StorageError(404, "EntryNotFound", f"LFS object {oid} not found")
        self._json(200, {"oid": oid})
