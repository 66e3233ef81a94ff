"""The image fetcher against a real local aiohttp server: limits, retries, sniffing and the SSRF guard.

Nothing is mocked at the HTTP level. The test server listens on 127.0.0.1 (and 127.0.0.2 for the
cross-host cases), which the positive tests allow with ``allow_networks``; the guard tests use the
same server as a canary and assert that it saw no request.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from streams.config import FetchSettings
from streams.fetch import (
    FetchOutcome,
    FetchResult,
    ImageFetcher,
    RetryPolicy,
    check_address,
    sniff_image_format,
)

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(range(256)) * 8
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
HTML = b"<html><body>Sorry, this product is no longer available.</body></html>" * 4
LOOPBACK = ("127.0.0.0/8",)
FAST_RETRIES = RetryPolicy(base_s=0.01, cap_s=0.02, retry_after_cap_s=0.3)


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

    app = web.Application()
    app.router.add_get("/image.jpg", image)
    app.router.add_get("/png-as-text", png_as_text)
    app.router.add_get("/html-as-jpeg", html_as_jpeg)
    app.router.add_get("/empty", empty)
    app.router.add_get("/big", big)
    app.router.add_get("/endless", endless)
    app.router.add_get("/redirect/{n}", redirect)
    app.router.add_get("/redirect-to", redirect_to)
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
    async with serving() as server, ImageFetcher(settings(**overrides), retry_policy=FAST_RETRIES) as fetcher:
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


# -- fetching and sniffing ------------------------------------------------------------------------


def test_ok_fetch_returns_bytes_hash_and_format() -> None:
    result, state = fetch_sync("/image.jpg")
    assert result.outcome is FetchOutcome.OK and result.ok
    assert result.data == JPEG
    assert result.content_hash == hashlib.sha256(JPEG).hexdigest()
    assert result.image_format == "JPEG"
    assert (result.status, result.attempts, result.reason) == (200, 1, None)
    assert result.seconds > 0
    assert state.headers[0]["Accept-Encoding"] == "identity"
    assert "data=" not in repr(result)  # the bytes stay out of logs


def test_format_comes_from_the_bytes_not_the_content_type() -> None:
    result, _ = fetch_sync("/png-as-text")
    assert result.outcome is FetchOutcome.OK and result.image_format == "PNG"


def test_html_served_as_jpeg_is_not_an_image() -> None:
    result, _ = fetch_sync("/html-as-jpeg")
    assert result.outcome is FetchOutcome.NOT_AN_IMAGE
    assert result.reason is not None and result.reason.startswith("not an image (starts with b'<html")
    assert result.data is None and result.content_hash is None and result.status == 200


def test_empty_body_is_not_an_image() -> None:
    result, _ = fetch_sync("/empty")
    assert (result.outcome, result.reason) == (FetchOutcome.NOT_AN_IMAGE, "not an image (empty body)")


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (JPEG[:32], "JPEG"),
        (PNG[:32], "PNG"),
        (b"GIF89a\x01\x00\x01\x00", "GIF"),
        (b"GIF87a\x01\x00\x01\x00", "GIF"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"BM\x36\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00", "BMP"),
        (b"II*\x00\x08\x00\x00\x00", "TIFF"),
        (b"MM\x00*\x00\x00\x00\x08", "TIFF"),
        (b"BMW owners manual, page 1 of 300", None),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (b"%PDF-1.7", None),
        (b"", None),
    ],
)
def test_sniff_image_format(head: bytes, expected: str | None) -> None:
    assert sniff_image_format(head) == expected


# -- byte cap -------------------------------------------------------------------------------------


def test_content_length_over_the_cap_is_refused_before_reading() -> None:
    result, _ = fetch_sync("/big")
    assert result.outcome is FetchOutcome.TOO_LARGE
    assert result.reason == f"Content-Length {len(JPEG) + 2 * 2**20} exceeds {2**20} bytes"


def test_cap_is_enforced_while_streaming_without_content_length() -> None:
    started = time.perf_counter()
    result, state = fetch_sync("/endless", total_timeout_s=10.0)
    assert result.outcome is FetchOutcome.TOO_LARGE
    assert result.reason == f"exceeded {2**20} bytes"
    assert time.perf_counter() - started < 5  # it stopped reading; the body alone would never end
    assert 0 < state.hits["endless-bytes-sent"] < 32 * 2**20  # the server noticed the client leave


# -- redirects ------------------------------------------------------------------------------------


def test_redirect_chain_within_the_limit_is_followed() -> None:
    result, state = fetch_sync("/redirect/3", max_redirects=3)
    assert result.outcome is FetchOutcome.OK and result.data == JPEG
    assert [state.hits[f"/redirect/{n}"] for n in (3, 2, 1, 0)] == [1, 1, 1, 1]


def test_redirect_chain_over_the_limit_is_blocked() -> None:
    result, state = fetch_sync("/redirect/4", max_redirects=3)
    assert result.outcome is FetchOutcome.BLOCKED_URL
    assert (result.reason, result.status) == ("more than 3 redirects", 302)
    assert state.hits["/redirect/0"] == 0


def test_no_redirects_allowed() -> None:
    result, _ = fetch_sync("/redirect/1", max_redirects=0)
    assert (result.outcome, result.reason) == (FetchOutcome.BLOCKED_URL, "more than 0 redirects")


def test_redirect_without_location_fails() -> None:
    result, _ = fetch_sync("/no-location")
    assert (result.outcome, result.reason, result.status) == (
        FetchOutcome.FETCH_FAILED,
        "HTTP 302 without Location",
        302,
    )


def test_redirect_hop_to_a_refused_address_is_blocked_before_connecting() -> None:
    """Only 127.0.0.2 is allowed; its redirect to 127.0.0.1 (the same server) must not be followed."""

    async def scenario() -> None:
        async with serving("127.0.0.1", "127.0.0.2") as server:
            target = server.url("/image.jpg", "127.0.0.1")
            start = server.url(f"/redirect-to?url={target}", "127.0.0.2")
            config = settings(allow_networks=("127.0.0.2/32",))
            async with ImageFetcher(config) as fetcher:
                result = await fetcher.fetch(start)
                direct = await fetcher.fetch(target)
        assert result.outcome is FetchOutcome.BLOCKED_URL
        assert (result.reason, result.status) == ("refused 127.0.0.1: loopback address", 302)
        assert direct.outcome is FetchOutcome.BLOCKED_URL
        assert server.state.hits["/image.jpg"] == 0 and server.state.hits["/redirect-to"] == 1

    run(scenario)


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "refused 169.254.169.254: cloud metadata address"),
        ("http://10.0.0.5/img.jpg", "refused 10.0.0.5: private address"),
        ("file:///etc/passwd", "scheme 'file' not allowed"),
        ("http://user:secret@127.0.0.1/image.jpg", "credentials in URL"),
        ("http://2130706433/image.jpg", "refused 2130706433: non-canonical form of 127.0.0.1"),
        ("http://internal.corp.test/image.jpg", "refused 10.1.2.3: private address (resolved from internal.corp.test)"),
    ],
)
def test_every_redirect_hop_is_checked(location: str, reason: str) -> None:
    async def scenario() -> None:
        resolver = FakeResolver({"internal.corp.test": ["10.1.2.3"]})
        async with serving() as server, ImageFetcher(settings(), resolver=resolver) as fetcher:
            result = await fetcher.fetch(server.url(f"/redirect-to?url={location}"))
        assert (result.outcome, result.reason, result.status) == (FetchOutcome.BLOCKED_URL, reason, 302)
        assert server.state.hits["/image.jpg"] == 0

    run(scenario)


# -- retries --------------------------------------------------------------------------------------


def test_503_twice_then_200_is_retried_to_success() -> None:
    result, state = fetch_sync("/flaky/a/2/503", retries=2)
    assert (result.outcome, result.attempts, result.status) == (FetchOutcome.OK, 3, 200)
    assert state.hits["/flaky/a/2/503"] == 3


def test_retries_run_out() -> None:
    result, state = fetch_sync("/flaky/b/5/502", retries=2)
    assert (result.outcome, result.reason, result.status, result.attempts) == (
        FetchOutcome.FETCH_FAILED,
        "HTTP 502",
        502,
        3,
    )
    assert state.hits["/flaky/b/5/502"] == 3


@pytest.mark.parametrize("code", [429, 500, 504])
def test_other_transient_statuses_are_retried(code: int) -> None:
    result, _ = fetch_sync(f"/flaky/c/1/{code}", retries=1)
    assert (result.outcome, result.attempts) == (FetchOutcome.OK, 2)


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410, 451, 501])
def test_permanent_statuses_are_not_retried(code: int) -> None:
    result, state = fetch_sync(f"/status/{code}", retries=3)
    assert (result.outcome, result.reason, result.status, result.attempts) == (
        FetchOutcome.FETCH_FAILED,
        f"HTTP {code}",
        code,
        1,
    )
    assert state.hits[f"/status/{code}"] == 1


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    # Retry-After: 30 is cut to the policy's cap of 0.3 s; the jittered backoff alone is under 0.02 s.
    started = time.perf_counter()
    result, _ = fetch_sync("/flaky/d/1/429?retry_after=30", retries=1)
    elapsed = time.perf_counter() - started
    assert (result.outcome, result.attempts) == (FetchOutcome.OK, 2)
    assert 0.3 <= elapsed < 3


def test_blocked_too_large_and_not_an_image_are_not_retried() -> None:
    for path, outcome in [
        ("/big", FetchOutcome.TOO_LARGE),
        ("/html-as-jpeg", FetchOutcome.NOT_AN_IMAGE),
        ("/redirect/5", FetchOutcome.BLOCKED_URL),
    ]:
        result, _ = fetch_sync(path, retries=3)
        assert (result.outcome, result.attempts) == (outcome, 1), path


# -- timeouts and connection failures -------------------------------------------------------------


def test_slow_response_times_out() -> None:
    started = time.perf_counter()
    result, _ = fetch_sync("/slow-headers", total_timeout_s=0.3)
    assert (result.outcome, result.reason, result.attempts) == (FetchOutcome.TIMEOUT, "timed out after 0.3s", 1)
    assert time.perf_counter() - started < 2


def test_total_timeout_covers_a_stalled_body_and_is_retried() -> None:
    result, state = fetch_sync("/slow-body", total_timeout_s=0.3, retries=1)
    assert (result.outcome, result.reason, result.attempts) == (FetchOutcome.TIMEOUT, "timed out after 0.3s", 2)
    assert state.hits["/slow-body"] == 2


def test_connect_timeout() -> None:
    """A listening socket whose accept queue is full drops new SYNs, so connecting hangs."""

    async def scenario() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            fillers = [socket.socket() for _ in range(3)]
            try:
                for filler in fillers:
                    filler.setblocking(False)
                    with suppress(BlockingIOError):
                        filler.connect(("127.0.0.1", port))
                config = settings(connect_timeout_s=0.2, total_timeout_s=5.0)
                async with ImageFetcher(config) as fetcher:
                    result = await fetcher.fetch(f"http://127.0.0.1:{port}/image.jpg")
            finally:
                for filler in fillers:
                    filler.close()
        assert (result.outcome, result.reason) == (FetchOutcome.TIMEOUT, "connect timeout after 0.2s")
        assert result.seconds < 2

    run(scenario)


def test_connection_refused_is_retried_then_fails() -> None:
    async def scenario() -> None:
        port = free_port()
        async with ImageFetcher(settings(retries=1), retry_policy=FAST_RETRIES) as fetcher:
            result = await fetcher.fetch(f"http://127.0.0.1:{port}/image.jpg")
        assert (result.outcome, result.attempts, result.status) == (FetchOutcome.FETCH_FAILED, 2, None)
        assert result.reason == f"cannot connect to 127.0.0.1:{port}: connection refused"

    run(scenario)


def test_unknown_host_fails_without_retrying() -> None:
    async def scenario() -> None:
        async with ImageFetcher(settings(retries=2), resolver=FakeResolver({})) as fetcher:
            result = await fetcher.fetch("http://nowhere.test/image.jpg")
        assert result.outcome is FetchOutcome.FETCH_FAILED
        assert result.reason is not None and result.reason.startswith("DNS lookup failed for nowhere.test")

    run(scenario)


# -- URL rules and the SSRF guard -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "outcome", "reason"),
    [
        ("file:///etc/passwd", FetchOutcome.BLOCKED_URL, "scheme 'file' not allowed"),
        ("ftp://127.0.0.1/image.jpg", FetchOutcome.BLOCKED_URL, "scheme 'ftp' not allowed"),
        ("gopher://127.0.0.1:70/_GET", FetchOutcome.BLOCKED_URL, "scheme 'gopher' not allowed"),
        ("data:image/png;base64,iVBORw0KGgo=", FetchOutcome.BLOCKED_URL, "scheme 'data' not allowed"),
        ("http://user:pw@127.0.0.1/image.jpg", FetchOutcome.BLOCKED_URL, "credentials in URL"),
        ("http://user@127.0.0.1/image.jpg", FetchOutcome.BLOCKED_URL, "credentials in URL"),
        ("/image.jpg", FetchOutcome.FETCH_FAILED, "invalid URL: no scheme"),
        ("http:///image.jpg", FetchOutcome.FETCH_FAILED, "invalid URL: no host"),
        ("http://127.0.0.1:99999/", FetchOutcome.FETCH_FAILED, "invalid URL: Port out of range 0-65535"),
    ],
)
def test_url_rules(url: str, outcome: FetchOutcome, reason: str) -> None:
    async def scenario() -> None:
        async with ImageFetcher(settings()) as fetcher:
            result = await fetcher.fetch(url)
        assert (result.outcome, result.reason, result.attempts) == (outcome, reason, 1)

    run(scenario)


def test_guard_refuses_every_form_of_a_local_address_without_connecting() -> None:
    """With the default (empty) allow-list, none of these reach the canary server on 127.0.0.1."""

    async def scenario() -> None:
        async with serving() as server:
            port = server.ports["127.0.0.1"]
            cases = {
                f"http://127.0.0.1:{port}/image.jpg": "refused 127.0.0.1: loopback address",
                f"http://[::1]:{port}/image.jpg": "refused ::1: loopback address",
                f"http://[::ffff:127.0.0.1]:{port}/image.jpg": (
                    "refused ::ffff:7f00:1: IPv4-mapped 127.0.0.1 is a loopback address"
                ),
                f"http://2130706433:{port}/image.jpg": "refused 127.0.0.1 (written 2130706433): loopback address",
                f"http://0x7f000001:{port}/image.jpg": "refused 127.0.0.1 (written 0x7f000001): loopback address",
                f"http://017700000001:{port}/image.jpg": "refused 127.0.0.1 (written 017700000001): loopback address",
                f"http://127.1:{port}/image.jpg": "refused 127.0.0.1 (written 127.1): loopback address",
                f"http://0177.0.0.1:{port}/image.jpg": "refused 127.0.0.1 (written 0177.0.0.1): loopback address",
                f"http://0:{port}/image.jpg": "refused 0.0.0.0 (written 0): unspecified address",
                f"http://localhost:{port}/image.jpg": "refused 127.0.0.1: loopback address (resolved from localhost)",
                "http://169.254.169.254/latest/meta-data/": "refused 169.254.169.254: cloud metadata address",
                "http://10.0.0.5/img.jpg": "refused 10.0.0.5: private address",
                "http://192.168.1.20/img.jpg": "refused 192.168.1.20: private address",
                "http://100.64.0.1/img.jpg": "refused 100.64.0.1: shared (CGNAT) address",
                "http://[fd00:ec2::254]/latest/meta-data/": "refused fd00:ec2::254: cloud metadata address",
                "http://999.1.1.1/img.jpg": "refused '999.1.1.1': malformed numeric host",
            }
            resolver = FakeResolver({"localhost": ["127.0.0.1", "::1"]})
            async with ImageFetcher(settings(allow_networks=()), resolver=resolver) as fetcher:
                results = {url: await fetcher.fetch(url) for url in cases}
        for url, reason in cases.items():
            assert (results[url].outcome, results[url].reason) == (FetchOutcome.BLOCKED_URL, reason), url
        assert server.state.total_hits == 0

    run(scenario)


def test_allow_networks_lets_loopback_through_but_not_numeric_tricks() -> None:
    async def scenario() -> None:
        async with serving() as server, ImageFetcher(settings(allow_networks=LOOPBACK)) as fetcher:
            port = server.ports["127.0.0.1"]
            plain = await fetcher.fetch(f"http://127.0.0.1:{port}/image.jpg")
            mapped = await fetcher.fetch(f"http://2130706433:{port}/image.jpg")
            private = await fetcher.fetch("http://10.0.0.5/img.jpg")
        assert plain.outcome is FetchOutcome.OK
        assert (mapped.outcome, mapped.reason) == (
            FetchOutcome.BLOCKED_URL,
            "refused 2130706433: non-canonical form of 127.0.0.1",
        )
        assert (private.outcome, private.reason) == (FetchOutcome.BLOCKED_URL, "refused 10.0.0.5: private address")
        assert server.state.hits["/image.jpg"] == 1

    run(scenario)


def test_names_connect_to_the_checked_address_only() -> None:
    """The connection goes to the address the guard judged: 'images.test' exists only in FakeResolver."""

    async def scenario() -> None:
        resolver = FakeResolver({"images.test": ["127.0.0.2"]})
        async with serving("127.0.0.2") as server:
            url = f"http://images.test:{server.ports['127.0.0.2']}/image.jpg"
            async with ImageFetcher(settings(), resolver=resolver) as fetcher:
                allowed = await fetcher.fetch(url)
            async with ImageFetcher(settings(allow_networks=()), resolver=resolver) as fetcher:
                refused = await fetcher.fetch(url)
        assert allowed.outcome is FetchOutcome.OK and allowed.data == JPEG
        assert (refused.outcome, refused.reason) == (
            FetchOutcome.BLOCKED_URL,
            "refused 127.0.0.2: loopback address (resolved from images.test)",
        )
        assert server.state.hits["/image.jpg"] == 1
        assert server.state.headers[0]["Host"].startswith("images.test")
        assert resolver.lookups == ["images.test", "images.test"]

    run(scenario)


def test_one_refused_address_refuses_the_whole_host() -> None:
    async def scenario() -> None:
        resolver = FakeResolver({"rebind.test": ["93.184.216.34", "169.254.169.254"]})
        async with ImageFetcher(settings(allow_networks=()), resolver=resolver) as fetcher:
            result = await fetcher.fetch("http://rebind.test/image.jpg")
        assert (result.outcome, result.reason) == (
            FetchOutcome.BLOCKED_URL,
            "refused 169.254.169.254: cloud metadata address (resolved from rebind.test)",
        )

    run(scenario)


REFUSED = [
    ("127.0.0.1", "loopback address"),
    ("127.255.255.254", "loopback address"),
    ("10.0.0.5", "private address"),
    ("172.16.3.4", "private address"),
    ("172.31.255.255", "private address"),
    ("192.168.1.1", "private address"),
    ("169.254.169.254", "cloud metadata address"),
    ("169.254.10.1", "link-local address"),
    ("100.64.0.1", "shared (CGNAT) address"),
    ("100.127.255.254", "shared (CGNAT) address"),
    ("0.0.0.0", "unspecified address"),  # noqa: S104 - an address to judge, not one to bind
    ("0.1.2.3", "'this network' address"),
    ("224.0.0.251", "multicast address"),
    ("255.255.255.255", "broadcast address"),
    ("240.0.0.1", "reserved address"),
    ("192.0.0.8", "IETF protocol address"),
    ("192.0.2.1", "documentation address"),
    ("198.51.100.7", "documentation address"),
    ("203.0.113.9", "documentation address"),
    ("198.18.0.1", "benchmarking address"),
    ("::", "unspecified address"),
    ("::1", "loopback address"),
    ("fe80::1", "link-local address"),
    ("fe80::1%eth0", "link-local address"),
    ("fc00::1", "unique-local address"),
    ("fd12:3456:789a::1", "unique-local address"),
    ("fd00:ec2::254", "cloud metadata address"),
    ("fec0::1", "site-local address"),
    ("ff02::1", "multicast address"),
    ("2001:db8::1", "documentation address"),
    ("100::1", "discard-only address"),
    ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1 is a loopback address"),
    ("::ffff:169.254.169.254", "IPv4-mapped 169.254.169.254 is a cloud metadata address"),
    ("::ffff:10.0.0.1", "IPv4-mapped 10.0.0.1 is a private address"),
    ("::127.0.0.1", "reserved address"),
    ("64:ff9b::a00:1", "NAT64 10.0.0.1 is a private address"),
    ("2002:c0a8:101::1", "6to4 192.168.1.1 is a private address"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo client 192.0.2.45 is a documentation address"),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "Teredo tunnel address"),  # to 8.8.8.8: still a tunnel
]


@pytest.mark.parametrize(("ip", "why"), REFUSED)
def test_check_address_refuses_non_global_addresses(ip: str, why: str) -> None:
    reason = check_address(ip, ())
    assert reason is not None and reason.endswith(f": {why}"), reason
    assert reason.startswith("refused ")


def test_check_address_reason_format() -> None:
    assert check_address("10.0.0.5", ()) == "refused 10.0.0.5: private address"
    assert check_address("not-an-ip", ()) == "refused 'not-an-ip': not an IP address"
    assert check_address(" 8.8.8.8", ()) == "refused ' 8.8.8.8': not an IP address"


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]
)
def test_check_address_accepts_global_addresses(ip: str) -> None:
    assert check_address(ip, ()) is None


def test_check_address_allow_list() -> None:
    from ipaddress import ip_network

    loopback = [ip_network("127.0.0.0/8")]
    assert check_address("127.0.0.1", loopback) is None
    assert check_address("::ffff:127.0.0.1", loopback) is None  # judged by the embedded IPv4 address
    assert check_address("10.0.0.1", loopback) == "refused 10.0.0.1: private address"
    assert check_address("::1", loopback) == "refused ::1: loopback address"
    assert check_address("::1", [ip_network("::1/128")]) is None
    assert check_address("10.9.8.7", [ip_network("10.9.0.0/16")]) is None


def test_settings_from_strings_feed_the_guard() -> None:
    from ipaddress import ip_network

    config = FetchSettings(allow_networks=("127.0.0.0/8", "fd00::/8"))
    assert config.allow_networks == (ip_network("127.0.0.0/8"), ip_network("fd00::/8"))
    assert check_address("fd00::5", config.allow_networks) is None


# -- concurrency, observer, lifecycle -------------------------------------------------------------


def test_per_host_concurrency_limit() -> None:
    async def scenario() -> None:
        async with serving("127.0.0.1", "127.0.0.2") as server:
            urls = [server.url("/counted", host) for host in ("127.0.0.1", "127.0.0.2") for _ in range(5)]
            async with ImageFetcher(settings(per_host_concurrency=2)) as fetcher:
                results = await asyncio.gather(*(fetcher.fetch(url) for url in urls))
        assert all(result.ok for result in results)
        assert server.state.max_active == Counter({"127.0.0.1": 2, "127.0.0.2": 2})
        assert server.state.hits["/counted"] == 10

    run(scenario)


def test_observer_sees_every_result_and_its_failures_do_not_escape() -> None:
    class Broken:
        def fetched(self, result: FetchResult) -> None:
            raise RuntimeError("metrics backend down")

    async def scenario() -> None:
        recorder = Recorder()
        async with serving() as server:
            async with ImageFetcher(settings(), observer=recorder) as fetcher:
                await fetcher.fetch(server.url("/image.jpg"))
                await fetcher.fetch(server.url("/status/404"))
            async with ImageFetcher(settings(), observer=Broken()) as fetcher:
                result = await fetcher.fetch(server.url("/image.jpg"))
        assert [r.outcome for r in recorder.results] == [FetchOutcome.OK, FetchOutcome.FETCH_FAILED]
        assert result.ok

    run(scenario)


def test_fetch_before_start_is_a_programming_error() -> None:
    async def scenario() -> None:
        fetcher = ImageFetcher(settings())
        with pytest.raises(RuntimeError, match="not started"):
            await fetcher.fetch("http://127.0.0.1/")
        await fetcher.start()
        await fetcher.start()  # idempotent
        await fetcher.close()
        await fetcher.close()

    run(scenario)


def test_outcome_values_are_avro_symbols() -> None:
    import json
    from pathlib import Path

    schema = json.loads((Path(__file__).parents[2] / "schemas" / "attribute_event.avsc").read_text())
    symbols: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") == "ImageOutcome":
                symbols.update(node["symbols"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert {outcome.value for outcome in FetchOutcome if outcome is not FetchOutcome.OK} <= symbols
