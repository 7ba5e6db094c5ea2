"""Fault injection: make matching requests fail with a chosen status a set number of times.

Tests use it to rehearse what the real Hub does on a bad day (503 storms, 401/403, a dropped
connection mid-upload) and check that pushes retry, report clearly and resume.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

# status 0 means "drop the connection without answering" (a network failure for the client).
DROP_CONNECTION = 0


@dataclass
class FaultRule:
    """Fail requests whose method and path match, `remaining` more times, with `status`."""

    method: str
    path_regex: str
    status: int
    remaining: int
    hits: int = 0
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        self._pattern = re.compile(self.path_regex)

    def matches(self, method: str, path: str) -> bool:
        return self.remaining > 0 and self.method in ("*", method.upper()) and bool(self._pattern.search(path))

    def as_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "path_regex": self.path_regex,
            "status": self.status,
            "remaining": self.remaining,
            "hits": self.hits,
        }


class Faults:
    """A thread-safe list of fault rules, consulted once per request before it is handled."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def add(self, method: str, path_regex: str, status: int, times: int = 1) -> FaultRule:
        """Add a rule; `path_regex` is searched in the raw (still URL-quoted) request path."""
        if status != DROP_CONNECTION and not 400 <= status <= 599:
            raise ValueError(f"fault status must be 0 (drop connection) or 400-599, not {status}")
        rule = FaultRule(method, path_regex, int(status), int(times))
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, method: str, path: str) -> FaultRule | None:
        """The first live rule matching this request, consuming one of its `remaining` failures."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.remaining -= 1
                    rule.hits += 1
                    return rule
        return None

    def snapshot(self) -> list[dict[str, object]]:
        with self._lock:
            return [rule.as_dict() for rule in self._rules]
