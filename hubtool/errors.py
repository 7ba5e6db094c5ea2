"""User-facing errors: one line, naming the file and the fix."""

from __future__ import annotations


class HubtoolError(Exception):
    """An error the user can fix. The CLI prints `error: <message>` and exits with `exit_code`."""

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(HubtoolError):
    """Bad input files or options (exit 2)."""


class MergeError(HubtoolError):
    """The adapter cannot be merged into the base as given (exit 3)."""

    exit_code = 3


class QuantizeError(HubtoolError):
    """Quantization failed or its result failed verification (exit 4)."""

    exit_code = 4


class CardError(HubtoolError):
    """A model card or its metadata is invalid (exit 5)."""

    exit_code = 5


class PushError(HubtoolError):
    """The Hub refused or could not be reached (exit 6)."""

    exit_code = 6
