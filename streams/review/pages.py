"""The review UI's server-rendered pages (placeholder until the pages land)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def add_pages(app: web.Application, review: Any) -> None:
    """Register the HTML pages and static files on the web app."""
