"""Discussions and pull requests of the local Hub (list, create, details, merge, status)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubtool.hub_server.errors import StorageError
from hubtool.hub_server.storage import RepoRef

_DISCUSSION_PAGE = 50

if TYPE_CHECKING:
    from hubtool.hub_server import HubState


class DiscussionsMixin:
    """Discussion and pull-request endpoints, for a HubHandler."""

    hub: "HubState"
    query: dict[str, list[str]]
    raw_path: str
    command: str

    def _discussion_json(self, ref: RepoRef, item: dict[str, Any], *, details: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "num": item["num"], "title": item["title"], "status": item["status"], "isPullRequest": item["isPullRequest"],
            "createdAt": item["createdAt"], "author": {"name": item["author"], "type": "user"},
            "repo": {"name": ref.repo_id, "type": ref.type}, "pinned": False,
            "numComments": sum(1 for e in item["events"] if e["type"] == "comment"),
        }
        if details:
            out["events"] = [{**e, "author": {"name": e["author"], "type": "user"}} for e in item["events"]]
            if item["isPullRequest"]:
                out["changes"] = {"base": f"refs/heads/{item['base']}", "mergeCommitId": item.get("mergeCommitId")}
                out["filesWithConflicts"] = []
        return out

    def list_discussions(self, ref: RepoRef) -> None:
        """GET .../discussions?p=&type=&status=&author=: 50 per page, newest first, as the Hub pages them."""
        self._require_read(ref)
        kind = self.query.get("type", ["all"])[0]
        status = self.query.get("status", ["all"])[0]
        author = self.query.get("author", [None])[0]
        page = int(self.query.get("p", ["0"])[0])
        items = [d for d in reversed(self.hub.storage.discussions(ref))
                 if (kind == "all" or (kind == "pull_request") == d["isPullRequest"])
                 and (status == "all" or d["status"] == status) and (author is None or d["author"] == author)]
        start = page * _DISCUSSION_PAGE
        self._json(200, {"discussions": [self._discussion_json(ref, d) for d in items[start:start + _DISCUSSION_PAGE]],
                         "count": len(items), "start": start, "numClosedDiscussions": sum(1 for d in items if d["status"] != "open")})

    def create_discussion(self, ref: RepoRef) -> None:
        spec = self.body_json(required=True)
        author = self._require_contributor(ref)
        title, description = spec.get("title"), spec.get("description") or ""
        if not isinstance(title, str) or not title.strip() or not isinstance(description, str):
            raise StorageError(400, "BadRequest", "'title' (non-empty) and 'description' must be strings")
        num = self.hub.storage.create_discussion(ref, title=title, description=description, author=author,
                                                 pull_request=spec.get("pullRequest") is True)
        self._json(200, {"num": num, "url": f"{self._repo_url(ref)}/discussions/{num}", "pullRequest": spec.get("pullRequest") is True})

    def discussion_details(self, ref: RepoRef, num: int) -> None:
        self._require_read(ref)
        self._json(200, self._discussion_json(ref, self.hub.storage.discussion(ref, num), details=True))

    def merge_pr(self, ref: RepoRef, num: int) -> None:
        spec = self.body_json()
        author = self._require_write(ref)
        comment = spec.get("comment")
        commit_id = self.hub.storage.merge_pull_request(ref, num, author, comment if isinstance(comment, str) else None)
        self._json(200, {"commitId": commit_id})

    def discussion_status(self, ref: RepoRef, num: int) -> None:
        spec = self.body_json(required=True)
        user = self._require_user()
        self._require_read(ref)  # a private repo the caller cannot see is 404, as a missing one
        item = self.hub.storage.discussion(ref, num)
        if not self._can_write(ref, user) and item["author"] != user[0]:
            raise StorageError(403, "Forbidden", f"You don't have the rights to change #{num} of {ref.repo_id}")
        event = self.hub.storage.change_status(ref, num, spec.get("status"), user[0])
        self._json(200, {"newStatus": {**event, "author": {"name": event["author"], "type": "user"}}})
