"""Bounds on text that Swatch echoes from untrusted input into its events, logs and metrics.

A merchant's title, an image host's error page or an exception message can be any size; every
string that is copied from outside into an output goes through :func:`clip` with one of the
limits below, so an output cannot grow with its input. The README lists the limits.
"""

from __future__ import annotations

from typing import Final

MAX_REASON_CHARS: Final = 300
"""An image outcome's ``reason``, a dead letter's ``error_message`` summary line, a log detail."""

MAX_URL_CHARS: Final = 2_048
"""An image URL echoed into an event (longer URLs are refused by the fetcher, and echoed cut)."""

MAX_TITLE_CHARS: Final = 1_000
"""A listing title echoed into a review request."""

MAX_ERROR_MESSAGE_CHARS: Final = 2_000
"""A dead letter's ``error_message`` (the exception's text plus a traceback digest)."""

_ELLIPSIS: Final = "..."


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``...`` when it was cut."""
    if len(text) <= limit:
        return text
    if limit <= len(_ELLIPSIS):
        return text[:limit]
    return text[: limit - len(_ELLIPSIS)] + _ELLIPSIS


def clip_optional(text: str | None, limit: int) -> str | None:
    """:func:`clip` that passes None through."""
    return None if text is None else clip(text, limit)
