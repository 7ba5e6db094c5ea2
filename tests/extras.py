"""Importing an optional extra in a test module: skip locally, fail in CI.

A module-level `pytest.importorskip` lets CI go green with the heavy tests silently skipped when an extra
failed to install. In CI (`CI=true`, set by .ci/run and most CI services) every extra is installed by
scripts/setup.sh, so a missing one is a broken environment and must fail the run.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_extra(module: str, extra: str) -> ModuleType:
    """Import `module` (shipped by `hubtool[extra]`); skip without it locally, fail without it in CI."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f"{module} is missing: pip install 'hubtool[{extra}]' ({exc})"
        if in_ci():
            pytest.fail(f"CI=true and {hint}; scripts/setup.sh installs every extra", pytrace=False)
        pytest.skip(hint, allow_module_level=True)
        raise  # unreachable: pytest.skip raises
