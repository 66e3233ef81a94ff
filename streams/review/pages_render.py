"""What the review pages render with (the handlers are in :mod:`streams.review.pages`).

The Jinja2 environment over ``templates/`` (autoescaped, strict about undefined names) with the
UI's filters (``seg``, ``pct``, ``when``, ``ago``) and globals (``query``, the reasons, the static
files' version), the security headers every page sends, the queue filters parsed from a query or
a form, and the local-only target after login.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from streams.review.items import REASONS
from streams.review.store import QueueFilter

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

MAX_FILTER_TEXT = 128

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Filters:
    """The queue filters of a page: the parsed filter, the values to echo back, and what was refused."""

    queue: QueueFilter
    values: dict[str, str]
    problems: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, source: Mapping[str, Any]) -> Filters:
        """Filters from query parameters or form fields; unusable values are dropped with a problem noted."""
        values: dict[str, str] = {}
        problems: list[str] = []
        for name in ("reason", "attribute", "group"):
            text = str(source.get(name) or "").strip()[:MAX_FILTER_TEXT]
            if name == "reason" and text and text not in REASONS:
                problems.append(f"unknown reason {text!r}")
                continue
            if text:
                values[name] = text
        numbers: dict[str, float] = {}
        for name in ("min_confidence", "max_confidence"):
            text = str(source.get(name) or "").strip()
            if not text:
                continue
            try:
                number = float(text)
            except ValueError:
                problems.append(f"{name.replace('_', ' ')} must be a number between 0 and 1, not {text[:20]!r}")
                continue
            if not 0.0 <= number <= 1.0:
                problems.append(f"{name.replace('_', ' ')} must be between 0 and 1")
                continue
            numbers[name] = number
            values[name] = text
        flt = QueueFilter(
            reason=values.get("reason"),
            attribute=values.get("attribute"),
            group=values.get("group"),
            min_confidence=numbers.get("min_confidence"),
            max_confidence=numbers.get("max_confidence"),
        )
        return cls(flt, values, problems)


def query(values: Mapping[str, Any], **overrides: Any) -> str:
    """``?a=1&b=2`` of the non-empty values (overrides win; None drops a key), or ``""``."""
    merged = {**values, **overrides}
    kept = {k: str(v) for k, v in merged.items() if v not in (None, "")}
    return "?" + urllib.parse.urlencode(kept) if kept else ""


def segment(value: Any) -> str:
    """A value quoted for one URL path segment (listing ids may hold ``/``, ``?`` or ``#``)."""
    return urllib.parse.quote(str(value), safe="")


def percent(value: Any) -> str:
    """A confidence as a whole percentage (``0.553`` -> ``55%``)."""
    try:
        return f"{float(value) * 100:.0f}%"
    except (TypeError, ValueError):
        return "-"


def when(millis: Any) -> str:
    """UTC milliseconds as ``2024-05-01 12:30:05 UTC``."""
    try:
        moment = datetime.fromtimestamp(float(millis) / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(millis: Any, now_s: float | None = None) -> str:
    """How long ago UTC milliseconds were (``42 s``, ``5 min``, ``3 h``, ``2 d``)."""
    try:
        seconds = (time.time() if now_s is None else now_s) - float(millis) / 1000
    except (TypeError, ValueError):
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def safe_next(target: str | None) -> str:
    """A local path to go to after login (never another site: ``//host`` and ``/\\host`` are refused)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or "\n" in target:
        return "/"
    return target


def environment() -> jinja2.Environment:
    """The templates, autoescaped, with the UI's filters and helpers."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(seg=segment, pct=percent, when=when, ago=ago)
    env.globals.update(query=query, reasons=REASONS, static_version=static_version())
    return env


def static_version() -> str:
    """A hash of the static files, appended to their URLs so a new release is never served stale."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
