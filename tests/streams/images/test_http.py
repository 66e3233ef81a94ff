"""The HTTP image source against a real local aiohttp server: fetching, limits, redirects, retries.

The hostile-host cases (garbage answers, lying headers, bombs, stalls) are in test_http_hostile.py;
the URL and address rules in test_policy.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections import Counter
from contextlib import suppress

import pytest

from streams.images import FetchOutcome, FetchResult, ImageFetcher
from tests.streams.images.harness import (
    FAST_RETRIES,
    JPEG,
    FakeResolver,
    Recorder,
    fetch_sync,
    free_port,
    run,
    serving,
    settings,
)

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


@pytest.mark.parametrize(("path", "image_format"), [("/png-as-text", "PNG"), ("/jpeg-as-html", "JPEG")])
def test_format_comes_from_the_bytes_not_the_content_type(path: str, image_format: str) -> None:
    result, _ = fetch_sync(path)
    assert result.outcome is FetchOutcome.OK and result.image_format == image_format


def test_html_served_as_jpeg_is_not_an_image() -> None:
    result, _ = fetch_sync("/html-as-jpeg")
    assert result.outcome is FetchOutcome.NOT_AN_IMAGE
    assert result.reason is not None and result.reason.startswith("not an image (starts with b'<html")
    assert result.data is None and result.content_hash is None and result.status == 200


def test_empty_body_is_not_an_image() -> None:
    result, _ = fetch_sync("/empty")
    assert (result.outcome, result.reason) == (FetchOutcome.NOT_AN_IMAGE, "not an image (empty body)")


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


def test_redirect_chain_over_the_limit_fails() -> None:
    """A long chain is a misbehaving host, not an SSRF attempt: FETCH_FAILED, not BLOCKED_URL."""
    result, state = fetch_sync("/redirect/4", max_redirects=3)
    assert result.outcome is FetchOutcome.FETCH_FAILED
    assert (result.reason, result.status) == ("too many redirects (more than 3)", 302)
    assert state.hits["/redirect/0"] == 0


def test_no_redirects_allowed() -> None:
    result, _ = fetch_sync("/redirect/1", max_redirects=0)
    assert (result.outcome, result.reason) == (FetchOutcome.FETCH_FAILED, "too many redirects (more than 0)")


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
        ("http://[::1]/image.jpg", "refused ::1: loopback address"),
        (
            "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
            "refused ::ffff:a9fe:a9fe: IPv4-mapped 169.254.169.254 is a cloud metadata address",
        ),
        ("http://[fd00:ec2::254]/latest/meta-data/", "refused fd00:ec2::254: cloud metadata address"),
        (
            "http://[64:ff9b::a9fe:a9fe]/",
            "refused 64:ff9b::a9fe:a9fe: NAT64 169.254.169.254 is a cloud metadata address",
        ),
        ("http://100.64.0.1/img.jpg", "refused 100.64.0.1: shared (CGNAT) address"),
        ("http://0x7f000001/image.jpg", "refused 0x7f000001: non-canonical form of 127.0.0.1"),
        (
            "http://0251.0376.0251.0376/latest/meta-data/",
            "refused 169.254.169.254 (written 0251.0376.0251.0376): cloud metadata address",
        ),
        ("gopher://127.0.0.1:70/_GET", "scheme 'gopher' not allowed"),
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
        ("/redirect/5", FetchOutcome.FETCH_FAILED),
        ("/redirect-to?url=http://10.0.0.5/img.jpg", FetchOutcome.BLOCKED_URL),
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


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_connect_timeout(scheme: str) -> None:
    """A listening socket whose accept queue is full drops new SYNs, so connecting hangs (before any TLS)."""

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
                    result = await fetcher.fetch(f"{scheme}://127.0.0.1:{port}/image.jpg")
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


def test_waiting_for_a_host_slot_counts_against_the_deadline() -> None:
    # A burst on one hung host: more fetches than it has slots. Each must end by its own deadline,
    # not after the fetches ahead of it have each used theirs.
    async def scenario() -> None:
        async with serving() as server:
            async with ImageFetcher(settings(per_host_concurrency=2, total_timeout_s=0.5, retries=0)) as fetcher:
                started = time.monotonic()
                # distinct URLs: fetches of one URL share one request
                urls = [server.url(f"/slow-headers?n={i}") for i in range(6)]
                results = await asyncio.gather(*(fetcher.fetch(url) for url in urls))
                elapsed = time.monotonic() - started
            server.state.release.set()
        assert [r.outcome for r in results] == [FetchOutcome.TIMEOUT] * 6
        waited = [r for r in results if r.reason and "waiting for a download slot" in r.reason]
        assert len(waited) == 4, [r.reason for r in results]
        assert elapsed < 1.5, f"the burst took {elapsed:.2f}s; each fetch has 0.5s"

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
