"""A small origin server with validators, for the URL-cache tests: real HTTP on 127.0.0.1, steered per path.

``/img/{name}`` answers ``bodies[name]`` with an ``ETag`` (from the body's hash) and/or a fixed
``Last-Modified``, plus any extra headers of ``extra[name]`` (``Cache-Control``, ...), and ``304``
to a conditional request whose validator still matches. Every request is recorded with its headers.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

LAST_MODIFIED = "Tue, 01 Oct 2024 10:00:00 GMT"


@dataclass
class Origin:
    """What the origin serves and what it saw."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    validators: dict[str, str] = field(default_factory=dict)
    """Per name: ``etag`` (default), ``last-modified``, ``both`` or ``none``."""
    extra: dict[str, dict[str, str]] = field(default_factory=dict)
    unconditional_status: dict[str, int] = field(default_factory=dict)
    """Per name: answer requests without validators with this status instead of the body."""
    conditional_redirect: dict[str, str] = field(default_factory=dict)
    """Per name: answer requests with validators with a 302 to this Location."""
    delay_s: float = 0.0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/img/{name}"

    def hits(self, name: str) -> int:
        return sum(1 for seen, _ in self.requests if seen == name)

    def conditional(self, name: str) -> list[bool]:
        """For each request of ``name``: whether it carried a validator."""
        return [_is_conditional(headers) for seen, headers in self.requests if seen == name]


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


def _is_conditional(headers: dict[str, str]) -> bool:
    return "If-None-Match" in headers or "If-Modified-Since" in headers


def _app(origin: Origin) -> web.Application:
    async def image(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        origin.requests.append((name, dict(request.headers)))
        if origin.delay_s:
            await asyncio.sleep(origin.delay_s)
        conditional = _is_conditional(dict(request.headers))
        if conditional and name in origin.conditional_redirect:
            raise web.HTTPFound(origin.conditional_redirect[name])
        if not conditional and name in origin.unconditional_status:
            return web.Response(status=origin.unconditional_status[name], text="nope")
        body = origin.bodies.get(name)
        if body is None:
            return web.Response(status=404, text="gone")
        kind = origin.validators.get(name, "etag")
        headers = dict(origin.extra.get(name, {}))
        if kind in ("etag", "both"):
            headers["ETag"] = etag_of(body)
        if kind in ("last-modified", "both"):
            headers["Last-Modified"] = LAST_MODIFIED
        match = request.headers.get("If-None-Match")
        since = request.headers.get("If-Modified-Since")
        if match is not None and "ETag" in headers:
            if match == headers["ETag"]:
                return web.Response(status=304, headers=headers)
        elif since is not None and since == headers.get("Last-Modified"):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/img/{name}", image)
    return app


@asynccontextmanager
async def origin_serving(origin: Origin | None = None) -> AsyncIterator[Origin]:
    """Run ``origin`` on a free port of 127.0.0.1 for the duration."""
    origin = origin or Origin()
    runner = web.AppRunner(_app(origin), shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        origin.port = int(runner.addresses[-1][1])
        yield origin
    finally:
        await runner.cleanup()
