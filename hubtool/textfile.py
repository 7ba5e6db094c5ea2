"""Read a user's text file (card, YAML settings, calibration/held-out text) with one-line errors.

Users hand us files saved by every editor: UTF-16 from Windows tools, binaries picked by mistake,
folders. Each must end as `error: PATH: <what is wrong>; <the fix>`, never a UnicodeDecodeError.
"""

from __future__ import annotations

from pathlib import Path

from hubtool.errors import HubtoolError, InputError, from_os_error


def read_text(path: Path | str, *, what: str, error: type[HubtoolError] = InputError) -> str:
    """The file's UTF-8 text (a UTF-8 BOM is dropped); `what` names the file kind in errors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found; check the path") from None
    except IsADirectoryError:
        raise error(f"{path}: {what} is a folder; pass a file") from None
    except OSError as exc:
        raise from_os_error(exc, path, error=error) from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(f"{path}: {what} is UTF-16 text; save it as UTF-8")
    if b"\x00" in data[:8192]:
        raise error(f"{path}: {what} is a binary file, not text; pass a UTF-8 text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8") from None
