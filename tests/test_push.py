"""`hubtool push` / push_folder against the local Hub: idempotence, resume, clear token-free errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from hubtool.cli import main
from hubtool.errors import InputError, PushError
from hubtool.hub_server import serve_in_thread
from hubtool.push import push_folder, scrub
from tests.test_hub_server import TOKEN, make_folder


def remote_state(url: str, repo_id: str, revision: str = "main") -> dict[str, str]:
    """path -> content id (sha256 for LFS, git sha1 otherwise) at a revision."""
    api = HfApi(endpoint=url)
    return {
        e.path: (e.lfs.sha256 if e.lfs else e.blob_id)
        for e in api.list_repo_tree(repo_id, revision=revision, recursive=True)
        if hasattr(e, "blob_id")
    }


def assert_no_token(*texts: str, root: Path | None = None) -> None:
    for text in texts:
        assert TOKEN not in text
    if root is not None:
        assert not any(TOKEN.encode() in p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_push_main_and_branch_then_noop(local_hub, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    src = make_folder(tmp_path / "src")
    first = push_folder(src, "acme/model", message="first")
    assert first.changed and first.files_uploaded == 5 and first.files_deleted == 0
    assert first.repo_url == f"{local_hub.url}/acme/model" and first.commit_sha in first.commit_url

    again = push_folder(src, "acme/model")
    assert not again.changed and again.files_uploaded == 0 and again.commit_sha == first.commit_sha
    assert len(HfApi(endpoint=local_hub.url).list_repo_commits("acme/model")) == 2  # initial + first

    (src / "config.json").write_text('{"changed": true}')
    branch = push_folder(src, "acme/model", branch="gptq/4bit-32g-actorder")
    # the branch starts from main, so only the changed file counts as uploaded
    assert branch.changed and branch.branch == "gptq/4bit-32g-actorder" and branch.files_uploaded == 1
    assert remote_state(local_hub.url, "acme/model", "gptq/4bit-32g-actorder")["config.json"] != remote_state(local_hub.url, "acme/model")["config.json"]
    (src / "sub" / "notes.txt").unlink()
    pruned = push_folder(src, "acme/model", branch="gptq/4bit-32g-actorder", delete_missing=True)
    assert pruned.files_uploaded == 0 and pruned.files_deleted == 1
    out, err = capfd.readouterr()
    assert_no_token(out, err, root=local_hub.root)


def test_interrupted_push_resumes_to_identical_content(local_hub, tmp_path):
    src = make_folder(tmp_path / "src", seed=1)
    # 507 is not retried by the client: the push stops after the file bytes were sent.
    rule = local_hub.inject_fault("POST", r"/api/models/acme/resume/commit/", 507, times=1)
    with pytest.raises(PushError, match="507.*re-run"):
        push_folder(src, "acme/resume", token=TOKEN)
    assert rule.hits == 1
    assert set(remote_state(local_hub.url, "acme/resume")) == {".gitattributes"}  # nothing committed
    mark = len(local_hub.requests)
    resumed = push_folder(src, "acme/resume", token=TOKEN)
    assert resumed.changed and resumed.files_uploaded == 5
    if local_hub.mode == "lfs":  # the blobs were stored before the failure: not sent again
        assert not any(p.startswith("/_hubtool/lfs/") for _, p in local_hub.requests[mark:])
    clean = push_folder(src, "acme/clean", token=TOKEN)
    assert remote_state(local_hub.url, "acme/resume") == remote_state(local_hub.url, "acme/clean")
    assert clean.files_uploaded == resumed.files_uploaded


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_push_failing_mid_transfer_resends_only_the_missing_blob(local_hub, tmp_path):
    import hashlib

    src = make_folder(tmp_path / "src", seed=2)
    big_sha = hashlib.sha256((src / "sub" / "large.dat").read_bytes()).hexdigest()
    small_sha = hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    local_hub.inject_fault("PUT", rf"^/_hubtool/lfs/{big_sha}$", 507, times=1)  # 507: not retried
    with pytest.raises(PushError, match="507"):
        push_folder(src, "acme/midway", token=TOKEN)
    mark = len(local_hub.requests)
    resumed = push_folder(src, "acme/midway", token=TOKEN)
    puts = [p for m, p in local_hub.requests[mark:] if m == "PUT"]
    assert puts == [f"/_hubtool/lfs/{big_sha}"]  # model.safetensors was kept from the first try
    state = remote_state(local_hub.url, "acme/midway")
    assert state["sub/large.dat"] == big_sha and state["model.safetensors"] == small_sha
    assert resumed.files_uploaded == 5


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
@pytest.mark.parametrize(
    ("method", "pattern", "status", "expected"),
    [
        ("POST", r"/preupload/", 404, "not found on .* \\(404"),
        ("POST", r"/commit/", 409, "conflict \\(409"),
        ("POST", r"/commit/", 412, "branch moved during the push \\(412"),
        ("POST", r"/commit/", 413, "too large \\(413"),
    ],
)
def test_http_errors_are_one_clear_line(local_hub, tmp_path, method, pattern, status, expected, capfd):
    src = make_folder(tmp_path / "src")
    local_hub.inject_fault(method, pattern, status, times=1)
    with pytest.raises(PushError, match=expected) as err:
        push_folder(src, "acme/errs", branch="dev", token=TOKEN)
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 6
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained client error to leak
    out, errout = capfd.readouterr()
    assert_no_token(message, out, errout)


@pytest.mark.parametrize("hub_mode", ["xet"], indirect=True)
def test_auth_errors_with_real_checks(tmp_path, hub_mode, capfd):
    users = {TOKEN: ("alice", ["acme"])}
    src = make_folder(tmp_path / "src")
    with serve_in_thread(tmp_path / "hub", users=users) as hub:
        bad = "hf_BADbadBADbadBAD0000000000"
        with pytest.raises(PushError, match=r"rejected the token \(401") as e401:
            push_folder(src, "alice/m", endpoint=hub.url, token=bad)
        assert bad not in str(e401.value)
        with pytest.MonkeyPatch.context() as mp:  # no HF_TOKEN and no login
            from huggingface_hub import constants

            mp.delenv("HF_TOKEN", raising=False)
            mp.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
            with pytest.raises(PushError, match=r"no token found .*\(401"):
                push_folder(src, "alice/m", endpoint=hub.url)
        with pytest.raises(PushError, match=r"no write access to namespace 'bigcorp' \(403"):
            push_folder(src, "bigcorp/m", endpoint=hub.url, token=TOKEN)
        # a failure inside the Xet transfer: the write token is refused -> builtin ConnectionError
        hub.inject_fault("GET", r"/xet-write-token/", 403, times=10)
        with pytest.raises(PushError, match=r"\(403") as exet:
            push_folder(src, "acme/m", endpoint=hub.url, token=TOKEN)
        assert "Xet" in str(exet.value)
        hub.clear_faults()
        ok = push_folder(src, "acme/m", endpoint=hub.url, token=TOKEN)
        assert ok.changed
        out, err = capfd.readouterr()
        assert_no_token(str(e401.value), str(exet.value), out, err, root=tmp_path / "hub")


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_network_failure(tmp_path, hub_mode):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PushError, match="network failure.*re-run"):
        push_folder(make_folder(tmp_path / "src"), "acme/m", endpoint=f"http://127.0.0.1:{port}", token=TOKEN)


def test_scrub_removes_tokens():
    text = f"Authorization: Bearer {TOKEN} and hf_abcdefghijkl and {TOKEN}"
    cleaned = scrub(text, TOKEN)
    assert TOKEN not in cleaned and "hf_abcdefghijkl" not in cleaned


def test_input_errors(tmp_path):
    from hubtool.errors import InputError

    with pytest.raises(InputError, match="not a directory"):
        push_folder(tmp_path / "nope", "acme/m")
    with pytest.raises(InputError, match="NAMESPACE/NAME"):
        push_folder(tmp_path, "just-a-name")


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_cli_push_json_and_exit_codes(local_hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    src = make_folder(tmp_path / "src")
    assert main(["push", str(src), "acme/cli", "--branch", "v1", "--revision-message", "release v1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["changed"] and summary["branch"] == "v1" and summary["files_uploaded"] == 5
    assert HfApi(endpoint=local_hub.url).list_repo_commits("acme/cli", revision="v1")[0].title == "release v1"
    assert main(["push", str(src), "acme/cli", "--branch", "v1"]) == 0
    assert "nothing changed" in capsys.readouterr().out
    local_hub.inject_fault("POST", r"/commit/", 413, times=1)
    (src / "config.json").write_text("{}")
    assert main(["push", str(src), "acme/cli", "--endpoint", local_hub.url]) == 6
    captured = capsys.readouterr()
    assert "\nerror: acme/cli: the Hub refused the upload as too large (413" in "\n" + captured.err
    assert_no_token(captured.out, captured.err)


def test_hub_serve_command(tmp_path, monkeypatch):
    """`hubtool hub serve` prints its URL first; the real client pushes to it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubtool", "hub", "serve", "--root", str(tmp_path / "root"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        result = push_folder(make_folder(tmp_path / "src"), "acme/served", endpoint=url)
        assert result.files_uploaded == 5
        assert (tmp_path / "root" / "repos" / "model" / "acme" / "served" / "refs.json").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------- --create-pr
def test_create_pr_on_existing_repo_and_branch(local_hub, tmp_path, capsys):
    src = make_folder(tmp_path / "src")
    created = push_folder(src, "acme/prs", create_pr=True)  # new repo: nothing to review against, pushed directly
    assert created.changed and created.pr_url is None and created.files_uploaded == 5
    api = HfApi(endpoint=local_hub.url)
    main_sha = api.repo_info("acme/prs").sha

    (src / "config.json").write_text('{"v": 2}')
    (src / "sub" / "notes.txt").unlink()
    pr = push_folder(src, "acme/prs", create_pr=True, delete_missing=True, message="v2 for review")
    assert pr.pr_url == f"{local_hub.url}/acme/prs/discussions/1" and pr.pr_num == 1
    assert pr.files_uploaded == 1 and pr.files_deleted == 1
    assert api.repo_info("acme/prs").sha == main_sha  # main untouched until the PR is merged
    assert remote_state(local_hub.url, "acme/prs", "refs/pr/1")["config.json"] != remote_state(local_hub.url, "acme/prs")["config.json"]
    assert [(d.num, d.title) for d in api.get_repo_discussions("acme/prs")] == [(1, "v2 for review")]

    again = push_folder(src, "acme/prs", create_pr=True, delete_missing=True)  # main still differs: a second PR
    assert again.pr_num == 2
    api.merge_pull_request("acme/prs", 1)
    noop = push_folder(src, "acme/prs", create_pr=True, delete_missing=True)  # main now matches: no PR
    assert not noop.changed and noop.pr_url is None
    assert len(list(api.get_repo_discussions("acme/prs"))) == 2

    # a branch that exists takes a PR against it; the CLI prints the PR URL
    push_folder(src, "acme/prs", branch="gguf")
    (src / "config.json").write_text('{"v": 3}')
    assert main(["push", str(src), "acme/prs", "--branch", "gguf", "--create-pr"]) == 0
    out = capsys.readouterr().out
    assert "opened pull request #3" in out and f"pull request {local_hub.url}/acme/prs/discussions/3" in out
    details = api.get_discussion_details("acme/prs", 3)
    assert details.target_branch == "refs/heads/gguf"


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_create_pr_on_a_repo_you_do_not_own(tmp_path, hub_mode):
    """A maintainer without write access changes someone's repo through a PR; the owner merges it."""
    owner, helper = "hf_OWNERtoken0123456789abcdef", "hf_HELPERtoken0123456789abcdef"
    with serve_in_thread(tmp_path / "hub", users={owner: ("org-owner", ["bigorg"]), helper: ("helper", [])}) as hub:
        src = make_folder(tmp_path / "src")
        push_folder(src, "bigorg/model", endpoint=hub.url, token=owner)
        (src / "README.md").write_text("---\nlicense: mit\n---\n# fixed card\n")
        with pytest.raises(PushError, match="403"):
            push_folder(src, "bigorg/model", endpoint=hub.url, token=helper)
        pr = push_folder(src, "bigorg/model", endpoint=hub.url, token=helper, create_pr=True)
        assert pr.pr_num == 1 and pr.files_uploaded == 1
        api = HfApi(endpoint=hub.url, token=owner)
        assert api.get_discussion_details("bigorg/model", 1).author == "helper"
        with pytest.raises(Exception):
            HfApi(endpoint=hub.url, token=helper).merge_pull_request("bigorg/model", 1)
        api.merge_pull_request("bigorg/model", 1)
        assert remote_state(hub.url, "bigorg/model")["README.md"] == remote_state(hub.url, "bigorg/model", "refs/pr/1")["README.md"]


# ---------------------------------------------------------------------------- folders the Hub must not get
def test_symlink_outside_folder_is_refused_before_upload(local_hub, tmp_path, capsys):
    src = make_folder(tmp_path / "src")
    (src / "passwd").symlink_to("/etc/passwd")
    mark = len(local_hub.requests)
    with pytest.raises(InputError, match=r"passwd'?: symlink to /etc/passwd, outside .*--follow-symlinks"):
        push_folder(src, "acme/links")
    assert local_hub.requests[mark:] == []  # refused before the first request
    assert main(["push", str(src), "acme/links"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "passwd" in err and len(err.splitlines()) == 1
    (src / "passwd").unlink()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (src / "linked-dir").symlink_to(outside)
    with pytest.raises(InputError, match="linked-dir"):
        push_folder(src, "acme/links")
    (src / "inside").symlink_to(src / "config.json")  # a link that stays inside is fine
    (src / "linked-dir").unlink()
    (src / "dangling").symlink_to(tmp_path / "nope")
    with pytest.raises(InputError, match="dangling symlink"):
        push_folder(src, "acme/links")
    (src / "dangling").unlink()
    push_folder(src, "acme/links")
    assert "inside" in remote_state(local_hub.url, "acme/links")


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_follow_symlinks_uploads_the_target(local_hub, tmp_path):
    src = make_folder(tmp_path / "src")
    outside = tmp_path / "shared.txt"
    outside.write_text("shared tokenizer")
    (src / "shared.txt").symlink_to(outside)
    assert main(["push", str(src), "acme/follow", "--follow-symlinks"]) == 0
    got = HfApi(endpoint=local_hub.url).hf_hub_download("acme/follow", "shared.txt", cache_dir=str(tmp_path / "dl"))
    assert Path(got).read_text() == "shared tokenizer"


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
@pytest.mark.parametrize("name", ["bad\nname.txt", "tab\there.txt", "back\\slash.txt", "nul\x01.txt"])
def test_file_names_the_hub_refuses_are_refused_before_upload(local_hub, tmp_path, name, capsys):
    src = make_folder(tmp_path / "src")
    (src / "sub" / name).write_text("x")
    mark = len(local_hub.requests)
    with pytest.raises(InputError, match="the Hub refuses this file name"):
        push_folder(src, "acme/names")
    assert local_hub.requests[mark:] == []
    assert main(["push", str(src), "acme/names"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "rename it" in err


def test_git_and_cache_folders_are_left_out_not_refused(tmp_path):
    from hubtool.push import scan_folder

    src = make_folder(tmp_path / "src")
    (src / ".git").mkdir()
    (src / ".git" / "bad\nname").write_text("x")
    (src / ".cache" / "huggingface").mkdir(parents=True)
    (src / ".cache" / "huggingface" / "x.lock").write_text("")
    assert scan_folder(src) == sorted(["README.md", "config.json", "model.safetensors", "sub/large.dat", "sub/notes.txt"])
    assert scan_folder(src, ignore_patterns=["*.dat"]) == sorted(["README.md", "config.json", "model.safetensors", "sub/notes.txt"])


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_fifo_in_a_pushed_folder_is_refused_in_one_line(local_hub, tmp_path, capsys):
    import os

    src = make_folder(tmp_path / "src")
    os.mkfifo(src / "pipe")
    mark = len(local_hub.requests)
    with pytest.raises(InputError, match=r"pipe'?: is a FIFO"):
        push_folder(src, "acme/fifo")
    assert local_hub.requests[mark:] == []
    assert main(["push", str(src), "acme/fifo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "FIFO" in err and "pipe" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
@pytest.mark.parametrize("how", ["errno", "rust-text"])
def test_push_on_a_full_disk_names_the_local_hub_and_free_space(local_hub, tmp_path, monkeypatch, how):
    """A full local Hub disk: the folder and its free space, not 'push failed (OSError ...)'."""
    import errno
    import os

    def full(*a, **k):
        if how == "errno":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise RuntimeError("Data processing error: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(HfApi, "upload_folder", full)
    with pytest.raises(PushError) as exc:
        push_folder(make_folder(tmp_path / "src"), "acme/full", endpoint=local_hub.url)
    text = str(exc.value)
    assert text.startswith(f"{local_hub.root}: disk full (") and "free)" in text and "push failed" not in text
    assert exc.value.exit_code == 6
