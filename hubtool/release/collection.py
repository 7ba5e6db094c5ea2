"""One Hub collection per release: its repos in the order users pick them (fp16, adapter, GPTQ, GGUF),
each with a one-line note. Re-running a release finds the same collection (by owner and title) and
only adds, re-notes or re-orders what differs, so nothing changes when nothing did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from hubtool.artifacts import ArtifactKind

ORDER = (ArtifactKind.FP16, ArtifactKind.ADAPTER, ArtifactKind.GPTQ, ArtifactKind.GGUF)
NOTES = {
    ArtifactKind.FP16: "fp16 weights (the merged model)",
    ArtifactKind.ADAPTER: "the PEFT adapter, to apply on the base model",
    ArtifactKind.GPTQ: "GPTQ quantizations (one preset per branch)",
    ArtifactKind.GGUF: "GGUF quantizations for llama.cpp",
}


@dataclass(frozen=True)
class CollectionItemPlan:
    repo_id: str
    kind: ArtifactKind
    note: str


@dataclass(frozen=True)
class CollectionResult:
    slug: str
    url: str
    created: bool
    changes: int  # items added, re-noted or moved this run


def collection_items(targets: Sequence[Any]) -> list[CollectionItemPlan]:
    """One item per repo (a GPTQ repo's branches are one repo), in ORDER."""
    seen: dict[str, CollectionItemPlan] = {}
    for kind in ORDER:
        for t in targets:
            if t.key is kind and t.repo_id not in seen:
                seen[t.repo_id] = CollectionItemPlan(t.repo_id, kind, NOTES[kind])
    return list(seen.values())


def publish_collection(title: str, namespace: str, items: Sequence[CollectionItemPlan], *, description: str | None = None,
                       private: bool = False, endpoint: str | None = None, token: str | None = None) -> CollectionResult:
    """Create (or find) NAMESPACE's collection TITLE and make its items exactly ITEMS' repos in order."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    created = False
    found = [c for c in api.list_collections(owner=namespace, limit=100) if c.title == title]
    if found:
        collection = api.get_collection(found[0].slug)
    else:
        collection = api.create_collection(title, namespace=namespace, description=description, private=private, exists_ok=True)
        created = True
    changes = 0
    have = {(i.item_type, i.item_id): i for i in collection.items}
    for it in items:
        existing = have.get(("model", it.repo_id))
        if existing is None:
            api.add_collection_item(collection.slug, it.repo_id, "model", note=it.note, exists_ok=True)
            changes += 1
        elif existing.note != it.note:
            api.update_collection_item(collection.slug, existing.item_object_id, note=it.note)
            changes += 1
    collection = api.get_collection(collection.slug)
    wanted = [it.repo_id for it in items]
    for pos, repo_id in enumerate(wanted):  # our repos first, in ORDER; items a maintainer added stay after them
        current = [i for i in collection.items if i.item_type == "model" and i.item_id in wanted]
        if pos < len(current) and current[pos].item_id != repo_id:
            item = next(i for i in collection.items if i.item_type == "model" and i.item_id == repo_id)
            api.update_collection_item(collection.slug, item.item_object_id, position=pos)
            changes += 1
            collection = api.get_collection(collection.slug)
    return CollectionResult(collection.slug, collection.url, created, changes)
