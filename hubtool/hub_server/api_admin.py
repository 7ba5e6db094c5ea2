"""Admin endpoints of the local Hub: fault injection (`/_hubtool/faults`), for its owner only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubtool.hub_server.errors import StorageError

if TYPE_CHECKING:
    from hubtool.hub_server import HubState


class AdminMixin:
    """The fault-injection endpoint, for a HubHandler."""

    hub: "HubState"
    query: dict[str, list[str]]
    raw_path: str
    command: str

    def faults_endpoint(self, method: str) -> None:
        """/_hubtool/faults: POST adds a rule, DELETE clears, GET lists; the server's owner only."""
        self._require_admin()  # fault injection changes what every client sees
        if method == "POST":
            spec = self.body_json(required=True)
            try:
                rule = self.hub.faults.add(str(spec["method"]), str(spec["path_regex"]), int(spec["status"]), int(spec.get("times", 1)))
            except (ValueError, OverflowError) as exc:
                raise StorageError(400, "BadRequest", f"invalid fault: {exc}") from None
            return self._json(200, rule.as_dict())
        if method == "DELETE":
            self.hub.faults.clear()
            return self._json(200, {"faults": []})
        return self._json(200, {"faults": self.hub.faults.snapshot()})
