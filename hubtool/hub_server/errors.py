"""The local Hub's one error type: a refusal that handlers turn into an HTTP status + X-Error-Code."""

from __future__ import annotations


class StorageError(Exception):
    """A request the server refuses; the handler turns it into an HTTP error with this code."""

    def __init__(self, status: int, code: str, message: str, *, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra or {}  # more fields for the JSON body (e.g. the existing slug of a 409)
