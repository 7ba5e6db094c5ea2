"""Hostile requests against the local Hub: each must get a 4xx, touch nothing outside the root,
read nothing outside it, and leave the server serving. Loopback only; every loop is bounded."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from huggingface_hub import HfApi

from hubtool.hub_server import bind_warning, serve_in_thread

ALICE, BOB = "hf_ALICEtokenNEVERshown012345", "hf_BOBtokenNEVERshown0123456789"
SECRET = b"top secret outside the root\n"


def request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 10):
    """(status, headers, body) of one request on a fresh connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def raw_exchange(url: str, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes and read until the server answers and closes (or the timeout)."""
    parts = urlsplit(url)
    out = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and b'"error"' in out:
                break
    return out


def commit_body(*ops: dict, summary: str = "probe") -> bytes:
    lines = [{"key": "header", "value": {"summary": summary, "description": ""}}, *ops]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def tree_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def sandbox(tmp_path):
    """A root for the Hub and, beside it, files a probe must never read, write or delete."""
    outside = tmp_path / "outside"
    (outside / "victim").mkdir(parents=True)
    (outside / "victim" / "repo.json").write_text('{"private": false, "created": "x"}')
    (outside / "secret.txt").write_bytes(SECRET)
    return tmp_path / "root", outside


@pytest.fixture
def open_hub(sandbox):
    root, outside = sandbox
    before = tree_of(outside)
    with serve_in_thread(root, read_timeout=2.0, max_body=1 << 20, max_upload=1 << 22) as hub:
        api = HfApi(endpoint=hub.url, token=False)
        api.create_repo("acme/target")
        yield hub, outside
        assert_serving(hub)
    assert tree_of(outside) == before  # nothing outside the root was written or deleted


def assert_serving(hub) -> None:
    status, _, body = request(hub.url, "GET", "/api/models/acme/target")
    assert status == 200 and json.loads(body)["id"] == "acme/target"


def assert_4xx(status: int, body: bytes) -> None:
    assert 400 <= status < 500, (status, body[:200])
    assert SECRET not in body


# ---------------------------------------------------------------------------- file read / write outside root
@pytest.mark.parametrize("oid", ["/etc/passwd", "SECRET", "../outside/secret.txt", "../x", "a" * 63, "A" * 64, "g" * 64, "0" * 64 + "/x"])
def test_lfs_oid_must_be_64_hex(open_hub, oid):
    hub, outside = open_hub
    oid = str(outside / "secret.txt") if oid == "SECRET" else oid
    body = commit_body({"key": "lfsFile", "value": {"path": "stolen.bin", "algo": "sha256", "oid": oid, "size": len(SECRET)}})
    status, _, answer = request(hub.url, "POST", "/api/models/acme/target/commit/main", body, {"Content-Type": "application/x-ndjson"})
    assert_4xx(status, answer)
    status, _, answer = request(hub.url, "GET", "/acme/target/resolve/main/stolen.bin")
    assert status == 404 and SECRET not in answer


@pytest.mark.parametrize("oid", ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "abc"])
def test_lfs_upload_and_verify_refuse_bad_oids(open_hub, oid):
    hub, _ = open_hub
    status, _, answer = request(hub.url, "PUT", f"/_hubtool/lfs/{oid}", b"data")
    assert_4xx(status, answer)
    status, _, answer = request(hub.url, "POST", f"/_hubtool/lfs/{oid}/verify", b"{}")
    assert_4xx(status, answer)


# root/repos/model/acme/<name>: four levels up from an existing namespace is the folder holding root/ and outside/
@pytest.mark.parametrize("name", ["../../../../outside/victim", "../../../../../outside/victim", "../victim", "..", "a/../../b", "/abs"])
@pytest.mark.parametrize("org", ["acme", None])
def test_delete_repo_cannot_leave_root(open_hub, name, org):
    hub, outside = open_hub
    body = json.dumps({"name": name, "organization": org, "type": "model"}).encode()
    status, _, answer = request(hub.url, "DELETE", "/api/repos/delete", body, {"Content-Type": "application/json"})
    assert_4xx(status, answer)
    assert (outside / "victim" / "repo.json").is_file()


@pytest.mark.parametrize("org", ["..", "../..", "acme/../..", "x" * 97])
def test_create_repo_cannot_leave_root(open_hub, org):
    hub, _ = open_hub
    body = json.dumps({"name": "victim", "organization": org}).encode()
    status, _, answer = request(hub.url, "POST", "/api/repos/create", body, {"Content-Type": "application/json"})
    assert_4xx(status, answer)


def test_symlinked_repo_folder_is_not_followed_out_of_root(open_hub):
    hub, outside = open_hub
    link = hub.root / "repos" / "model" / "evil"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)  # repos/model/evil/victim -> outside/victim (holds a repo.json)
    status, _, answer = request(hub.url, "GET", "/api/models/evil/victim")
    assert_4xx(status, answer)
    status, _, answer = request(hub.url, "DELETE", "/api/repos/delete", json.dumps({"name": "victim", "organization": "evil"}).encode(),
                                {"Content-Type": "application/json"})
    assert_4xx(status, answer)
    assert (outside / "victim" / "repo.json").is_file()


# ---------------------------------------------------------------------------- names and paths
BAD_PATHS = ["/abs", "a\\b", "a\x00b", "a\nb", "a\rb", "a//b", "./x", "x/./y", "../x", "a/../../x", "dir/", ".git/config",
             "x/.git/hooks/post", "", "a" * 1001, "\x7f"]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_commit_refuses_bad_paths(open_hub, path):
    hub, _ = open_hub
    body = commit_body({"key": "file", "value": {"path": path, "content": base64.b64encode(b"x").decode(), "encoding": "base64"}})
    status, _, answer = request(hub.url, "POST", "/api/models/acme/target/commit/main", body)
    assert_4xx(status, answer)
    files = HfApi(endpoint=hub.url).list_repo_files("acme/target")
    assert files == [".gitattributes"]


@pytest.mark.parametrize("path", ["a\nb", "../x", "/abs"])
def test_preupload_refuses_bad_paths(open_hub, path):
    hub, _ = open_hub
    body = json.dumps({"files": [{"path": path, "size": 1, "sample": ""}]}).encode()
    status, _, answer = request(hub.url, "POST", "/api/models/acme/target/preupload/main", body, {"Content-Type": "application/json"})
    assert_4xx(status, answer)


@pytest.mark.parametrize("branch", ["..%2Fx", "a..b", "refs%2Fheads%2Fx", "with%20space", "a%00b", "x.lock", "%2Fabs", "a%5Cb", "-x"])
def test_bad_branch_names(open_hub, branch):
    hub, _ = open_hub
    status, _, answer = request(hub.url, "POST", f"/api/models/acme/target/branch/{branch}", b"{}")
    assert_4xx(status, answer)
    refs = json.loads(request(hub.url, "GET", "/api/models/acme/target/refs")[2])
    assert [b["name"] for b in refs["branches"]] == ["main"]


@pytest.mark.parametrize("repo", ["acme/" + "x" * 300, "acme/a--b", "acme/.hidden", "acme/x.git", "%2E%2E/x", "acme/caf%C3%A9"])
def test_bad_repo_ids_are_400_not_500(open_hub, repo):
    hub, _ = open_hub
    status, _, answer = request(hub.url, "GET", f"/api/models/{repo}")
    assert_4xx(status, answer)
    ns, name = repo.split("/", 1)
    body = json.dumps({"name": name, "organization": ns}).encode()
    status, _, answer = request(hub.url, "POST", "/api/repos/create", body, {"Content-Type": "application/json"})
    assert_4xx(status, answer)


def test_tree_and_resolve_paths_cannot_escape(open_hub):
    hub, _ = open_hub
    for path in ["/api/models/acme/target/tree/main/..%2F..%2F..", "/acme/target/resolve/main/..%2F..%2Foutside%2Fsecret.txt",
                 "/acme/target/resolve/..%2F..%2F/x", "/api/models/acme/target/tree/%2E%2E"]:
        status, _, answer = request(hub.url, "GET", path)
        assert_4xx(status, answer)


# ---------------------------------------------------------------------------- malformed bodies
@pytest.mark.parametrize("body", [b"{bad json", b"[1, 2]", b'"a string"', b"\xff\xfe", b"null", b'{"name": 5}', b'{"name": ["x"]}'])
def test_malformed_json_is_400(open_hub, body):
    hub, _ = open_hub
    for method, path in [("POST", "/api/repos/create"), ("DELETE", "/api/repos/delete"), ("PUT", "/api/models/acme/target/settings"),
                         ("POST", "/api/models/acme/target/preupload/main"), ("POST", "/acme/target.git/info/lfs/objects/batch"),
                         ("POST", "/api/models/acme/target/discussions"), ("POST", "/api/repos/move")]:
        status, _, answer = request(hub.url, method, path, body, {"Content-Type": "application/json"})
        assert_4xx(status, answer)


@pytest.mark.parametrize("lines", [
    b"not json\n", b"[1]\n", b'{"key": "header", "value": 3}\n', b'{"key": "header", "value": {}}\n"str"\n',
    b'{"key": "header", "value": {}}\n{"key": "file", "value": []}\n', b'{"key": "header", "value": {"summary": 5}}\n',
    b'{"key": "header", "value": {}}\n{"key": "nope", "value": {"path": "a"}}\n',
])
def test_malformed_commit_payload_is_400(open_hub, lines):
    hub, _ = open_hub
    status, _, answer = request(hub.url, "POST", "/api/models/acme/target/commit/main", lines)
    assert_4xx(status, answer)


def test_invalid_base64_is_refused_not_committed_empty(open_hub):
    hub, _ = open_hub
    for content in ["!!!!", "@@@@====", "not base64!!"]:
        body = commit_body({"key": "file", "value": {"path": "a.txt", "content": content, "encoding": "base64"}})
        status, _, answer = request(hub.url, "POST", "/api/models/acme/target/commit/main", body)
        assert_4xx(status, answer)
        assert "a.txt" not in HfApi(endpoint=hub.url).list_repo_files("acme/target")


def test_huge_content_length_is_413_without_reading(open_hub):
    hub, _ = open_hub
    reply = raw_exchange(hub.url, b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n\r\n{}")
    assert reply.startswith(b"HTTP/1.1 413") or reply.startswith(b"HTTP/1.0 413"), reply[:100]
    reply = raw_exchange(hub.url, b"PUT /_hubtool/lfs/" + b"0" * 64 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n")
    assert b" 413 " in reply.split(b"\r\n")[0], reply[:100]


@pytest.mark.parametrize("length", [b"abc", b"-5", b"1e9", b"99999999999999999999999"])
def test_bad_content_length_is_answered(open_hub, length):
    hub, _ = open_hub
    reply = raw_exchange(hub.url, b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n{}")
    status = int(reply.split(b" ", 2)[1]) if reply else 0
    assert 400 <= status < 500, reply[:100]


def test_bad_chunked_body_is_400(open_hub):
    hub, _ = open_hub
    reply = raw_exchange(hub.url, b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    assert b" 400 " in reply.split(b"\r\n")[0], reply[:100]


def test_stalled_body_frees_the_thread_and_leaves_no_temp_file(open_hub):
    """A client that announces a body and stops sending is cut off after read_timeout (2 s here)."""
    hub, _ = open_hub
    oid = hashlib.sha256(b"x" * 1000).hexdigest()
    parts = urlsplit(hub.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"PUT /_hubtool/lfs/{oid} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"x" * 10)
        time.sleep(0.5)
        assert list(hub.root.glob("blobs/.upload-*"))  # the upload is in flight
        start = time.monotonic()
        try:
            leftover = sock.recv(1024)
        except (ConnectionResetError, socket.timeout):
            leftover = b""
        assert time.monotonic() - start < 8  # closed by the server's timeout, not ours
    assert not leftover.startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 5
    while list(hub.root.glob("blobs/.upload-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(hub.root.glob("blobs/.upload-*"))
    assert not (hub.root / "blobs" / oid[:2] / oid).exists()


def test_chunked_upload_over_max_upload_is_refused_mid_stream(open_hub):
    """No Content-Length to refuse up front: the limit (4 MiB here) stops the stream on the way."""
    hub, _ = open_hub
    data = os.urandom((1 << 22) + 65536)
    oid = hashlib.sha256(data).hexdigest()
    parts = urlsplit(hub.url)
    reply = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"PUT /_hubtool/lfs/{oid} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        try:
            for i in range(0, len(data), 65536):
                piece = data[i:i + 65536]
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = sock.recv(4096)
        except (ConnectionResetError, socket.timeout):
            pass
    if reply:
        assert b" 413 " in reply.split(b"\r\n")[0], reply[:100]
    assert not list(hub.root.glob("blobs/.upload-*")) and not (hub.root / "blobs" / oid[:2] / oid).exists()


def test_non_ascii_error_message_is_answered(open_hub):
    hub, _ = open_hub
    name = "données/модель-文件.txt"
    status, headers, answer = request(hub.url, "GET", f"/acme/target/resolve/main/{quote(name)}")
    assert status == 404 and headers["X-Error-Code"] == "EntryNotFound"
    assert name in json.loads(answer)["error"]
    status, _, answer = request(hub.url, "GET", f"/api/models/acme/target/tree/{quote('ветка', safe='')}")
    assert status == 404 and "ветка" in json.loads(answer)["error"]


# ---------------------------------------------------------------------------- auth
@pytest.fixture
def users_hub(sandbox):
    root, _ = sandbox
    users = {ALICE: ("alice", []), BOB: ("bob", [])}
    with serve_in_thread(root, users=users, read_timeout=2.0) as hub:
        bob = HfApi(endpoint=hub.url, token=BOB)
        bob.create_repo("bob/secret", private=True)
        bob.upload_file(path_or_fileobj=b"bob's private weights", path_in_repo="w.txt", repo_id="bob/secret")
        yield hub


@pytest.mark.parametrize("encoded", ["..%2Fbob%2Fsecret", "%2E%2E%2Fbob%2Fsecret", "x%2F..%2F..%2Fbob%2Fsecret"])
def test_namespace_check_uses_the_repo_actually_addressed(users_hub, encoded):
    hub = users_hub
    alice = {"Authorization": f"Bearer {ALICE}"}
    for method, path, body in [
        ("GET", f"/api/models/alice/{encoded}", None),
        ("GET", f"/alice/{encoded}/resolve/main/w.txt", None),
        ("GET", f"/api/models/alice/{encoded}/tree/main", None),
        ("POST", f"/api/models/alice/{encoded}/commit/main", commit_body({"key": "deletedFile", "value": {"path": "w.txt"}})),
        ("PUT", f"/api/models/alice/{encoded}/settings", b'{"visibility": "public"}'),
        ("PUT", f"/api/models/alice/{encoded}/settings", b'{"private": false}'),
    ]:
        status, _, answer = request(hub.url, method, path, body, alice)
        assert_4xx(status, answer)
        assert b"bob's private weights" not in answer
    bob = HfApi(endpoint=hub.url, token=BOB)
    assert bob.repo_info("bob/secret").private is True
    assert bob.list_repo_files("bob/secret") == [".gitattributes", "w.txt"]


def test_foreign_private_repo_is_invisible_and_unwritable(users_hub):
    hub = users_hub
    alice = HfApi(endpoint=hub.url, token=ALICE)
    from huggingface_hub.errors import HfHubHTTPError

    for call in (lambda: alice.list_repo_files("bob/secret"),
                 lambda: alice.update_repo_settings("bob/secret", private=False),
                 lambda: alice.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="bob/secret"),
                 lambda: alice.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="bob/secret", create_pr=True),
                 lambda: alice.delete_repo("bob/secret"),
                 lambda: alice.move_repo("bob/secret", "alice/stolen")):
        with pytest.raises(HfHubHTTPError) as err:
            call()
        assert 400 <= err.value.response.status_code < 500
    assert [m.id for m in HfApi(endpoint=hub.url, token=ALICE).list_models(author="bob")] == []
    assert [m.id for m in HfApi(endpoint=hub.url, token=BOB).list_models(author="bob")] == ["bob/secret"]


def test_faults_endpoint_needs_an_admin(sandbox):
    """Faults change what every client sees: alice (no rights on bob/*) must not make bob's requests fail."""
    root, _ = sandbox
    admin = "hf_ADMINtokenNEVERshown0123456"
    users = {ALICE: ("alice", []), BOB: ("bob", []), admin: ("root", [])}
    with serve_in_thread(root, users=users, admins=frozenset({"root"})) as hub:
        HfApi(endpoint=hub.url, token=BOB).create_repo("bob/own")
        spec = json.dumps({"method": "GET", "path_regex": "/bob/", "status": 503, "times": 100}).encode()
        status, _, _ = request(hub.url, "POST", "/_hubtool/faults", spec, {"Content-Type": "application/json"})
        assert status == 401
        status, _, _ = request(hub.url, "DELETE", "/_hubtool/faults")
        assert status == 401
        for verb, body in (("POST", spec), ("DELETE", None), ("GET", None)):
            status, _, _ = request(hub.url, verb, "/_hubtool/faults", body, {"Content-Type": "application/json", "Authorization": f"Bearer {ALICE}"})
            assert status == 403, verb
        assert hub.state.faults.snapshot() == []
        status, _, _ = request(hub.url, "GET", "/api/models/bob/own", headers={"Authorization": f"Bearer {BOB}"})
        assert status == 200  # no fault was installed
        status, _, body = request(hub.url, "POST", "/_hubtool/faults", spec.replace(b"100", b"1"),
                                  {"Content-Type": "application/json", "Authorization": f"Bearer {admin}"})
        assert status == 200 and json.loads(body)["remaining"] == 1


def test_faults_endpoint_is_off_in_open_mode_without_the_flag(sandbox):
    root, _ = sandbox
    spec = json.dumps({"method": "GET", "path_regex": "/api/", "status": 503, "times": 5}).encode()
    with serve_in_thread(root) as hub:
        status, _, answer = request(hub.url, "POST", "/_hubtool/faults", spec, {"Content-Type": "application/json"})
        assert status == 403 and b"--allow-faults" in answer
        assert hub.state.faults.snapshot() == []
        assert request(hub.url, "GET", "/api/models/acme/none")[0] == 404
    with serve_in_thread(root, open_faults=True) as hub:
        assert request(hub.url, "POST", "/_hubtool/faults", spec, {"Content-Type": "application/json"})[0] == 200


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a|aa)*b", "a{1,100000}", "(?=x)", "a+"])
def test_fault_path_regex_cannot_stall_the_server(sandbox, pattern):
    """`(a+)+$` backtracks for minutes under the GIL on a long path: such patterns are refused."""
    root, _ = sandbox
    with serve_in_thread(root, open_faults=True) as hub:
        spec = json.dumps({"method": "*", "path_regex": pattern, "status": 503, "times": 100}).encode()
        status, _, _ = request(hub.url, "POST", "/_hubtool/faults", spec, {"Content-Type": "application/json"})
        assert status == 400
        with pytest.raises(ValueError):
            hub.inject_fault("GET", pattern, 503)
        assert hub.state.faults.snapshot() == []
        status, _, _ = request(hub.url, "GET", "/" + "a" * 5000 + "!", timeout=10)
        assert status == 404
        # what the test suite uses still works: literals, classes with counts, anchors, .* gaps
        rule = hub.inject_fault("GET", r"^/api/models/acme/[0-9a-f]{4}.*x$", 429)
        assert request(hub.url, "GET", "/api/models/acme/00ffyyx")[0] == 429 and rule.hits == 1


def test_discussion_status_of_an_invisible_private_repo_is_404_like_a_missing_one(users_hub):
    hub = users_hub
    HfApi(endpoint=hub.url, token=BOB).create_discussion("bob/secret", title="private talk")
    alice = {"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"}
    answers = [request(hub.url, "POST", f"/api/models/{repo}/discussions/1/status", b'{"status": "closed"}', alice)
               for repo in ("bob/secret", "bob/missing")]
    assert [a[0] for a in answers] == [404, 404]
    assert answers[0][1]["X-Error-Code"] == answers[1][1]["X-Error-Code"] == "RepoNotFound"
    assert HfApi(endpoint=hub.url, token=BOB).get_discussion_details("bob/secret", 1).status == "open"


def test_lfs_put_without_signature_needs_a_token_in_users_mode(users_hub):
    hub = users_hub
    data = b"unsigned upload"
    oid = hashlib.sha256(data).hexdigest()
    status, _, _ = request(hub.url, "PUT", f"/_hubtool/lfs/{oid}", data)
    assert status == 401
    status, _, _ = request(hub.url, "PUT", f"/_hubtool/lfs/{oid}?repo=model/bob/secret&sig=0123456789abcdef0123456789abcdef", data)
    assert status == 401
    status, _, _ = request(hub.url, "PUT", f"/_hubtool/lfs/{oid}?repo=model/alice/x&sig={hub.state.sign(oid, 'model/bob/secret')}", data)
    assert status in (401, 404)  # a signature is for one repo only
    assert not (hub.root / "blobs" / oid[:2] / oid).exists()
    status, _, _ = request(hub.url, "PUT", f"/_hubtool/lfs/{oid}?repo=model/bob/secret&sig={hub.state.sign(oid, 'model/bob/secret')}", data)
    assert status == 200 and (hub.root / "blobs" / oid[:2] / oid).read_bytes() == data


# ---------------------------------------------------------------------------- one repo's objects stay its own
BOB_WEIGHTS = os.urandom(1) + b"bob's private weights, never alice's " * 2000


@pytest.fixture(params=["xet", "lfs"])
def private_objects_hub(sandbox, request, monkeypatch):
    """bob/secret (private) holds an LFS/Xet file and a regular file; alice/open is public with her own Xet file."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", request.param == "lfs")
    root, _ = sandbox
    with serve_in_thread(root, users={ALICE: ("alice", []), BOB: ("bob", [])}) as hub:
        bob = HfApi(endpoint=hub.url, token=BOB)
        bob.create_repo("bob/secret", private=True)
        bob.upload_file(path_or_fileobj=BOB_WEIGHTS, path_in_repo="w.safetensors", repo_id="bob/secret")
        bob.upload_file(path_or_fileobj=b"bob's private notes\n", path_in_repo="notes.txt", repo_id="bob/secret")
        alice = HfApi(endpoint=hub.url, token=ALICE)
        alice.create_repo("alice/open")
        alice.upload_file(path_or_fileobj=os.urandom(50_000), path_in_repo="a.safetensors", repo_id="alice/open")
        hub.mode = request.param
        yield hub


def test_commit_cannot_claim_another_repos_object_by_its_hash(private_objects_hub):
    """alice names the sha256 of bob's private file in her commit: refused, and nothing to download."""
    hub = private_objects_hub
    alice = {"Authorization": f"Bearer {ALICE}", "Content-Type": "application/x-ndjson"}
    for data in (BOB_WEIGHTS, b"bob's private notes\n"):
        oid = hashlib.sha256(data).hexdigest()
        body = commit_body({"key": "lfsFile", "value": {"path": "stolen.bin", "algo": "sha256", "oid": oid, "size": len(data)}})
        status, _, answer = request(hub.url, "POST", "/api/models/alice/open/commit/main", body, alice)
        assert_4xx(status, answer)
        status, _, answer = request(hub.url, "GET", "/alice/open/resolve/main/stolen.bin", headers=alice)
        assert status == 404 and data not in answer
        # nor through the LFS batch: a blob stored for bob is asked for again from alice
        batch = json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}).encode()
        status, _, answer = request(hub.url, "POST", "/alice/open.git/info/lfs/objects/batch", batch, alice)
        assert status == 200 and "upload" in json.loads(answer)["objects"][0]["actions"]
    # alice uploading the same bytes herself is fine: then they are hers too
    api = HfApi(endpoint=hub.url, token=ALICE)
    api.upload_file(path_or_fileobj=BOB_WEIGHTS, path_in_repo="mine.safetensors", repo_id="alice/open")
    status, _, answer = request(hub.url, "GET", "/alice/open/resolve/main/mine.safetensors")
    assert status == 200 and answer == BOB_WEIGHTS


def test_xet_read_token_names_a_replica_of_that_repo_only(private_objects_hub):
    """An anonymous read token for a public repo: its store lists and holds none of bob's private files."""
    import hf_xet

    from hubtool.hub_server.xet import parse_shard

    hub = private_objects_hub
    status, headers, answer = request(hub.url, "GET", "/api/models/alice/open/xet-read-token/main")
    assert status == 200
    cas = json.loads(answer)["casUrl"]
    assert cas.startswith("local://") and headers["X-Xet-Cas-Url"] == cas
    replica = Path(cas[len("local://"):])
    assert str(hub.root) not in cas and str(hub.root.resolve()) not in cas  # the root's path is not revealed
    listed: dict = {}
    for shard in replica.rglob("*.mdb"):
        listed.update(parse_shard(shard.read_bytes()))
    bob_sha = hashlib.sha256(BOB_WEIGHTS).hexdigest()
    assert bob_sha not in listed
    assert all(BOB_WEIGHTS[:64] not in f.read_bytes() for f in replica.rglob("*") if f.is_file())
    if hub.mode == "xet":
        bob_entry = next(e for e in HfApi(endpoint=hub.url, token=BOB).list_repo_tree("bob/secret") if e.path == "w.safetensors")
        out = hub.root.parent / "stolen.bin"
        with pytest.raises(Exception):
            with hf_xet.XetSession().new_file_download_group(endpoint=cas, token="x", token_expiry_unix_secs=int(time.time()) + 600) as group:
                group.start_download_file(hf_xet.XetFileInfo(bob_entry.xet_hash, bob_entry.size), str(out))
        assert not out.exists() or out.read_bytes() != BOB_WEIGHTS
        alice_entry = next(e for e in HfApi(endpoint=hub.url).list_repo_tree("alice/open") if e.path == "a.safetensors")
        assert alice_entry.xet_hash in {xet for xet, _ in listed.values()}  # the token still serves its own repo


# ---------------------------------------------------------------------------- start-up hygiene
def test_stale_temp_files_are_removed_at_start(tmp_path):
    root = tmp_path / "root"
    (root / "blobs").mkdir(parents=True)
    stale = root / "blobs" / ".upload-abc123"
    fresh = root / "blobs" / ".upload-live"
    stale_json = root / "repos" / "model" / "acme" / "m" / ".refs.json.xyz"
    stale_json.parent.mkdir(parents=True)
    keep = root / "blobs" / "ab" / ("ab" + "0" * 62)
    keep.parent.mkdir()
    for path in (stale, fresh, stale_json, keep):
        path.write_bytes(b"")
    old = time.time() - 3600
    for path in (stale, stale_json, keep):
        os.utime(path, (old, old))
    with serve_in_thread(root) as hub:
        # the root lock rules out a second server writing here: every temp file is a leftover
        assert hub.state.storage.removed_temp_files == 3
    assert not stale.exists() and not stale_json.exists() and not fresh.exists()
    assert keep.exists()  # real data


def test_open_mode_refuses_non_loopback_without_explicit_flag(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hubtool", "hub", "serve", "--root", str(tmp_path / "root"), "--port", "0", "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --host 0.0.0.0:") and "--users FILE" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "root").exists()


def test_non_loopback_bind_warns(tmp_path):
    assert bind_warning("127.0.0.1", None) is None and bind_warning("::1", None) is None and bind_warning("localhost", None) is None
    assert "open mode" in bind_warning("0.0.0.0", None)
    assert "not loopback" in bind_warning("192.168.1.5", {"t" * 8: ("a", [])})
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubtool", "hub", "serve", "--root", str(tmp_path / "root"), "--port", "0", "--host", "0.0.0.0",
         "--allow-open-network"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://0.0.0.0:")
        warning = proc.stderr.readline()
        assert warning.startswith("warning: the local Hub listens on 0.0.0.0, not loopback")
        port = int(url.rsplit(":", 1)[1])
        status, _, _ = request(f"http://127.0.0.1:{port}", "GET", "/api/models/acme/none")
        assert status == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_users_file_enables_auth_from_the_cli(tmp_path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({ALICE: {"name": "alice", "orgs": ["acme"]}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubtool", "hub", "serve", "--root", str(tmp_path / "root"), "--port", "0", "--users", str(users)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        body = json.dumps({"name": "m", "organization": "acme"}).encode()
        assert request(url, "POST", "/api/repos/create", body)[0] == 401
        assert request(url, "POST", "/api/repos/create", body, {"Authorization": f"Bearer {ALICE}"})[0] == 200
        assert request(url, "POST", "/_hubtool/faults", b'{"method": "GET", "path_regex": "x", "status": 500}')[0] == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert ALICE not in err
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    done = subprocess.run([sys.executable, "-m", "hubtool", "hub", "serve", "--root", str(tmp_path / "r2"), "--users", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: ") and "bad.json" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_server_keeps_serving_after_a_burst_of_probes(open_hub):
    hub, _ = open_hub
    probes = [b"GARBAGE\r\n\r\n", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"POST /api/repos/create HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
              b"GET /api/models/%ff%fe/x HTTP/1.1\r\nHost: x\r\n\r\n", b"DELETE /_hubtool/lfs/x HTTP/1.1\r\nHost: x\r\n\r\n"]
    for probe in probes * 3:
        raw_exchange(hub.url, probe, timeout=4)
    assert_serving(hub)


# ---------------------------------------------------------------------------- resources
def test_read_tokens_and_downloads_leave_a_bounded_number_of_replicas(sandbox):
    """50 anonymous read tokens and 50 downloads: one replica (was one per token, kept for 6 h)."""
    from hubtool.hub_server.xet import READER_CAP

    root, _ = sandbox
    data = os.urandom(200_000)
    with serve_in_thread(root) as hub:
        api = HfApi(endpoint=hub.url, token=False)
        api.create_repo("acme/pub")
        api.upload_file(path_or_fileobj=data, path_in_repo="w.safetensors", repo_id="acme/pub")
        readers = hub.state.storage.xet.readers_dir
        for _ in range(50):
            assert request(hub.url, "GET", "/api/models/acme/pub/xet-read-token/main")[0] == 200
            status, _, body = request(hub.url, "GET", "/acme/pub/resolve/main/w.safetensors")
            assert status == 200 and body == data
        replicas = [p for p in readers.iterdir()]
        assert len(replicas) == 1  # one commit, no reader holding it: one replica, handed out 50 times
        seen, own_bytes = set(), 0
        for f in readers.rglob("*"):
            st = f.stat()
            if f.is_file() and st.st_ino not in seen:
                seen.add(st.st_ino)
                own_bytes += st.st_size if st.st_nlink == 1 else 0  # hard links share the store's bytes
        assert own_bytes <= READER_CAP * (2 << 20)  # hf-xet's index copy (~1 MB) per replica, at most
        assert not (hub.root / "xet-readers").exists()  # and none under the root
    assert not readers.exists()  # a stopped server leaves no replica behind


def test_slow_body_is_cut_off_by_a_total_time_limit(open_hub):
    """One byte a second never trips a 2 s per-read timeout; the total budget (2 s + size/64 KiB/s) does."""
    hub, _ = open_hub
    parts = urlsplit(hub.url)
    sent = 0
    start = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n")
        try:
            while sent < 40 and time.monotonic() - start < 20:
                sock.sendall(b" ")
                sent += 1
                time.sleep(1.0)
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < 12, f"the server kept reading a 1 byte/s body for {sent} s"


def test_card_of_brackets_is_linked_raw_not_rendered(open_hub):
    hub, _ = open_hub
    api = HfApi(endpoint=hub.url, token=False)
    api.upload_file(path_or_fileobj=b"[" * 240_000, path_in_repo="README.md", repo_id="acme/target")
    status, _, page = request(hub.url, "GET", "/acme/target", timeout=30)
    assert status == 200 and b"view raw" in page and b"/acme/target/resolve/" in page
    api.upload_file(path_or_fileobj=b"# Fine card\n\nSome *text* with a [link](https://example.com).\n", path_in_repo="README.md", repo_id="acme/target")
    status, _, page = request(hub.url, "GET", "/acme/target")
    assert status == 200 and b"<em>text</em>" in page and b"view raw" not in page


# ---------------------------------------------------------------------------- malformed input is 4xx (or a page)
@pytest.mark.parametrize("header", [
    "model-index: just a string",
    "model-index:\n- results: a string",
    "model-index:\n- results:\n  - metrics: a string\n    dataset: a string",
    "model-index:\n- results:\n  - metrics:\n    - a string\n    dataset: [1, 2]",
    "model-index: [1, 2, null]",
    "released: 2024-01-02\nblob: !!binary aGVsbG8=\nitems: !!set {a: null, b: null}",
    "when:\n  2024-01-02: a date key",
    "loop: &a [*a]",
])
def test_repo_page_with_odd_front_matter_types_is_a_page(open_hub, header):
    hub, _ = open_hub
    card = f"---\nlicense: mit\n{header}\n---\n# Card\n".encode()
    HfApi(endpoint=hub.url, token=False).upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id="acme/target")
    status, _, page = request(hub.url, "GET", "/acme/target")
    assert status == 200 and b"<h1>Card</h1>" in page and b"Error" not in page, page[:300]


@pytest.mark.parametrize("size", ["1e400", "Infinity", "-Infinity", "NaN", "1.5", "true", '"12"', "-1"])
def test_odd_sizes_in_lfs_batch_and_preupload_are_4xx(open_hub, size):
    hub, _ = open_hub
    oid = "a" * 64
    batch = f'{{"operation": "upload", "objects": [{{"oid": "{oid}", "size": {size}}}]}}'.encode()
    status, _, answer = request(hub.url, "POST", "/acme/target.git/info/lfs/objects/batch", batch, {"Content-Type": "application/json"})
    if status == 200:  # the batch API answers per object: this one must carry an error and no upload action
        obj = json.loads(answer)["objects"][0]
        assert obj["error"]["code"] == 422 and "actions" not in obj
    else:
        assert_4xx(status, answer)
    pre = f'{{"files": [{{"path": "x.bin", "size": {size}, "sample": ""}}]}}'.encode()
    status, _, answer = request(hub.url, "POST", "/api/models/acme/target/preupload/main", pre, {"Content-Type": "application/json"})
    assert_4xx(status, answer)
    body = commit_body({"key": "lfsFile", "value": {"path": "x.bin", "algo": "sha256", "oid": oid, "size": json.loads(size) if size[0] not in "IN-" else 1}})
    status, _, answer = request(hub.url, "POST", "/api/models/acme/target/commit/main", body.replace(b'"size": 1}', f'"size": {size}}}'.encode()))
    assert_4xx(status, answer)
    assert HfApi(endpoint=hub.url).list_repo_files("acme/target") == [".gitattributes"]


@pytest.mark.parametrize("route", ["/api/repos/create", "/api/models/acme/target/preupload/main", "/api/models/acme/target/commit/main"])
def test_deeply_nested_json_is_400(open_hub, route):
    hub, _ = open_hub
    body = b"[" * 100_000 + b"]" * 100_000
    status, _, answer = request(hub.url, "POST", route, body, {"Content-Type": "application/json"})
    assert status == 400 and b"deeper" in answer
    status, _, answer = request(hub.url, "POST", route, b'{"a": ' * 2000 + b"1" + b"}" * 2000, {"Content-Type": "application/json"})
    assert status == 400


# ---------------------------------------------------------------------------- fidelity
def test_repo_names_are_case_insensitive(open_hub):
    hub, _ = open_hub
    api = HfApi(endpoint=hub.url, token=False)
    api.create_repo("local/CaseRepo")
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("local/caserepo")
    assert err.value.response.status_code == 409
    api.upload_file(path_or_fileobj=b"hello\n", path_in_repo="a.txt", repo_id="LOCAL/caserepo")
    assert api.list_repo_files("local/CaseRepo") == [".gitattributes", "a.txt"]
    assert api.repo_info("local/casEREPO").id == "local/CaseRepo"
    assert [m.id for m in api.list_models(author="local")] == ["local/CaseRepo"]


def test_case_variant_of_a_namespace_gets_no_access(sandbox):
    """User `Alice` must not reach alice's repos by spelling the namespace her way."""
    root, _ = sandbox
    other = "hf_OTHERaliceTOKEN0123456789"
    with serve_in_thread(root, users={ALICE: ("alice", []), other: ("Alice", [])}) as hub:
        HfApi(endpoint=hub.url, token=ALICE).create_repo("alice/private", private=True)
        mallory = HfApi(endpoint=hub.url, token=other)
        from huggingface_hub.errors import HfHubHTTPError

        for call in (lambda: mallory.list_repo_files("Alice/private"),
                     lambda: mallory.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="Alice/private"),
                     lambda: mallory.create_repo("Alice/PRIVATE")):
            with pytest.raises(HfHubHTTPError) as err:
                call()
            assert err.value.response.status_code in (403, 404, 409)
        assert HfApi(endpoint=hub.url, token=ALICE).list_repo_files("alice/private") == [".gitattributes"]


@pytest.mark.parametrize("namespace", ["api", "models", "datasets", "spaces", "Models"])
def test_reserved_namespaces_are_refused(open_hub, namespace):
    hub, _ = open_hub
    body = json.dumps({"name": "x", "organization": namespace}).encode()
    status, _, answer = request(hub.url, "POST", "/api/repos/create", body, {"Content-Type": "application/json"})
    assert status == 400 and b"reserved" in answer
    body = json.dumps({"fromRepo": "acme/target", "toRepo": f"{namespace}/target"}).encode()
    status, _, answer = request(hub.url, "POST", "/api/repos/move", body, {"Content-Type": "application/json"})
    assert status == 400
    assert not (hub.root / "repos" / "model" / namespace).exists()


def test_control_characters_are_not_echoed_into_headers(open_hub):
    hub, _ = open_hub
    reply = raw_exchange(hub.url, b"GET /acme/target/resolve/main/a%1b%5b31mred%07%00.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = reply.split(b"\r\n\r\n", 1)[0]
    assert b" 404 " in head.split(b"\r\n")[0]
    message = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"x-error-message:"))
    assert not any(c < 0x20 or c == 0x7F for c in message), message


@pytest.mark.parametrize(("value", "status"), [("bytes=-", 416), ("bytes=-0", 416), ("bytes=0-", 206), ("bytes=-3", 206), ("bytes=99-", 416)])
def test_range_edge_cases(open_hub, value, status):
    hub, _ = open_hub
    HfApi(endpoint=hub.url).upload_file(path_or_fileobj=b"0123456789", path_in_repo="d.txt", repo_id="acme/target")
    got, headers, body = request(hub.url, "GET", "/acme/target/resolve/main/d.txt", headers={"Range": value})
    assert got == status, (value, got, body)
    if status == 206:
        assert body == (b"789" if value == "bytes=-3" else b"0123456789")


def test_second_server_on_one_root_is_refused(sandbox):
    """Two servers on one root lost 9 of 20 commits: the second is refused, naming the first."""
    from hubtool.hub_server.errors import StorageError

    root, _ = sandbox
    with serve_in_thread(root) as hub:
        with pytest.raises(StorageError) as err:
            serve_in_thread(root)
        assert f"pid {os.getpid()}" in str(err.value) and str(root) in str(err.value)
        proc = subprocess.run([sys.executable, "-m", "hubtool", "hub", "serve", "--root", str(root), "--port", "0"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and f"pid {os.getpid()}" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert_serving_root = request(hub.url, "GET", "/api/models/acme/none")[0]
        assert assert_serving_root == 404
    with serve_in_thread(root) as hub:  # the lock goes with the server
        assert request(hub.url, "GET", "/api/models/acme/none")[0] == 404


def test_cli_admin_and_allow_faults_flags(tmp_path):
    users = tmp_path / "users.json"
    admin = "hf_ADMINcliTOKEN0123456789"
    users.write_text(json.dumps({ALICE: {"name": "alice", "orgs": []}, admin: {"name": "root", "admin": True}}))
    spec = b'{"method": "GET", "path_regex": "/nothing/", "status": 500}'
    for args, expected in (([ "--users", str(users)], {ALICE: 403, admin: 200}), (["--allow-faults"], {None: 200}), ([], {None: 403})):
        proc = subprocess.Popen([sys.executable, "-m", "hubtool", "hub", "serve", "--root", str(tmp_path / "root"), "--port", "0", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            url = proc.stdout.readline().strip()
            for token, status in expected.items():
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                assert request(url, "POST", "/_hubtool/faults", spec, headers)[0] == status, (args, token)
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({ALICE: {"name": "alice", "admin": "yes"}}))
    done = subprocess.run([sys.executable, "-m", "hubtool", "hub", "serve", "--root", str(tmp_path / "r2"), "--users", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "admin" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_same_bytes_in_two_repos_download_from_each(sandbox, tmp_path):
    """The same file pushed to two repos is in both repos' Xet stores; a read token of the second
    must serve it together with the second's other files (one store per replica)."""
    from huggingface_hub import snapshot_download

    root, _ = sandbox
    shared, own = os.urandom(150_000), os.urandom(120_000)
    with serve_in_thread(root) as hub:
        api = HfApi(endpoint=hub.url, token=False)
        for repo in ("acme/first", "acme/second"):
            api.create_repo(repo)
        api.upload_file(path_or_fileobj=shared, path_in_repo="shared.safetensors", repo_id="acme/first")
        api.upload_file(path_or_fileobj=shared, path_in_repo="shared.safetensors", repo_id="acme/second")
        api.upload_file(path_or_fileobj=own, path_in_repo="own.safetensors", repo_id="acme/second")
        got = Path(snapshot_download("acme/second", endpoint=hub.url, cache_dir=tmp_path / "dl"))
        assert (got / "shared.safetensors").read_bytes() == shared and (got / "own.safetensors").read_bytes() == own


def test_a_cached_read_token_outlives_a_burst_of_other_tokens(sandbox, tmp_path):
    """Clients cache a read token per commit for an hour: its replica must survive other readers' tokens."""
    import hf_xet

    root, _ = sandbox
    data = os.urandom(100_000)
    with serve_in_thread(root) as hub:
        api = HfApi(endpoint=hub.url, token=False)
        for repo in ("acme/kept", "acme/busy"):
            api.create_repo(repo)
            api.upload_file(path_or_fileobj=os.urandom(10_000) if repo == "acme/busy" else data, path_in_repo="w.safetensors", repo_id=repo)
        cas = json.loads(request(hub.url, "GET", "/api/models/acme/kept/xet-read-token/main")[2])["casUrl"]
        for n in range(40):  # other commits' tokens
            api.upload_file(path_or_fileobj=str(n).encode(), path_in_repo="n.txt", repo_id="acme/busy")
            assert request(hub.url, "GET", "/api/models/acme/busy/xet-read-token/main")[0] == 200
        entry = next(e for e in api.list_repo_tree("acme/kept") if e.path == "w.safetensors")
        out = tmp_path / "w.bin"
        with hf_xet.XetSession().new_file_download_group(endpoint=cas, token="t", token_expiry_unix_secs=int(time.time()) + 600) as group:
            group.start_download_file(hf_xet.XetFileInfo(entry.xet_hash, entry.size), str(out))
        assert out.read_bytes() == data
