"""Who may read or write what on the local Hub: the one place every endpoint asks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubtool.hub_server.errors import StorageError
from hubtool.hub_server.storage import RepoRef
from hubtool.hub_server.validate import PR_REF_RE

OPEN_USER = "local"  # the caller in open mode (no --users)

if TYPE_CHECKING:
    from hubtool.hub_server import HubState


class AccessMixin:
    """Access decisions for a HubHandler: the caller, and what it may read, write or administer."""

    hub: "HubState"
    query: dict[str, list[str]]
    raw_path: str
    command: str

    def _user(self) -> tuple[str, list[str]] | None:
        """(name, orgs) of the caller; None when auth is on and the token is missing or unknown."""
        if self.hub.users is None:
            return (OPEN_USER, [])
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if token and token in self.hub.users:
            return self.hub.users[token]
        return None

    def _require_user(self) -> tuple[str, list[str]]:
        user = self._user()
        if user is None:
            raise StorageError(401, "Unauthorized", "Invalid credentials in Authorization header")
        return user

    def _require_admin(self) -> str:
        """The server's owner: an admin in --users (401 without a token, 403 for others); in open
        mode nobody, unless the server was started with open_faults."""
        if self.hub.users is None:
            if not self.hub.open_faults:
                raise StorageError(403, "Forbidden", "fault injection is off: start the server with --allow-faults (open mode) or an admin in --users")
            return OPEN_USER
        user = self._require_user()
        if user[0] not in self.hub.admins:
            raise StorageError(403, "Forbidden", "only an admin of this server (\"admin\": true in --users) may inject faults")
        return user[0]

    def _can_write(self, ref: RepoRef, user: tuple[str, list[str]]) -> bool:
        return self.hub.users is None or ref.namespace in (user[0], *user[1])

    def _require_write(self, ref: RepoRef) -> str:
        """The caller's name if they may write to REF's namespace: 401 without a known token, else 403."""
        user = self._require_user()
        if not self._can_write(ref, user):
            raise StorageError(403, "Forbidden", f"You don't have the rights to write to {ref.repo_id}")
        return user[0]

    def _require_read(self, ref: RepoRef) -> None:
        meta = self.hub.storage.repo_meta(ref)
        if meta.get("private") and self.hub.users is not None:
            user = self._user()
            if user is None or ref.namespace not in (user[0], *user[1]):
                status = 401 if user is None else 404
                raise StorageError(status, "RepoNotFound", f"Repository {ref.repo_id} not found")

    def _readable(self, ref: RepoRef) -> bool:
        try:
            self._require_read(ref)
            return True
        except StorageError:
            return False

    def _require_contributor(self, ref: RepoRef, pr_num: int | None = None) -> str:
        """Who may open (or push to) a pull request: any known user who can read the repo; a PR's
        own ref also takes pushes from its author. Writers of the namespace may always."""
        user = self._require_user()
        self._require_read(ref)
        if self._can_write(ref, user) or pr_num is None:
            return user[0]
        if self.hub.storage.discussion(ref, pr_num).get("author") == user[0]:
            return user[0]
        raise StorageError(403, "Forbidden", f"You don't have the rights to push to refs/pr/{pr_num} of {ref.repo_id}")

    def _require_commit(self, ref: RepoRef, rev: str, create_pr: bool) -> str:
        if create_pr:
            return self._require_contributor(ref)
        pr = PR_REF_RE.fullmatch(rev)
        if pr:
            return self._require_contributor(ref, int(pr.group(1)))
        return self._require_write(ref)

    def _ref(self, repo_type: str, repo_id: str) -> RepoRef:
        """The repo a request names, as stored: names are case-insensitive (as on the Hub), and every
        access decision then uses the stored namespace, not the caller's spelling of it."""
        return self.hub.storage.canonical(RepoRef(repo_type, repo_id))

    def _scope_ref(self, scope: str | None) -> RepoRef | None:
        """The repo an LFS upload URL is for (`?repo=TYPE/NS/NAME`), which must exist."""
        if scope is None:
            return None
        repo_type, _, repo_id = scope.partition("/")
        ref = self._ref(repo_type, repo_id)
        self.hub.storage.repo_meta(ref)
        return ref
