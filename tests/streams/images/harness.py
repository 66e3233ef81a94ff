"""What the image-source tests share: a real local aiohttp server, raw TCP servers, settings, bombs.

Nothing is mocked at the HTTP level. The test server listens on 127.0.0.1 (and 127.0.0.2 for the
cross-host cases), which the positive tests allow with ``allow_networks``; the guard tests use the
same server as a canary and assert that it saw no request. The hostile answers that no well-behaved
HTTP server can give (garbage instead of HTTP, a lying ``Content-Length``, a TLS handshake that never
gets an answer) come from :func:`raw_serving`, a plain asyncio TCP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import functools
import io
import socket
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from streams.config import FetchSettings
from streams.images import FetchResult, HttpImageSource, RetryPolicy

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(range(256)) * 8
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
HTML = b"<html><body>Sorry, this product is no longer available.</body></html>" * 4
LOOPBACK = ("127.0.0.0/8",)
FAST_RETRIES = RetryPolicy(base_s=0.01, cap_s=0.02, retry_after_cap_s=0.3)
POLYGLOT = b"\xff\xd8\xff\xe0<html><script>alert(document.cookie)</script></html>/*" + bytes(64) + b"*/"
"""Starts with the JPEG magic number and goes on as HTML with a script: a JPEG to the sniffer."""
MiB = 2**20
BOMB_GIB = 2
"""What each bomb inflates to, in GiB; the bodies themselves are about 2 MB."""


def _real_jpeg() -> bytes:
    out = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


TRUNCATED_JPEG = _real_jpeg()[:1200]
"""The first part of a real JPEG: right magic number, no end-of-image marker, undecodable."""


# -- the test server ------------------------------------------------------------------------------


@dataclass
class ServerState:
    """What the test server saw, and a switch that lets slow handlers finish at teardown."""

    hits: Counter[str] = field(default_factory=Counter)
    active: Counter[str] = field(default_factory=Counter)
    max_active: Counter[str] = field(default_factory=Counter)
    headers: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())


def make_app(state: ServerState) -> web.Application:
    async def count(request: web.Request) -> None:
        state.hits[request.path] += 1
        state.headers.append(dict(request.headers))

    async def image(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def png_as_text(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(body=PNG, content_type="text/plain")  # content type is not trusted either way

    async def html_as_jpeg(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(body=HTML, content_type="image/jpeg")

    async def empty(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(body=b"", content_type="image/jpeg")

    async def big(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(body=JPEG + bytes(2 * 2**20), content_type="image/jpeg")  # with Content-Length

    async def endless(request: web.Request) -> web.StreamResponse:
        """A JPEG-looking chunked body without Content-Length that would never end by itself."""
        await count(request)
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(JPEG)
        sent = len(JPEG)
        try:
            while sent < 64 * 2**20 and not state.release.is_set():
                await response.write(bytes(64 * 1024))
                sent += 64 * 1024
        except (ConnectionError, RuntimeError):
            pass
        state.hits["endless-bytes-sent"] = sent
        return response

    async def redirect(request: web.Request) -> web.Response:
        await count(request)
        left = int(request.match_info["n"])
        if left == 0:
            return web.Response(body=JPEG, content_type="image/jpeg")
        raise web.HTTPFound(f"/redirect/{left - 1}")  # relative Location

    async def redirect_to(request: web.Request) -> web.Response:
        await count(request)
        raise web.HTTPFound(request.query["url"])

    async def redirect_long(request: web.Request) -> web.Response:
        """Redirect to this server's image with a query that makes the URL ``length`` characters long."""
        await count(request)
        base = f"{request.scheme}://{request.host}/image.jpg?q="
        raise web.HTTPFound(base + "a" * (int(request.match_info["length"]) - len(base)))

    async def no_location(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(status=302)

    async def status(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def flaky(request: web.Request) -> web.Response:
        """Answer ``code`` for the first ``fails`` requests, then the image."""
        await count(request)
        if state.hits[request.path] <= int(request.match_info["fails"]):
            headers = {"Retry-After": request.query["retry_after"]} if "retry_after" in request.query else {}
            return web.Response(status=int(request.match_info["code"]), headers=headers)
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def slow_headers(request: web.Request) -> web.Response:
        await count(request)
        await _wait(state.release, 5)
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def slow_body(request: web.Request) -> web.StreamResponse:
        await count(request)
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": str(len(JPEG) * 2)})
        await response.prepare(request)
        await response.write(JPEG)
        await _wait(state.release, 5)
        return response

    async def counted(request: web.Request) -> web.Response:
        """Track how many requests per Host header are in progress at once."""
        await count(request)
        host = request.host.rsplit(":", 1)[0]
        state.active[host] += 1
        state.max_active[host] = max(state.max_active[host], state.active[host])
        try:
            await asyncio.sleep(0.1)
        finally:
            state.active[host] -= 1
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def jpeg_as_html(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(body=JPEG, content_type="text/html")

    async def truncated(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(body=TRUNCATED_JPEG, content_type="image/jpeg")

    async def polyglot(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(body=POLYGLOT, content_type="text/html")

    async def loop(request: web.Request) -> web.Response:
        """``/loop/a`` -> ``/loop/b`` -> ``/loop/a``; ``/loop/self`` -> itself (a fragment changes nothing)."""
        await count(request)
        hop = request.match_info["hop"]
        raise web.HTTPFound({"a": "/loop/b", "b": "/loop/a#again"}.get(hop, f"/loop/{hop}"))

    async def bomb(request: web.Request) -> web.Response:
        await count(request)
        encoding = request.match_info["encoding"]
        body = gzip_bomb() if encoding == "gzip" else deflate_bomb()
        return web.Response(body=body, headers={"Content-Type": "image/jpeg", "Content-Encoding": encoding})

    app = web.Application()
    app.router.add_get("/jpeg-as-html", jpeg_as_html)
    app.router.add_get("/truncated", truncated)
    app.router.add_get("/polyglot", polyglot)
    app.router.add_get("/loop/{hop}", loop)
    app.router.add_get("/bomb/{encoding}", bomb)
    app.router.add_get("/image.jpg", image)
    app.router.add_get("/png-as-text", png_as_text)
    app.router.add_get("/html-as-jpeg", html_as_jpeg)
    app.router.add_get("/empty", empty)
    app.router.add_get("/big", big)
    app.router.add_get("/endless", endless)
    app.router.add_get("/redirect/{n}", redirect)
    app.router.add_get("/redirect-to", redirect_to)
    app.router.add_get("/redirect-long/{length}", redirect_long)
    app.router.add_get("/no-location", no_location)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/flaky/{name}/{fails}/{code}", flaky)
    app.router.add_get("/slow-headers", slow_headers)
    app.router.add_get("/slow-body", slow_body)
    app.router.add_get("/counted", counted)
    return app


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


@dataclass
class Server:
    state: ServerState
    ports: dict[str, int]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.ports[host]}{path}"


@asynccontextmanager
async def serving(*hosts: str) -> AsyncIterator[Server]:
    """Run the test app on a free port of each host (default 127.0.0.1) for the duration."""
    state = ServerState()
    runner = web.AppRunner(make_app(state), shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    ports: dict[str, int] = {}
    try:
        for host in hosts or ("127.0.0.1",):
            await web.TCPSite(runner, host, 0).start()
            ports[host] = int(runner.addresses[-1][1])
        yield Server(state, ports)
    finally:
        state.release.set()
        await runner.cleanup()


def settings(**overrides: Any) -> FetchSettings:
    # generous defaults: a loaded CI machine must not turn a refusal or a success into a timeout;
    # the timeout tests pass their own small values
    values: dict[str, Any] = {
        "connect_timeout_s": 5.0,
        "total_timeout_s": 10.0,
        "max_bytes": 2**20,
        "max_redirects": 3,
        "retries": 0,
        "per_host_concurrency": 4,
        "allow_networks": LOOPBACK,
    }
    values.update(overrides)
    return FetchSettings(**values)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


async def fetch_path(path: str, **overrides: Any) -> tuple[FetchResult, ServerState]:
    async with serving() as server, HttpImageSource(settings(**overrides), retry_policy=FAST_RETRIES) as fetcher:
        result = await fetcher.fetch(server.url(path))
    return result, server.state


def fetch_sync(path: str, **overrides: Any) -> tuple[FetchResult, ServerState]:
    return asyncio.run(asyncio.wait_for(fetch_path(path, **overrides), 20))


class FakeResolver:
    """A name service: fixed answers per host name, recording each lookup."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.answers:
            raise OSError(f"unknown host {host}")
        return self.answers[host]


class Recorder:
    def __init__(self) -> None:
        self.results: list[FetchResult] = []

    def fetched(self, result: FetchResult) -> None:
        self.results.append(result)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- bombs ----------------------------------------------------------------------------------------


@functools.cache
def gzip_bomb() -> bytes:
    """A gzip body that inflates to :data:`BOMB_GIB` GiB: copies of one member of a JPEG head and 64 MiB
    of zeros (RFC 1952 allows a file of several members, and decoders inflate them all)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip wrapper
    member = compressor.compress(JPEG[:32])
    zeros = bytes(MiB)
    for _ in range(64):
        member += compressor.compress(zeros)
    member += compressor.flush()
    return member * (BOMB_GIB * 16)


@functools.cache
def deflate_bomb() -> bytes:
    """A ``deflate`` (zlib, RFC 1950) body that inflates to :data:`BOMB_GIB` GiB: a JPEG head, then the
    same fully flushed 1 MiB block of zeros repeated, and the Adler-32 of it all in closed form."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 15)
    zeros = bytes(MiB)
    head = compressor.compress(JPEG[:32]) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()[:-4]  # the final empty block; its Adler-32 (of 32 + 1 MiB bytes) is replaced
    blocks = BOMB_GIB * 1024
    adler = zlib.adler32(JPEG[:32])  # n zero bytes leave Adler's sum a as it is and add n * a to b
    a, b = adler & 0xFFFF, adler >> 16
    checksum = ((b + blocks * MiB * a) % 65521) << 16 | a
    return head + block * blocks + end + checksum.to_bytes(4, "big")


# -- raw TCP servers ------------------------------------------------------------------------------

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Event], Awaitable[None]]


@asynccontextmanager
async def raw_serving(handler: RawHandler) -> AsyncIterator[int]:
    """Run a plain TCP server on 127.0.0.1 that answers every connection with ``handler``; yield its port.

    ``handler`` gets the connection and an event that is set at teardown (a handler that stalls waits
    for it); the connection is closed when the handler returns.
    """
    release = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
        try:
            await handler(reader, writer, release)
            with suppress(ConnectionError):
                await writer.drain()
        except ConnectionError:
            pass  # the client left first: what a guarded client does
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        release.set()
        server.close()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Read one request head (what a raw server answers once it has it)."""
    with suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return await reader.readuntil(b"\r\n\r\n")
    return b""
