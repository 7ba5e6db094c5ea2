"""The local Hub against the real huggingface_hub client, in Xet and classic LFS modes."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

from hubtool.hub_server import inject_fault, serve_in_thread
from hubtool.hub_server.storage import LFS_MIN_SIZE

TOKEN = "hf_TESTtokenNEVERshown0123456789"


def make_folder(root: Path, seed: int = 0) -> Path:
    """Small text files, an LFS-by-suffix file and an LFS-by-size (>= 10 MB) file in a subfolder."""
    import random

    rng = random.Random(seed)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n# test model\n")
    (root / "config.json").write_text(json.dumps({"hidden_size": 8, "seed": seed}))
    (root / "model.safetensors").write_bytes(rng.randbytes(300_000))
    (root / "sub" / "large.dat").write_bytes(rng.randbytes(LFS_MIN_SIZE + 123))
    (root / "sub" / "notes.txt").write_text("hello\n")
    return root


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts}


def test_upload_list_download_roundtrip(local_hub, tmp_path):
    api = HfApi(endpoint=local_hub.url, token=TOKEN)
    src = make_folder(tmp_path / "src")
    assert api.create_repo("acme/tiny", exist_ok=True).endswith("/acme/tiny")
    assert api.create_repo("acme/tiny", exist_ok=True).endswith("/acme/tiny")  # exist_ok reads the 409 body
    api.create_branch("acme/tiny", branch="gptq/4bit-32g", exist_ok=True)
    api.create_branch("acme/tiny", branch="gptq/4bit-32g", exist_ok=True)
    main_commit = api.upload_folder(folder_path=src, repo_id="acme/tiny", commit_message="main upload")
    (src / "config.json").write_text('{"variant": "branch"}')
    branch_commit = api.upload_folder(folder_path=src, repo_id="acme/tiny", revision="gptq/4bit-32g")

    refs = {b.name: b.target_commit for b in api.list_repo_refs("acme/tiny").branches}
    assert refs == {"main": main_commit.oid, "gptq/4bit-32g": branch_commit.oid}
    expected = {".gitattributes", *files_of(src)}
    assert set(api.list_repo_files("acme/tiny")) == expected
    assert set(api.list_repo_files("acme/tiny", revision="gptq/4bit-32g")) == expected
    tree = {e.path: e for e in api.list_repo_tree("acme/tiny", recursive=True) if hasattr(e, "blob_id")}
    assert tree["model.safetensors"].lfs is not None and tree["sub/large.dat"].lfs is not None
    assert tree["config.json"].lfs is None and tree["sub/notes.txt"].lfs is None
    if local_hub.mode == "xet":
        assert tree["sub/large.dat"].xet_hash and len(tree["sub/large.dat"].xet_hash) == 64
    else:
        assert tree["sub/large.dat"].xet_hash is None
    assert [c.title for c in api.list_repo_commits("acme/tiny")] == ["main upload", "initial commit"]

    branch_dir = Path(snapshot_download("acme/tiny", revision="gptq/4bit-32g", endpoint=local_hub.url, token=TOKEN, cache_dir=tmp_path / "dl"))
    got = files_of(branch_dir)
    got.pop(".gitattributes")
    assert got == files_of(src)
    main_cfg = hf_hub_download("acme/tiny", "config.json", endpoint=local_hub.url, token=TOKEN, cache_dir=tmp_path / "dl")
    assert json.loads(Path(main_cfg).read_text()) == {"hidden_size": 8, "seed": 0}

    paths = [p for _, p in local_hub.requests]
    if local_hub.mode == "xet":
        assert any("/xet-write-token/" in p for p in paths) and any("/xet-read-token/" in p for p in paths)
        assert not any("/lfs/objects/batch" in p for p in paths)
    else:
        assert any(p.endswith("/info/lfs/objects/batch") for p in paths)
        assert not any("xet-" in p for p in paths)


def test_unchanged_reupload_makes_no_commit(local_hub, tmp_path):
    api = HfApi(endpoint=local_hub.url, token=TOKEN)
    src = make_folder(tmp_path / "src")
    api.create_repo("acme/noop")
    first = api.upload_folder(folder_path=src, repo_id="acme/noop")
    before = len(local_hub.requests)
    again = api.upload_folder(folder_path=src, repo_id="acme/noop")
    assert again.oid == first.oid  # the client skips unchanged files: no new commit at all
    assert len(api.list_repo_commits("acme/noop")) == 2
    new_paths = [p for _, p in local_hub.requests[before:]]
    assert not any("/commit/" in p for p in new_paths)
    assert not any(p.startswith("/_hubtool/lfs/") for p in new_paths)  # no LFS bytes re-sent


def test_overwrite_with_deletes(local_hub, tmp_path):
    api = HfApi(endpoint=local_hub.url, token=TOKEN)
    src = make_folder(tmp_path / "src")
    api.create_repo("acme/overwrite")
    api.upload_folder(folder_path=src, repo_id="acme/overwrite")
    (src / "sub" / "notes.txt").unlink()
    (src / "model.safetensors").write_bytes(os.urandom(1000))
    api.upload_folder(folder_path=src, repo_id="acme/overwrite", delete_patterns="*")
    # the client never deletes .gitattributes; everything else missing locally is gone
    assert set(api.list_repo_files("acme/overwrite")) == {".gitattributes", *files_of(src)}
    out = hf_hub_download("acme/overwrite", "model.safetensors", endpoint=local_hub.url, cache_dir=tmp_path / "dl")
    assert Path(out).read_bytes() == (src / "model.safetensors").read_bytes()


def test_plain_http_get_with_range(local_hub, tmp_path):
    """Non-hf clients (curl, llama.cpp) get bytes even for Xet-stored files; Range works."""
    api = HfApi(endpoint=local_hub.url)
    src = make_folder(tmp_path / "src")
    api.create_repo("acme/plain")
    api.upload_folder(folder_path=src, repo_id="acme/plain")
    data = (src / "sub" / "large.dat").read_bytes()
    url = f"{local_hub.url}/acme/plain/resolve/main/sub/large.dat"
    with urllib.request.urlopen(url) as resp:
        assert resp.read() == data
    req = urllib.request.Request(url, headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 206 and resp.read() == data[100:200]


def test_503_on_upload_is_retried(local_hub, tmp_path):
    api = HfApi(endpoint=local_hub.url)
    src = make_folder(tmp_path / "src")
    api.create_repo("acme/flaky")
    # The endpoint that carries the upload in each mode: the LFS PUT, or preupload before Xet.
    pattern = r"^/_hubtool/lfs/[0-9a-f]{64}$" if local_hub.mode == "lfs" else r"/preupload/"
    rule = local_hub.inject_fault("PUT" if local_hub.mode == "lfs" else "POST", pattern, 503, times=2)
    api.upload_folder(folder_path=src, repo_id="acme/flaky")
    assert rule.hits == 2 and rule.remaining == 0
    got = Path(snapshot_download("acme/flaky", endpoint=local_hub.url, cache_dir=tmp_path / "dl"))
    assert (got / "sub" / "large.dat").read_bytes() == (src / "sub" / "large.dat").read_bytes()


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_stale_parent_commit_is_412(local_hub, tmp_path):
    from huggingface_hub import CommitOperationAdd

    api = HfApi(endpoint=local_hub.url)
    api.create_repo("acme/race")
    first = api.list_repo_commits("acme/race")[0].commit_id
    api.upload_file(path_or_fileobj=b"one", path_in_repo="a.txt", repo_id="acme/race")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit("acme/race", [CommitOperationAdd("b.txt", b"two")], commit_message="x", parent_commit=first)
    assert err.value.response.status_code == 412
    api.create_tag("acme/race", tag="v1.0", revision=first)
    assert [(t.name, t.target_commit) for t in api.list_repo_refs("acme/race").tags] == [("v1.0", first)]
    assert api.list_repo_files("acme/race", revision="v1.0") == [".gitattributes"]


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_fault_http_api_and_drop(local_hub):
    rule = inject_fault(local_hub.url, "GET", r"/api/models/acme/missing$", 429, times=1)
    assert rule["remaining"] == 1
    with urllib.request.urlopen(f"{local_hub.url}/_hubtool/faults") as resp:
        assert json.loads(resp.read())["faults"][0]["status"] == 429
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{local_hub.url}/api/models/acme/missing")
    assert err.value.code == 429 and err.value.headers["X-Error-Code"] == "InjectedFault"
    with pytest.raises(urllib.error.HTTPError) as err:  # fault used up: the real answer
        urllib.request.urlopen(f"{local_hub.url}/api/models/acme/missing")
    assert err.value.code == 404 and err.value.headers["X-Error-Code"] == "RepoNotFound"
    local_hub.inject_fault("GET", r"/api/whoami-v2", 0, times=1)
    with pytest.raises((urllib.error.URLError, ConnectionError, http_client_errors())):
        urllib.request.urlopen(f"{local_hub.url}/api/whoami-v2")


def http_client_errors():
    import http.client

    return http.client.HTTPException


def test_auth_401_403_409_and_no_token_stored(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    users = {TOKEN: ("alice", ["acme"])}
    with serve_in_thread(tmp_path / "hub", users=users) as hub:
        api = HfApi(endpoint=hub.url, token=TOKEN)
        assert api.whoami()["name"] == "alice"
        api.create_repo("acme/secure", private=True)
        api.upload_folder(folder_path=make_folder(tmp_path / "src"), repo_id="acme/secure")
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(endpoint=hub.url, token="hf_wrongwrongwrong").create_repo("alice/x")
        assert err.value.response.status_code == 401
        with pytest.raises(HfHubHTTPError) as err:
            api.create_repo("bigcorp/x")
        assert err.value.response.status_code == 403
        with pytest.raises(HfHubHTTPError) as err:
            api.create_repo("acme/secure")
        assert err.value.response.status_code == 409
        with pytest.raises(HfHubHTTPError):  # private repo: invisible without the token
            HfApi(endpoint=hub.url, token=False).list_repo_files("acme/secure")
        assert "model.safetensors" in api.list_repo_files("acme/secure")
    stored = [p for p in (tmp_path / "hub").rglob("*") if p.is_file()]
    assert stored and not any(TOKEN.encode() in p.read_bytes() for p in stored)


# ---------------------------------------------------------------------------- Hub behaviours beyond upload/download
def test_create_pr_upload_and_merge(local_hub, tmp_path):
    """`create_pr=True` opens refs/pr/N (main untouched); the client lists, reads and merges it."""
    api = HfApi(endpoint=local_hub.url, token=TOKEN)
    api.create_repo("acme/pr")
    main_before = api.repo_info("acme/pr").sha
    info = api.upload_file(path_or_fileobj=b"v2 weights", path_in_repo="w.bin", repo_id="acme/pr",
                           commit_message="Add v2", create_pr=True)
    assert info.pr_url == f"{local_hub.url}/acme/pr/discussions/1" and info.pr_num == 1
    assert info.pr_revision == "refs/pr/1"
    assert api.repo_info("acme/pr").sha == main_before  # main did not move
    assert "w.bin" in api.list_repo_files("acme/pr", revision="refs/pr/1")
    assert "w.bin" not in api.list_repo_files("acme/pr")
    got = hf_hub_download("acme/pr", "w.bin", revision="refs/pr/1", endpoint=local_hub.url, cache_dir=tmp_path / "dl")
    assert Path(got).read_bytes() == b"v2 weights"
    # a folder as a second PR (in Xet mode the client opens it with create_pull_request first)
    src = make_folder(tmp_path / "src")
    folder = api.upload_folder(folder_path=src, repo_id="acme/pr", commit_message="Add folder", create_pr=True)
    assert folder.pr_url == f"{local_hub.url}/acme/pr/discussions/2"
    prs = list(api.get_repo_discussions("acme/pr", discussion_type="pull_request"))
    assert [(d.num, d.title, d.status, d.is_pull_request) for d in prs] == [(2, "Add folder", "open", True), (1, "Add v2", "open", True)]
    refs = api.list_repo_refs("acme/pr", include_pull_requests=True)
    assert sorted(r.ref for r in refs.pull_requests) == ["refs/pr/1", "refs/pr/2"]
    details = api.get_discussion_details("acme/pr", 1)
    assert details.target_branch == "refs/heads/main" and details.merge_commit_oid is None
    assert any(e.type == "commit" for e in details.events)

    api.merge_pull_request("acme/pr", 1, comment="ship it")
    assert "w.bin" in api.list_repo_files("acme/pr")
    merged = api.get_discussion_details("acme/pr", 1)
    assert merged.status == "merged" and merged.merge_commit_oid == api.repo_info("acme/pr").sha
    api.merge_pull_request("acme/pr", 2)
    assert set(api.list_repo_files("acme/pr")) == {".gitattributes", "w.bin", *files_of(src)}
    with pytest.raises(HfHubHTTPError):  # already merged
        api.merge_pull_request("acme/pr", 2)
    assert [d.status for d in api.get_repo_discussions("acme/pr")] == ["merged", "merged"]


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_conflicting_pr_is_refused_and_can_be_closed(local_hub):
    api = HfApi(endpoint=local_hub.url)
    api.create_repo("acme/conflict")
    api.upload_file(path_or_fileobj=b"pr", path_in_repo="a.txt", repo_id="acme/conflict", create_pr=True)
    api.upload_file(path_or_fileobj=b"main", path_in_repo="a.txt", repo_id="acme/conflict")
    with pytest.raises(HfHubHTTPError) as err:
        api.merge_pull_request("acme/conflict", 1)
    assert err.value.response.status_code == 409 and "a.txt" in str(err.value)
    pr = api.create_pull_request("acme/conflict", title="Empty PR")
    assert pr.num == 2 and pr.git_reference == "refs/pr/2"
    api.change_discussion_status("acme/conflict", 1, new_status="closed")
    assert [d.status for d in api.get_repo_discussions("acme/conflict")] == ["open", "closed"]


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_visibility_tags_squash_move_and_list(local_hub):
    api = HfApi(endpoint=local_hub.url)
    api.create_repo("acme/vis")
    api.update_repo_settings("acme/vis", private=True)
    assert api.repo_info("acme/vis").private is True
    api.update_repo_settings("acme/vis", private=False)
    assert api.repo_info("acme/vis").private is False

    api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="acme/vis")
    api.upload_file(path_or_fileobj=b"2", path_in_repo="a.txt", repo_id="acme/vis")
    api.create_tag("acme/vis", tag="v1")
    api.delete_tag("acme/vis", tag="v1")
    assert api.list_repo_refs("acme/vis").tags == []
    with pytest.raises(HfHubHTTPError):
        api.delete_tag("acme/vis", tag="v1")

    api.super_squash_history("acme/vis", commit_message="squashed")
    commits = api.list_repo_commits("acme/vis")
    assert [c.title for c in commits] == ["squashed"]
    assert api.hf_hub_download("acme/vis", "a.txt", cache_dir=str(local_hub.root.parent / "dl")) and \
        Path(api.hf_hub_download("acme/vis", "a.txt", cache_dir=str(local_hub.root.parent / "dl"))).read_bytes() == b"2"

    api.move_repo("acme/vis", "acme/renamed")
    assert api.repo_exists("acme/renamed") and not api.repo_exists("acme/vis")
    api.create_repo("other/x")
    assert [m.id for m in api.list_models(author="acme")] == ["acme/renamed"]
    assert [m.id for m in api.list_models(search="x")] == ["other/x"]


def test_copy_of_lfs_and_regular_files(local_hub):
    from huggingface_hub import CommitOperationCopy

    api = HfApi(endpoint=local_hub.url)
    api.create_repo("acme/copy")
    api.upload_file(path_or_fileobj=b"\0binary" * 100, path_in_repo="w.safetensors", repo_id="acme/copy")
    api.upload_file(path_or_fileobj=b"text", path_in_repo="t.txt", repo_id="acme/copy")
    api.create_commit("acme/copy", [CommitOperationCopy("w.safetensors", "copy/w.safetensors"), CommitOperationCopy("t.txt", "copy/t.txt")],
                      commit_message="copy")
    info = {f.path: f for f in api.get_paths_info("acme/copy", ["w.safetensors", "copy/w.safetensors", "copy/t.txt"])}
    assert info["copy/w.safetensors"].lfs.sha256 == info["w.safetensors"].lfs.sha256
    assert info["copy/w.safetensors"].size == 700 and info["copy/t.txt"].size == 4


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_tree_pagination_and_last_commit(tmp_path, hub_mode):
    from huggingface_hub import CommitOperationAdd

    with serve_in_thread(tmp_path / "hub", tree_page_size=3, tree_page_size_expand=2) as hub:
        api = HfApi(endpoint=hub.url)
        api.create_repo("acme/many")
        api.create_commit("acme/many", [CommitOperationAdd(f"d/f{i}.txt", str(i).encode()) for i in range(7)], commit_message="seven")
        api.upload_file(path_or_fileobj=b"new", path_in_repo="d/f3.txt", repo_id="acme/many", commit_message="touch f3")
        mark = len(hub.requests)
        entries = list(api.list_repo_tree("acme/many", recursive=True))
        pages = [p for m, p in hub.requests[mark:] if "/tree/" in p]
        assert len(pages) == 3  # 9 entries (.gitattributes, 7 files, d/) in pages of 3
        assert sorted(e.path for e in entries) == sorted([".gitattributes", "d", *[f"d/f{i}.txt" for i in range(7)]])
        expanded = {e.path: e for e in api.list_repo_tree("acme/many", path_in_repo="d", expand=True)}
        assert len(expanded) == 7
        assert expanded["d/f3.txt"].last_commit.title == "touch f3"
        assert expanded["d/f1.txt"].last_commit.title == "seven"


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_non_ascii_names_get_a_404_not_a_dropped_connection(local_hub, tmp_path):
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=local_hub.url)
    api.create_repo("acme/intl")
    api.upload_file(path_or_fileobj=b"ok", path_in_repo="données/файл.txt", repo_id="acme/intl")
    got = hf_hub_download("acme/intl", "données/файл.txt", endpoint=local_hub.url, cache_dir=tmp_path / "dl")
    assert Path(got).read_bytes() == b"ok"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("acme/intl", "données/нет.txt", endpoint=local_hub.url, cache_dir=tmp_path / "dl")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files("acme/intl", revision="ветка")


_HOLD_STORE = """
import sys, time, hf_xet
cas, xet_hash, size, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
group = hf_xet.XetSession().new_file_download_group(endpoint=cas, token="t", token_expiry_unix_secs=int(time.time()) + 600)
group.__enter__()  # xet-core's local store (and its index database) stays open until we exit
group.start_download_file(hf_xet.XetFileInfo(xet_hash, size), out)
print("holding", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("hub_mode", ["xet"], indirect=True)
def test_xet_downloads_while_another_process_holds_a_transfer(local_hub, tmp_path):
    """xet-core opens its local store's index in one process at a time; each reader gets its own replica."""
    import subprocess
    import sys

    api = HfApi(endpoint=local_hub.url, token=TOKEN)
    api.create_repo("acme/busy")
    src = make_folder(tmp_path / "src")
    api.upload_folder(folder_path=src, repo_id="acme/busy")
    large = next(e for e in api.list_repo_tree("acme/busy", path_in_repo="sub") if e.path == "sub/large.dat")
    token = lambda: json.loads(urllib.request.urlopen(f"{local_hub.url}/api/models/acme/busy/xet-read-token/main").read())["casUrl"]  # noqa: E731
    first, second = token(), token()
    # an idle replica of the same commit is handed out again (clients cache a token for an hour)
    assert first == second and all(u.startswith("local://") and "/xet-readers/" in u for u in (first, second))
    # another reader's process holds its download open (before replicas, all readers shared one store: the CI failure)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_STORE, first, large.xet_hash,
                               str(large.size), str(tmp_path / "held.bin")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert token() != first  # that one is held open by another process: a new replica
        got = hf_hub_download("acme/busy", "sub/large.dat", endpoint=local_hub.url, cache_dir=tmp_path / "dl")
        assert Path(got).read_bytes() == (src / "sub" / "large.dat").read_bytes()
    finally:
        holder.kill()
        holder.wait()
