"""The scale switch: short by default (part of `make test`), full with ``--chaos-full`` or ``SWATCH_CHAOS_FULL=1``.

:data:`FULL` is read when the test module is imported, which is after ``pytest_configure`` in
``tests/chaos/conftest.py`` has folded the command-line option into it, so per-test timeouts can
be chosen by scale in decorators.
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

FULL = os.environ.get("SWATCH_CHAOS_FULL", "") not in ("", "0")


def pick(short: T, full: T) -> T:
    """The short-scale value, or the full-scale one under ``--chaos-full``."""
    return full if FULL else short


def name() -> str:
    """``full`` or ``short``."""
    return "full" if FULL else "short"
