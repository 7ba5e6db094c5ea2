"""Push a folder to a Hub repo (or a branch of it) with huggingface_hub, idempotently.

Re-running is the resume story: unchanged files are skipped by the client (the Hub returns
each file's oid on preupload), blobs already stored are not sent again (LFS batch / Xet
dedup), and a push with nothing changed makes no commit. Every failure becomes one PushError
line; the token is scrubbed from anything we print.

With `create_pr`, an existing repo/branch is changed through one pull request (the way to
change a repo you don't own, or to stage a release for review); a repo or branch that does not
exist yet is created and pushed directly, since there is nothing to review against.

The folder is checked before anything is sent: a symlink leading outside it (e.g. to
/etc/passwd) or a file name the Hub refuses (newline, backslash, control characters) is a
one-line InputError naming the file.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hubtool.errors import InputError, PushError
from hubtool.progress import log

_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{6,}")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)\S+")
_STATUS_RE = re.compile(r"\b(401|403|404|409|412|413|429|5\d\d)\b")


@dataclass(frozen=True)
class PushResult:
    """What a push did: where it went, the resulting commit, and how many files changed."""

    repo_id: str
    repo_type: str
    repo_url: str
    branch: str
    commit_sha: str
    commit_url: str
    files_uploaded: int  # paths added or changed by this push (0 when nothing changed)
    files_deleted: int
    changed: bool  # False: the remote already matched, no commit was made
    pr_url: str | None = None  # the pull request this push opened (create_pr on an existing repo/branch)
    pr_num: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def scrub(text: str, token: str | None) -> str:
    """Remove a token (and anything that looks like one) from text we are about to show."""
    if token and len(token) >= 4:
        text = text.replace(token, "***")
    text = _TOKEN_RE.sub("hf_***", text)
    return _BEARER_RE.sub(r"\1***", text)


def resolve_endpoint(endpoint: str | None) -> str:
    """--endpoint, else HF_ENDPOINT, else huggingface.co (what huggingface_hub itself would use)."""
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    branch: str | None = None,
    private: bool = False,
    message: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    repo_type: str = "model",
    delete_missing: bool = False,
    ignore_patterns: list[str] | None = None,
    create_pr: bool = False,
    follow_symlinks: bool = False,
) -> PushResult:
    """Create REPO_ID (and BRANCH) if needed and upload FOLDER to it; re-run to resume.

    The token comes from `token`, else HF_TOKEN / the huggingface_hub login. With
    `delete_missing`, remote files absent from FOLDER are deleted in the same commit;
    `ignore_patterns` (globs) leaves matching local files out. With `create_pr`, changes to an
    existing repo/branch go into one new pull request (`pr_url`) instead of a direct commit.
    Symlinks leading outside FOLDER are refused unless `follow_symlinks`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory; pass the folder to upload")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise InputError(f"{repo_id}: repo id must look like NAMESPACE/NAME")
    local_files = scan_folder(folder, ignore_patterns=ignore_patterns, follow_symlinks=follow_symlinks)
    from huggingface_hub import HfApi, get_token

    endpoint = resolve_endpoint(endpoint)
    token = token or get_token()
    target = branch or "main"
    api = HfApi(endpoint=endpoint, token=token)
    commit_message = message or f"Upload {folder.name} with hubtool"
    pr_url: str | None = None
    pr_num: int | None = None
    try:
        existed = create_pr and api.repo_exists(repo_id, repo_type=repo_type)
        if existed:  # no create_repo: a PR author usually cannot write to the namespace
            repo_url = f"{endpoint}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        else:
            repo_url = str(api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type))
        if create_pr and existed and target != "main":
            existed = target in {b.name for b in api.list_repo_refs(repo_id, repo_type=repo_type).branches}
        if target != "main" and not (create_pr and existed):
            api.create_branch(repo_id, branch=target, exist_ok=True, repo_type=repo_type)
        before_sha, before = _remote_files(api, repo_id, target, repo_type)
        if create_pr and existed:
            log(f"push: opening a pull request on {repo_id}@{target} on {endpoint} with {folder}")
            info = _commit_as_pr(api, folder, local_files, repo_id, repo_type, target, commit_message, before, delete_missing)
            pr_url, pr_num = info.pr_url, info.pr_num
        else:
            log(f"push: uploading {folder} to {repo_id}@{target} on {endpoint}")
            info = api.upload_folder(
                folder_path=folder,
                repo_id=repo_id,
                repo_type=repo_type,
                revision=target,
                commit_message=commit_message,
                delete_patterns="*" if delete_missing else None,
                ignore_patterns=ignore_patterns,
            )
        after_sha = info.oid
        after = before if after_sha == before_sha else _remote_files(api, repo_id, after_sha, repo_type)[1]
    except PushError:
        raise
    except Exception as exc:  # noqa: BLE001 - every client failure becomes one clear line
        raise explain(exc, repo_id=repo_id, branch=target, endpoint=endpoint, token=token) from None
    uploaded = sum(1 for path, oid in after.items() if before.get(path) != oid)
    deleted = sum(1 for path in before if path not in after)
    return PushResult(
        repo_id=repo_id,
        repo_type=repo_type,
        repo_url=scrub(repo_url, token),
        branch=target,
        commit_sha=after_sha,
        commit_url=scrub(info.commit_url, token),
        files_uploaded=uploaded,
        files_deleted=deleted,
        changed=after_sha != before_sha,
        pr_url=scrub(pr_url, token) if pr_url else None,
        pr_num=pr_num,
    )


def _commit_as_pr(api: Any, folder: Path, files: list[str], repo_id: str, repo_type: str, target: str,
                  message: str, before: dict[str, str], delete_missing: bool) -> Any:
    """One commit holding every change, opened as a pull request against TARGET.

    `create_commit` (not `upload_folder`, which only opens PRs against main) so that a branch
    can be the PR's base; unchanged files are dropped by the client, and a push with nothing to
    change opens no PR at all.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    ops: list[Any] = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel)) for rel in files]
    if delete_missing:
        keep = set(files) | {".gitattributes"}
        ops += [CommitOperationDelete(path_in_repo=p) for p in sorted(before) if p not in keep]
    return api.create_commit(repo_id, ops, commit_message=message, repo_type=repo_type,
                             revision=target, create_pr=True)


def scan_folder(folder: Path, *, ignore_patterns: list[str] | None = None, follow_symlinks: bool = False) -> list[str]:
    """Relative POSIX paths of the files a push would send, after refusing what must not go.

    Refused with a one-line InputError naming the file: a symlink (to a file or a folder) whose
    target is outside FOLDER unless `follow_symlinks`, a dangling symlink, and a name the Hub
    refuses (control characters such as a newline, a backslash, over 1000 bytes). What
    huggingface_hub always leaves out (.git/, .cache/huggingface/) is left out here too.
    """
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    from hubtool.hub_server import validate
    from hubtool.hub_server.errors import StorageError

    root = folder.resolve()
    patterns = [*(ignore_patterns or []), *DEFAULT_IGNORE_PATTERNS]
    candidates: list[tuple[str, Path, bool]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=follow_symlinks):
        here = Path(dirpath)
        candidates += [(path.relative_to(folder).as_posix(), path, name in filenames)
                       for name in sorted(dirnames + filenames) for path in [here / name]]
    kept = set(filter_repo_objects([rel for rel, _, _ in candidates], ignore_patterns=patterns))
    found: list[str] = []
    for rel, path, is_file in candidates:
        if rel not in kept:
            continue
        shown = repr(str(path))
        if path.is_symlink():
            target = path.resolve()
            if not target.exists():
                raise InputError(f"{shown}: dangling symlink; remove it or point it at a real file")
            if not follow_symlinks and target != root and root not in target.parents:
                raise InputError(f"{shown}: symlink to {target}, outside {folder}; refusing to upload it "
                                 "(copy the file in, or pass --follow-symlinks)")
        if not is_file:
            continue
        if not path.is_file():  # os.walk lists FIFOs, sockets and devices with the files
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(path.stat().st_mode) else "not a regular file (socket or device)"
            raise InputError(f"{shown}: is {kind}, which cannot be uploaded; remove it, move it out of {folder} "
                             "or leave it out with an ignore pattern (nothing was uploaded)")
        try:
            validate.file_path(rel)
        except StorageError as exc:
            raise InputError(f"{shown}: the Hub refuses this file name ({exc}); rename it") from None
        found.append(rel)
    return sorted(found)


def _remote_files(api: Any, repo_id: str, revision: str, repo_type: str) -> tuple[str, dict[str, str]]:
    """(commit sha, {path: content id}) of a revision: metadata only, no download."""
    sha = api.repo_info(repo_id, revision=revision, repo_type=repo_type).sha
    files = {}
    for entry in api.list_repo_tree(repo_id, revision=sha, recursive=True, repo_type=repo_type):
        if hasattr(entry, "blob_id"):
            files[entry.path] = entry.lfs.sha256 if entry.lfs else entry.blob_id
    return sha, files


def explain(exc: BaseException, *, repo_id: str, branch: str, endpoint: str, token: str | None) -> PushError:
    """Turn a huggingface_hub / hf-xet / network failure into a one-line PushError (token-free)."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    full = _disk_full(exc)
    if full is not None:
        from hubtool.errors import describe_os_error
        from hubtool.hub_server import local_root

        where = local_root(endpoint) or full.filename
        return _push_error(f"{describe_os_error(full, where)} (while pushing {repo_id}); then re-run to resume", token)
    http_exc = _find_cause(exc, HfHubHTTPError)
    detail = ""
    status: int | None = None
    if http_exc is not None:
        response = getattr(http_exc, "response", None)
        status = getattr(response, "status_code", None)
        detail = getattr(http_exc, "server_message", None) or ""
        if not detail and response is not None:
            detail = response.headers.get("X-Error-Message", "")
        if isinstance(http_exc, RevisionNotFoundError):
            return _push_error(f"{repo_id}: branch '{branch}' not found on {endpoint}; check --branch", token)
        if isinstance(http_exc, RepositoryNotFoundError) and status != 401:
            status = 404
    else:
        text = " ".join(str(e) for e in _chain(exc))
        network = _find_cause(exc, ConnectionError) or _find_network_error(exc)
        if network is not None:
            match = _STATUS_RE.search(text)
            if match:
                status = int(match.group(1))
                detail = "during the Xet transfer"
            else:
                short = _one_line(str(network) or type(network).__name__)
                return _push_error(
                    f"{endpoint}: network failure while pushing {repo_id} ({short}); "
                    "check the connection or --endpoint/HF_ENDPOINT, then re-run to resume",
                    token,
                )
    if status is None:
        short = _one_line(str(exc) or type(exc).__name__)
        return _push_error(f"{repo_id}: push failed ({type(exc).__name__}: {short}); re-run to resume", token)
    detail = f": {_one_line(detail)}" if detail else ""
    ns = repo_id.split("/", 1)[0]
    rejected = "the Hub rejected the token" if token else "no token found and the Hub requires one"
    messages = {
        401: f"{endpoint}: {rejected} (401{detail}); set HF_TOKEN or run `hf auth login` with a valid token",
        403: f"{repo_id}: no write access to namespace '{ns}' (403{detail}); use a namespace your token can write to, or a token with write permission",
        404: f"{repo_id}: not found on {endpoint} (404{detail}); check the repo id, --branch and --endpoint",
        409: f"{repo_id}@{branch}: conflict (409{detail}); the repo or branch is in a state the push cannot apply to, check it on the Hub",
        412: f"{repo_id}@{branch}: the branch moved during the push (412{detail}); re-run to push on top of the new head",
        413: f"{repo_id}: the Hub refused the upload as too large (413{detail}); shard or split large files and re-run",
        429: f"{endpoint}: rate limited (429{detail}); wait and re-run to resume",
    }
    if status in messages:
        return _push_error(messages[status], token)
    if status >= 500:
        return _push_error(f"{endpoint}: the Hub failed with {status}{detail} after retries; re-run later to resume", token)
    return _push_error(f"{repo_id}: the Hub refused the push ({status}{detail})", token)


def _push_error(message: str, token: str | None) -> PushError:
    return PushError(scrub(message, token))


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _disk_full(exc: BaseException) -> OSError | None:
    """A full disk or quota anywhere in the chain (hf-xet's Rust errors carry only 'os error 28' in their text)."""
    import errno

    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e
        if "No space left on device" in str(e) or "os error 28" in str(e):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(e, "filename", None))
    return None


def _find_cause(exc: BaseException, kind: type) -> Any:
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


def _find_network_error(exc: BaseException) -> BaseException | None:
    try:
        import httpx2 as httpx
    except ImportError:  # older huggingface_hub uses httpx
        import httpx  # type: ignore[no-redef]
    return _find_cause(exc, httpx.TransportError)
