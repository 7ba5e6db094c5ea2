"""Repo endpoints of the local Hub: create/delete/move/settings, refs, and reads (info, tree, paths-info, commits, resolve)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from hubtool.hub_server import validate
from hubtool.hub_server.access import OPEN_USER
from hubtool.hub_server.errors import StorageError
from hubtool.hub_server.storage import RepoRef, lfs_pointer

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")

if TYPE_CHECKING:
    from hubtool.hub_server import HubState


class ReposMixin:
    """Repos, refs and file reads, for a HubHandler."""

    hub: "HubState"
    query: dict[str, list[str]]
    raw_path: str
    command: str

    def whoami(self) -> None:
        name, orgs = self._require_user()
        self._json(200, {
            "type": "user", "name": name, "fullname": name,
            "orgs": [{"type": "org", "name": o} for o in orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
        })

    def _ref_from_body(self, spec: dict[str, Any]) -> RepoRef:
        """The repo a create/delete body names: {name, organization?, type?} (the caller's namespace by default)."""
        repo_type = spec.get("type") or "model"
        validate.repo_type(repo_type)
        name = spec.get("name")
        if not isinstance(name, str):
            raise StorageError(400, "BadRequest", "'name' must be a string")
        namespace = spec.get("organization")
        if namespace is None:
            user = self._user()
            namespace = user[0] if user else OPEN_USER
        if not isinstance(namespace, str):
            raise StorageError(400, "BadRequest", "'organization' must be a string")
        return self._ref(repo_type, f"{namespace}/{name}")

    def create_repo(self) -> None:
        spec = self.body_json(required=True)
        ref = self._ref_from_body(spec)
        validate.not_reserved(ref.namespace)
        author = self._require_write(ref)
        private = spec.get("private") is True or spec.get("visibility") == "private"
        if not self.hub.storage.create_repo(ref, private=private, author=author):
            return self._error(409, "Conflict", "You already created this model repo", {"url": self._repo_url(ref)})
        self._json(200, {"url": self._repo_url(ref), "name": ref.repo_id, "id": ref.repo_id})

    def delete_repo(self) -> None:
        ref = self._ref_from_body(self.body_json(required=True))
        self._require_write(ref)
        self.hub.storage.delete_repo(ref)
        self._json(200, {})

    def move_repo(self) -> None:
        spec = self.body_json(required=True)
        repo_type = validate.repo_type(spec.get("type") or "model")
        src, dst = self._ref(repo_type, spec.get("fromRepo")), self._ref(repo_type, spec.get("toRepo"))
        validate.not_reserved(dst.namespace)
        self._require_write(src)
        self._require_write(dst)
        self.hub.storage.move_repo(src, dst)
        self._json(200, {})

    def settings(self, ref: RepoRef) -> None:
        spec = self.body_json(required=True)
        self._require_write(ref)
        unknown = sorted(set(spec) - {"private", "visibility", "gated"})
        if unknown or not spec:
            raise StorageError(400, "BadRequest", f"unsupported settings {unknown[:5]}: the local Hub knows visibility, private, gated=false")
        if "gated" in spec and spec["gated"] not in (False, None):
            raise StorageError(400, "BadRequest", "gated repos are not supported by the local Hub")
        visibility = spec.get("visibility")
        if visibility is not None and visibility not in ("public", "private"):
            raise StorageError(400, "BadRequest", f"invalid visibility {str(visibility)[:20]!r}: public or private")
        private = spec.get("private")
        if private is not None and not isinstance(private, bool):
            raise StorageError(400, "BadRequest", "'private' must be true or false")
        if visibility is not None:
            private = visibility == "private"
        if private is not None:
            self.hub.storage.set_private(ref, private)
        self._json(200, {})

    def list_repos(self, repo_type: str) -> None:
        """GET /api/models|datasets|spaces?author=&search=&limit=: repos this caller can see."""
        author = self.query.get("author", [None])[0]
        search = (self.query.get("search", [""])[0] or "").lower()
        limit = int(self.query.get("limit", ["1000"])[0])
        out = []
        for ref, meta in self.hub.storage.list_repos(repo_type):
            if author and ref.namespace != author or search and search not in ref.repo_id.lower() or not self._readable(ref):
                continue
            out.append({"_id": ref.repo_id, "id": ref.repo_id, "author": ref.namespace, "private": bool(meta.get("private")),
                        "createdAt": meta["created"], "downloads": 0, "likes": 0, "tags": []})
            if len(out) >= limit:
                break
        self._json(200, out)

    def repo_info(self, ref: RepoRef, rev: str) -> None:
        self._require_read(ref)
        meta = self.hub.storage.repo_meta(ref)
        commit_id, files = self.hub.storage.files_at(ref, rev)
        commit = self.hub.storage.commit(ref, commit_id)
        siblings = []
        for path, entry in sorted(files.items()):
            sib: dict[str, Any] = {"rfilename": path, "size": entry["size"], "blobId": entry["oid"]}
            if entry["lfs"]:
                sib["lfs"] = {"size": entry["size"], "sha256": entry["sha256"], "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
            siblings.append(sib)
        self._json(200, {
            "_id": ref.repo_id, "id": ref.repo_id, "modelId": ref.repo_id, "author": ref.namespace,
            "sha": commit_id, "lastModified": commit["date"], "createdAt": meta["created"],
            "private": bool(meta.get("private")), "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        })

    def list_refs(self, ref: RepoRef) -> None:
        self._require_read(ref)
        refs = self.hub.storage.refs(ref)
        prs = []
        if self._flag("include_prs"):
            prs = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c} for n, c in sorted(refs["prs"].items(), key=lambda kv: int(kv[0]))]
        self._json(200, {
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in sorted(refs["branches"].items())],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in sorted(refs["tags"].items())],
            "converts": [],
            "pullRequests": prs,
        })

    def create_branch(self, ref: RepoRef, branch: str) -> None:
        spec = self.body_json()
        self._require_write(ref)
        self.hub.storage.create_branch(ref, branch, spec.get("startingPoint"))
        self._json(200, {})

    def create_tag(self, ref: RepoRef, rev: str) -> None:
        spec = self.body_json(required=True)
        self._require_write(ref)
        self.hub.storage.create_tag(ref, spec.get("tag"), rev)
        self._json(200, {})

    def delete_tag(self, ref: RepoRef, tag: str) -> None:
        self._require_write(ref)
        self.hub.storage.delete_tag(ref, tag)
        self._json(200, {})

    def delete_branch(self, ref: RepoRef, branch: str) -> None:
        self._require_write(ref)
        self.hub.storage.delete_branch(ref, branch)
        self._json(200, {})

    def super_squash(self, ref: RepoRef, branch: str) -> None:
        spec = self.body_json()
        author = self._require_write(ref)
        message = spec.get("message") or f"Super-squash branch '{branch}'"
        if not isinstance(message, str):
            raise StorageError(400, "BadRequest", "'message' must be a string")
        commit_id = self.hub.storage.squash(ref, branch, message, author)
        self._json(200, {"commitId": commit_id})

    def _entry_json(self, path: str, entry: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
        if entry["lfs"]:
            out["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
        if entry.get("xet"):
            out["xetHash"] = entry["xet"]
        return out

    def tree(self, ref: RepoRef, rev: str, path: str) -> None:
        """Files then folders, in pages with a `Link: <...>; rel="next"` header; `expand` adds lastCommit."""
        self._require_read(ref)
        commit_id, files = self.hub.storage.files_at(ref, rev)
        recursive = self._flag("recursive")
        expand = self._flag("expand")
        path = path.strip("/")
        if path:
            validate.file_path(path)
        prefix = f"{path}/" if path else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            raise StorageError(404, "EntryNotFound", f"{path} does not exist on {rev}")
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for name in sorted(files):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            for depth in range(1, len(parts)):
                if depth == 1 or recursive:
                    dirs.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                out.append(self._entry_json(name, files[name]))
        out += [{"type": "directory", "path": d, "size": 0, "oid": "0" * 40} for d in sorted(dirs)]
        page_size = self.hub.tree_page_size_expand if expand else self.hub.tree_page_size
        cursor = self.query.get("cursor", ["0"])[0]
        start = int(cursor) if cursor.isdigit() else 0
        page = out[start:start + page_size]
        headers = {}
        if start + page_size < len(out):
            query = urlencode({**{k: v[0] for k, v in self.query.items()}, "cursor": start + page_size})
            headers["Link"] = f'<{self.hub.url}{self.raw_path}?{query}>; rel="next"'
        if expand:
            last = self.hub.storage.last_commits(ref, commit_id, [e["path"] for e in page])
            for entry in page:
                entry["lastCommit"] = last.get(entry["path"])
        self._json(200, page, headers)

    def paths_info(self, ref: RepoRef, rev: str) -> None:
        spec = self.body_json()
        self._require_read(ref)
        commit_id, files = self.hub.storage.files_at(ref, rev)
        paths = spec.get("paths", [])
        paths = [paths] if isinstance(paths, str) else paths
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise StorageError(400, "BadRequest", "'paths' must be a list of strings")
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append(self._entry_json(path, files[path]))
            elif path and any(p.startswith(path + "/") for p in files):
                out.append({"type": "directory", "path": path, "size": 0, "oid": "0" * 40})
        expand = spec.get("expand") in (True, "true", "1", "True")
        if expand:
            last = self.hub.storage.last_commits(ref, commit_id, [e["path"] for e in out])
            for entry in out:
                entry["lastCommit"] = last.get(entry["path"])
        self._json(200, out)

    def commits(self, ref: RepoRef, rev: str) -> None:
        self._require_read(ref)
        self._json(200, [
            {"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"], "authors": [{"user": c["author"]}]}
            for c in self.hub.storage.history(ref, rev)
        ])

    def resolve(self, ref: RepoRef, rev: str, path: str) -> None:
        self._require_read(ref)
        commit_id, files = self.hub.storage.files_at(ref, rev)
        entry = files.get(path)
        if entry is None:
            raise StorageError(404, "EntryNotFound", f"{path} does not exist on {rev}")
        headers = {"X-Repo-Commit": commit_id, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
        if entry.get("xet"):
            headers["X-Xet-Hash"] = entry["xet"]
            headers["X-Xet-Refresh-Route"] = f"{self.hub.url}/api/{ref.type}s/{ref.repo_id}/xet-read-token/{commit_id}"
        self._send_blob(entry, headers)

    def _send_blob(self, entry: dict[str, Any], headers: dict[str, str]) -> None:
        size = entry["size"]
        if self.command == "HEAD":
            self.send_response(200)
            for key, value in {**headers, "Content-Length": str(size), "Content-Type": "application/octet-stream"}.items():
                self.send_header(key, value)
            self.end_headers()
            return
        blob = self.hub.storage.open_blob(entry)
        start, end, status = 0, size - 1, 200
        match = _RANGE_RE.match(self.headers.get("Range", "").strip())
        if match and not any(match.groups()):  # `bytes=-` names no range at all (RFC 9110 14.1.1)
            return self._error(416, "RangeNotSatisfiable", f"range {self.headers['Range']} names no bytes", {"size": size})
        if match and size > 0:
            lo, hi = match.groups()
            if lo:
                start, end = int(lo), min(int(hi), size - 1) if hi else size - 1
            elif hi:
                start, end = max(size - int(hi), 0), size - 1
            if start >= size or start > end:
                return self._error(416, "RangeNotSatisfiable", f"range {self.headers['Range']} outside {size} bytes")
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(length), "Content-Type": "application/octet-stream"}.items():
            self.send_header(key, value)
        self.end_headers()
        with open(blob, "rb") as fh:
            fh.seek(start)
            left = length
            while left > 0:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
