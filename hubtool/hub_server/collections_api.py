"""Collections on the local Hub: the `/api/collections` endpoints huggingface_hub's collection methods call
(create, get, list, add/update/delete item, delete), in the JSON shapes its `Collection` and
`CollectionItem` parse, plus a `/collections/{slug}` page.

All collections live in one JSON file under the root (`collections.json`), rewritten atomically under
the storage lock: a release makes a handful, not thousands. Private collections are visible to their
owner's namespace only; a repo item must exist and be readable by the caller when it is added.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtool.hub_server import validate
from hubtool.hub_server.errors import StorageError
from hubtool.hub_server.storage import RepoRef, write_json_atomic

ITEM_TYPES = ("model", "dataset", "space")
MAX_TITLE = 60  # the Hub's limit on a collection title
MAX_NOTE = 500  # and on an item's note
MAX_ITEMS = 1000
THEMES = ("orange", "blue", "green", "purple", "pink", "indigo")


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _slugify(title: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "-" for c in title)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")[:50] or "collection"


def _text(value: object, what: str, limit: int, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise StorageError(400, "BadRequest", f"{what} must be a non-empty string")
    if len(value) > limit or any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise StorageError(400, "BadRequest", f"{what} must be at most {limit} printable characters")
    return value


@dataclass(frozen=True)
class Caller:
    """Who asks: a user name and the namespaces they may write (None: anonymous); an open Hub lets anyone write anywhere."""

    name: str | None
    namespaces: tuple[str, ...]
    open_hub: bool = False

    def may_write(self, namespace: str) -> bool:
        return self.open_hub or namespace in self.namespaces

    @staticmethod
    def of(handler: Any) -> "Caller":
        user = handler._user()
        if user is None:
            return Caller(None, ())
        return Caller(user[0], (user[0], *user[1]), open_hub=handler.hub.users is None)


class Collections:
    """The collections of one local Hub root."""

    def __init__(self, root: Path, lock: threading.RLock) -> None:
        self.path = Path(root) / "collections.json"
        self._lock = lock

    # ------------------------------------------------------------------ store
    def _load(self) -> dict[str, dict[str, Any]]:
        import json

        if not self.path.is_file():
            return {}
        data = json.loads(self.path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, dict[str, Any]]) -> None:
        write_json_atomic(self.path, data)

    @staticmethod
    def _visible(c: dict[str, Any], caller: Caller) -> bool:
        return not c["private"] or caller.may_write(c["owner"]["name"])

    def _get(self, data: dict[str, dict[str, Any]], slug: str, caller: Caller) -> dict[str, Any]:
        c = data.get(slug)
        if c is None or not self._visible(c, caller):  # a private collection is as absent as a missing one
            raise StorageError(404, "NotFound", f"Collection {slug} not found")
        return c

    def _owned(self, data: dict[str, dict[str, Any]], slug: str, caller: Caller) -> dict[str, Any]:
        c = self._get(data, slug, caller)
        if not caller.may_write(c["owner"]["name"]):
            raise StorageError(403, "Forbidden", f"You don't have the rights to change collection {slug}")
        return c

    # ------------------------------------------------------------------ operations
    def create(self, caller: Caller, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        title = _text(body.get("title"), "title", MAX_TITLE, required=True)
        namespace = body.get("namespace") or caller.name
        if not isinstance(namespace, str) or not caller.may_write(validate.repo_part(namespace, "namespace")):
            raise StorageError(403, "Forbidden", f"You don't have the rights to create a collection in {namespace!r}")
        description = _text(body.get("description"), "description", 2000)
        private = body.get("private", False)
        if not isinstance(private, bool):
            raise StorageError(400, "BadRequest", "private must be true or false")
        with self._lock:
            data = self._load()
            for c in data.values():  # the Hub answers 409 with the existing slug for a title taken in a namespace
                if c["owner"]["name"] == namespace and c["title"] == title:
                    raise StorageError(409, "Conflict", f"A collection titled {title!r} already exists in {namespace}",
                                       extra={"slug": c["slug"]})
            slug = f"{namespace}/{_slugify(title)}-{secrets.token_hex(12)}"
            c = {
                "slug": slug, "title": title, "description": description, "private": private,
                "owner": {"name": namespace, "type": "user" if namespace == caller.name else "org"},
                "items": [], "lastUpdated": _now(), "position": sum(1 for x in data.values() if x["owner"]["name"] == namespace),
                "theme": THEMES[len(data) % len(THEMES)], "upvotes": 0,
            }
            data[slug] = c
            self._save(data)
        return 200, self.shown(c)

    def get(self, caller: Caller, slug: str) -> dict[str, Any]:
        with self._lock:
            return self.shown(self._get(self._load(), slug, caller))

    def list(self, caller: Caller, *, owner: str | None = None, item: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            found = [c for c in self._load().values() if self._visible(c, caller)]
        if owner:
            found = [c for c in found if c["owner"]["name"] == owner]
        if item:  # "models/org/name"
            kind, _, repo = item.partition("s/")
            found = [c for c in found if any(i["type"] == kind and i["id"] == repo for i in c["items"])]
        found.sort(key=lambda c: c["lastUpdated"], reverse=True)
        # the listing has no "position" (the client numbers the results itself), and at most 4 items each, as on the Hub
        return [{k: v for k, v in self.shown(c, items=4).items() if k != "position"} for c in found[:max(1, min(limit, 100))]]

    def delete(self, caller: Caller, slug: str) -> None:
        with self._lock:
            data = self._load()
            self._owned(data, slug, caller)
            del data[slug]
            self._save(data)

    def add_item(self, caller: Caller, slug: str, body: dict[str, Any], can_read: Any) -> tuple[int, dict[str, Any]]:
        """CAN_READ(RepoRef) raises for a repo the caller may not see (the handler's own access check)."""
        item = body.get("item")
        if not isinstance(item, dict) or item.get("type") not in ITEM_TYPES or not isinstance(item.get("id"), str):
            raise StorageError(400, "BadRequest", f"item must be {{'type': one of {', '.join(ITEM_TYPES)}, 'id': 'org/name'}}")
        ref = RepoRef(item["type"], item["id"])  # validates the id
        can_read(ref)
        note = _text(body.get("note"), "note", MAX_NOTE)
        with self._lock:
            data = self._load()
            c = self._owned(data, slug, caller)
            if any(i["type"] == ref.type and i["id"].lower() == ref.repo_id.lower() for i in c["items"]):
                raise StorageError(409, "Conflict", f"{ref.repo_id} is already in collection {slug}")
            if len(c["items"]) >= MAX_ITEMS:
                raise StorageError(400, "BadRequest", f"a collection holds at most {MAX_ITEMS} items")
            c["items"].append({"_id": secrets.token_hex(12), "id": ref.repo_id, "type": ref.type,
                               "position": len(c["items"]), **({"note": {"text": note, "html": note}} if note else {})})
            c["lastUpdated"] = _now()
            self._save(data)
        return 200, self.shown(c)

    def update_item(self, caller: Caller, slug: str, object_id: str, body: dict[str, Any]) -> None:
        note = _text(body.get("note"), "note", MAX_NOTE)
        position = body.get("position")
        if position is not None and (not isinstance(position, int) or isinstance(position, bool) or position < 0):
            raise StorageError(400, "BadRequest", "position must be a non-negative integer")
        with self._lock:
            data = self._load()
            c = self._owned(data, slug, caller)
            items = c["items"]
            match = [i for i in items if i["_id"] == object_id]
            if not match:
                raise StorageError(404, "NotFound", f"Item {object_id} not found in collection {slug}")
            it = match[0]
            if "note" in body:
                if note:
                    it["note"] = {"text": note, "html": note}
                else:
                    it.pop("note", None)
            if position is not None:
                items.remove(it)
                items.insert(min(position, len(items)), it)
            for n, i in enumerate(items):
                i["position"] = n
            c["lastUpdated"] = _now()
            self._save(data)

    def delete_item(self, caller: Caller, slug: str, object_id: str) -> None:
        with self._lock:
            data = self._load()
            c = self._owned(data, slug, caller)
            before = len(c["items"])
            c["items"] = [i for i in c["items"] if i["_id"] != object_id]
            if len(c["items"]) == before:
                raise StorageError(404, "NotFound", f"Item {object_id} not found in collection {slug}")
            for n, i in enumerate(c["items"]):
                i["position"] = n
            c["lastUpdated"] = _now()
            self._save(data)

    @staticmethod
    def shown(c: dict[str, Any], items: int | None = None) -> dict[str, Any]:
        """The API's view (the owner as a name, as huggingface_hub's Collection expects)."""
        return {**c, "owner": c["owner"]["name"], "items": c["items"] if items is None else c["items"][:items]}


def route(handler: Any, method: str, segs: list[str]) -> None:
    """Answer `/api/collections[/...]` on HANDLER (a HubHandler)."""
    hub = handler.hub
    caller = Caller.of(handler)
    store: Collections = hub.collections

    def need_user() -> None:
        if caller.name is None:
            raise StorageError(401, "Unauthorized", "Invalid credentials in Authorization header")

    if not segs:
        if method == "GET":
            q = handler.query
            limit_raw = q.get("limit", ["100"])[0]
            limit = int(limit_raw) if limit_raw.isdigit() and len(limit_raw) < 6 else 100
            return handler._json(200, store.list(caller, owner=q.get("owner", [None])[0], item=q.get("item", [None])[0], limit=limit))
        if method == "POST":
            need_user()
            status, obj = store.create(caller, handler.body_json(required=True))
            return handler._json(status, obj)
    elif len(segs) >= 2:
        slug = f"{segs[0]}/{segs[1]}"
        rest = segs[2:]
        if not rest and method == "GET":
            return handler._json(200, store.get(caller, slug))
        if not rest and method == "DELETE":
            need_user()
            store.delete(caller, slug)
            return handler._json(200, {})
        if rest == ["items"] and method == "POST":
            need_user()
            status, obj = store.add_item(caller, slug, handler.body_json(required=True), handler._require_read)
            return handler._json(status, obj)
        if len(rest) == 2 and rest[0] == "items" and method in ("PATCH", "DELETE"):
            need_user()
            if method == "PATCH":
                store.update_item(caller, slug, rest[1], handler.body_json(required=True))
            else:
                store.delete_item(caller, slug, rest[1])
            return handler._json(200, {})
    raise StorageError(404, "NotFound", f"no such collections endpoint: {method} /api/collections/{'/'.join(segs)}")


def page(handler: Any, slug: str) -> str:
    """`/collections/{slug}`: the collection's items in order, each linking to its repo page, with its note."""
    from hubtool.hub_server.web import _e, _layout, _u

    c = handler.hub.collections.get(Caller.of(handler), slug)
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}
    rows = "".join(
        f"<tr><td><a href='{_u('/' + prefix[i['type']] + i['id'])}'>{_e(i['id'])}</a></td><td>{_e(i['type'])}</td>"
        f"<td>{_e((i.get('note') or {}).get('text', ''))}</td></tr>"
        for i in c["items"]
    )
    table = f"<table id='collection-items'><tr><th>Item</th><th>Type</th><th>Note</th></tr>{rows}</table>" if rows else "<p>No items yet.</p>"
    desc = f"<p>{_e(c['description'])}</p>" if c.get("description") else ""
    return _layout(c["title"], f"<h1>{_e(c['title'])}</h1><p class='muted'>collection by {_e(c['owner'])}"
                                f"{' · private' if c['private'] else ''}</p>{desc}{table}")
