"""Fault injection: make matching requests fail with a chosen status a set number of times.

Tests use it to rehearse what the real Hub does on a bad day (503 storms, 401/403, a dropped
connection mid-upload) and check that pushes retry, report clearly and resume.

`path_regex` is a bounded subset of regex syntax, matched in linear time so that no pattern can
stall the server (no catastrophic backtracking under the GIL): literals, `\\x` escapes (`\\d`,
`\\w`, `\\s` classes), `.`, `[...]` classes, an `{N}` count after one of those, `.*` gaps, and
`^` / `$` anchors. Groups, alternation and the other quantifiers are refused (400).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

MAX_PATTERN = 1000
MAX_COUNT = 1000

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
    _pattern: "PathPattern" = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        self._pattern = PathPattern(self.path_regex)

    def matches(self, method: str, path: str) -> bool:
        return self.remaining > 0 and self.method in ("*", method.upper()) and self._pattern.search(path)

    def as_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "path_regex": self.path_regex,
            "status": self.status,
            "remaining": self.remaining,
            "hits": self.hits,
        }


class PathPattern:
    """A fixed-length-pieces regex: pieces without quantifiers joined by `.*`, found left to right.

    Each piece compiles to a regex with no repetition, so finding it costs O(len(path) * len(piece));
    taking each piece at its earliest place after the previous one is exact for `.*` gaps.
    """

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or len(text) > MAX_PATTERN:
            raise ValueError(f"path_regex must be a string of at most {MAX_PATTERN} characters")
        self.start = text.startswith("^")
        self.end = text.endswith("$") and not text.endswith("\\$")
        body = text[1 if self.start else 0 : len(text) - 1 if self.end else len(text)]
        pieces: list[str] = []
        current: list[str] = []
        i = 0
        while i < len(body):
            c = body[i]
            if body.startswith(".*", i):
                pieces.append("".join(current))
                current = []
                i += 2
                continue
            if c == "\\":
                if i + 1 >= len(body):
                    raise ValueError("path_regex ends with a lone backslash")
                nxt = body[i + 1]
                if nxt.isalnum() and nxt not in "dwsDWS":
                    raise ValueError(f"path_regex escape \\{nxt} is not supported")
                atom, i = "\\" + nxt, i + 2
            elif c == "[":
                close = body.find("]", i + 2 if body.startswith("[]", i) or body.startswith("[^]", i) else i + 1)
                if close < 0 or "[" in body[i + 1 : close]:
                    raise ValueError("path_regex has an unclosed or nested [")
                atom, i = body[i : close + 1], close + 1
            elif c in "()|+?*{}$^":
                raise ValueError(f"path_regex may not use {c!r} here (supported: literals, \\x, ., [...], {{N}}, .*, ^, $)")
            else:
                atom, i = re.escape(c) if c != "." else ".", i + 1
            count = re.match(r"\{(\d{1,4})\}", body[i:])
            if count:
                if int(count.group(1)) > MAX_COUNT:
                    raise ValueError(f"path_regex count over {MAX_COUNT}")
                atom = f"(?:{atom}){{{int(count.group(1))}}}"
                i += count.end()
            current.append(atom)
        pieces.append("".join(current))
        try:
            self._pieces = [re.compile(p, re.S) for p in pieces]
        except re.error as exc:
            raise ValueError(f"invalid path_regex: {exc}") from None
        self._gaps = len(pieces) > 1

    def search(self, path: str) -> bool:
        pos = 0
        last = len(self._pieces) - 1
        for n, piece in enumerate(self._pieces):
            if n == last and self.end:
                # the last piece is fixed-length: it must sit at the very end, after `pos`
                if not self._gaps and self.start:
                    return piece.fullmatch(path) is not None
                # O(len(path) * len(piece)): each try of a quantifier-free piece is bounded by its length
                return any(piece.fullmatch(path, at) is not None for at in range(len(path), pos - 1, -1))
            found = piece.match(path, pos) if (n == 0 and self.start) else piece.search(path, pos)
            if found is None:
                return False
            pos = found.end()
        return True


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
