"""Hub collections: the local Hub's /api/collections endpoints through huggingface_hub's own collection
methods, and `publish_collection` (one collection per release, idempotent)."""

from __future__ import annotations

import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from hubtool.artifacts import ArtifactKind
from hubtool.hub_server import serve_in_thread
from hubtool.release.collection import collection_items, publish_collection

ALICE, BOB = "hf_ALICEcollectionTOKEN0123456", "hf_BOBcollectionTOKEN01234567"
USERS = {ALICE: ("alice", ["acme"]), BOB: ("bob", [])}


@pytest.fixture
def hub(tmp_path):
    with serve_in_thread(tmp_path / "hub", users=USERS) as h:
        api = HfApi(endpoint=h.url, token=ALICE)
        for name in ("m", "m-peft", "m-GPTQ", "m-GGUF"):
            api.create_repo(f"acme/{name}")
        api.create_repo("bob/secret", private=True, token=BOB)
        yield h


def targets(*pairs):
    return [SimpleNamespace(key=k, repo_id=r) for k, r in pairs]


RELEASE = targets((ArtifactKind.GGUF, "acme/m-GGUF"), (ArtifactKind.GPTQ, "acme/m-GPTQ"), (ArtifactKind.FP16, "acme/m"),
                  (ArtifactKind.GPTQ, "acme/m-GPTQ"), (ArtifactKind.ADAPTER, "acme/m-peft"))


def test_items_are_one_per_repo_in_the_order_users_pick_them():
    items = collection_items(RELEASE)
    assert [(i.repo_id, i.kind) for i in items] == [("acme/m", ArtifactKind.FP16), ("acme/m-peft", ArtifactKind.ADAPTER),
                                                     ("acme/m-GPTQ", ArtifactKind.GPTQ), ("acme/m-GGUF", ArtifactKind.GGUF)]
    assert all(i.note for i in items)


def test_client_collection_methods_against_the_local_hub(hub):
    api = HfApi(endpoint=hub.url, token=ALICE)
    c = api.create_collection("My release", namespace="acme", description="all of it")
    assert c.slug.startswith("acme/my-release-") and c.owner == "acme" and c.items == [] and c.url == f"{hub.url}/collections/{c.slug}"
    again = api.create_collection("My release", namespace="acme", exists_ok=True)  # 409 carries the slug; the client fetches it
    assert again.slug == c.slug
    with pytest.raises(HfHubHTTPError) as e:
        api.create_collection("My release", namespace="acme")
    assert e.value.response.status_code == 409
    api.add_collection_item(c.slug, "acme/m", "model", note="fp16")
    api.add_collection_item(c.slug, "acme/m-GGUF", "model")
    api.add_collection_item(c.slug, "acme/m", "model", exists_ok=True)
    got = api.get_collection(c.slug)
    assert [(i.item_id, i.note, i.position) for i in got.items] == [("acme/m", "fp16", 0), ("acme/m-GGUF", None, 1)]
    api.update_collection_item(c.slug, got.items[1].item_object_id, note="gguf", position=0)
    got = api.get_collection(c.slug)
    assert [(i.item_id, i.note) for i in got.items] == [("acme/m-GGUF", "gguf"), ("acme/m", "fp16")]
    assert [x.slug for x in api.list_collections(owner="acme")] == [c.slug]
    assert [x.slug for x in api.list_collections(item="models/acme/m-GGUF")] == [c.slug]
    assert list(api.list_collections(owner="bob")) == []
    api.delete_collection_item(c.slug, got.items[0].item_object_id)
    assert [i.item_id for i in api.get_collection(c.slug).items] == ["acme/m"]
    page = urllib.request.urlopen(f"{hub.url}/collections/{c.slug}", timeout=10).read().decode()
    assert "My release" in page and "/acme/m" in page and "fp16" in page
    api.delete_collection(c.slug)
    with pytest.raises(HfHubHTTPError) as e:
        api.get_collection(c.slug)
    assert e.value.response.status_code == 404


def test_collection_access_is_checked(hub):
    alice, bob, anon = (HfApi(endpoint=hub.url, token=t) for t in (ALICE, BOB, False))
    with pytest.raises(HfHubHTTPError) as e:  # bob can't create in acme
        bob.create_collection("x", namespace="acme")
    assert e.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as e:  # nobody without a token
        anon.create_collection("x", namespace="acme")
    assert e.value.response.status_code == 401
    c = alice.create_collection("Ours", namespace="acme")
    with pytest.raises(HfHubHTTPError) as e:  # bob can read a public collection but not change it
        bob.add_collection_item(c.slug, "acme/m", "model")
    assert e.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as e:  # a private repo of someone else can't be added (nor its existence learned)
        alice.add_collection_item(c.slug, "bob/secret", "model")
    assert e.value.response.status_code == 404
    with pytest.raises(HfHubHTTPError) as e:
        alice.add_collection_item(c.slug, "acme/missing", "model")
    assert e.value.response.status_code == 404
    private = alice.create_collection("Hidden", namespace="acme", private=True)
    for api in (bob, anon):
        with pytest.raises(HfHubHTTPError) as e:
            api.get_collection(private.slug)
        assert e.value.response.status_code == 404
        assert private.slug not in {x.slug for x in api.list_collections(owner="acme")}
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(f"{hub.url}/collections/{private.slug}", timeout=10)
    assert he.value.code == 404
    with pytest.raises(HfHubHTTPError) as e:  # a title over the Hub's 60 characters
        alice.create_collection("t" * 61, namespace="acme")
    assert e.value.response.status_code == 400


def test_publish_collection_is_idempotent_and_repairs_order_and_notes(hub):
    items = collection_items(RELEASE)
    first = publish_collection("m", "acme", items, description="release m", endpoint=hub.url, token=ALICE)
    assert first.created and first.changes == 4
    api = HfApi(endpoint=hub.url, token=ALICE)
    got = api.get_collection(first.slug)
    assert [i.item_id for i in got.items] == ["acme/m", "acme/m-peft", "acme/m-GPTQ", "acme/m-GGUF"]
    assert [i.note for i in got.items] == [i.note for i in items]
    mark = len(hub.requests)
    again = publish_collection("m", "acme", items, endpoint=hub.url, token=ALICE)
    assert (again.slug, again.created, again.changes) == (first.slug, False, 0)
    assert not [r for r in hub.requests[mark:] if r[0] in ("POST", "PATCH", "DELETE")]  # nothing written on a no-op re-run
    # a maintainer moved GGUF to the top and cleared a note: the next release puts them back
    api.update_collection_item(first.slug, got.items[3].item_object_id, position=0)
    api.update_collection_item(first.slug, got.items[1].item_object_id, note="")
    fixed = publish_collection("m", "acme", items, endpoint=hub.url, token=ALICE)
    assert fixed.changes >= 2
    got = api.get_collection(first.slug)
    assert [i.item_id for i in got.items] == ["acme/m", "acme/m-peft", "acme/m-GPTQ", "acme/m-GGUF"]
    assert [i.note for i in got.items] == [i.note for i in items]
    assert len(list(api.list_collections(owner="acme"))) == 1
