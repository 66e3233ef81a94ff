"""The HTTP image source against hosts that misbehave on purpose, all served for real on 127.0.0.1.

Answers an aiohttp server can give come from the test app (harness.make_app); the ones no HTTP
server would send (garbage, a lying Content-Length, a TLS handshake left unanswered) from
harness.raw_serving. docs/hostile-inputs.md lists every case with its outcome and test.
"""

from __future__ import annotations

import asyncio
import io
import time
import tracemalloc
import zlib

import pytest
from PIL import Image

from streams.images import FetchOutcome, HttpImageSource
from streams.text import MAX_REASON_CHARS
from tests.streams.images.harness import (
    FAST_RETRIES,
    JPEG,
    POLYGLOT,
    TRUNCATED_JPEG,
    MiB,
    deflate_bomb,
    fetch_path,
    fetch_sync,
    gzip_bomb,
    raw_serving,
    read_request,
    run,
    serving,
    settings,
)

# -- answers that are not HTTP, or lie about themselves -------------------------------------------


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (bytes(range(128, 256)) * 1600 + b"\r\n\r\n", "Bad status line"),  # 200 kB of binary noise
        (b"HTTP/1.1 2" + b"0" * 200_000 + b" OK\r\n\r\n", "Bad status line"),  # a 200 kB status code
        (b"HTTP/1.1 200 OK\r\nX-Junk: " + b"A" * 200_000 + b"\r\n\r\n", "Got more than 8190 bytes"),
    ],
    ids=["noise", "endless-status", "endless-header"],
)
def test_garbage_answer_fails_with_a_short_reason(answer: bytes, complaint: str) -> None:
    """aiohttp's parser quotes the offending line in its message (128 kB of it): the reason is clipped."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: asyncio.Event) -> None:
        await read_request(reader)
        writer.write(answer)

    async def scenario() -> None:
        async with raw_serving(garbage) as port, HttpImageSource(settings()) as source:
            result = await source.fetch(f"http://127.0.0.1:{port}/image.jpg")
        assert result.outcome is FetchOutcome.FETCH_FAILED
        assert result.reason is not None and len(result.reason) <= MAX_REASON_CHARS
        assert result.reason.startswith(f"bad HTTP response from 127.0.0.1:{port}: {complaint}")

    run(scenario)


def test_content_length_larger_than_the_body_fails_and_is_retried() -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: asyncio.Event) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + JPEG)  # then the connection closes

    async def scenario() -> None:
        async with (
            raw_serving(short) as port,
            HttpImageSource(settings(retries=1), retry_policy=FAST_RETRIES) as source,
        ):
            result = await source.fetch(f"http://127.0.0.1:{port}/image.jpg")
        assert (result.outcome, result.attempts, result.data) == (FetchOutcome.FETCH_FAILED, 2, None)
        assert result.reason is not None
        assert result.reason.startswith(f"connection to 127.0.0.1:{port} lost: Response payload is not completed")

    run(scenario)


def test_content_length_smaller_than_the_body_fails() -> None:
    """The bytes after Content-Length arrive with the response and parse as a bad next response.

    (Were they to arrive later, the image would be the first Content-Length bytes and aiohttp would
    drop the connection when they came: nothing is read past the declared length either way.)
    """

    async def long(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: asyncio.Event) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + JPEG)

    async def scenario() -> None:
        async with raw_serving(long) as port, HttpImageSource(settings()) as source:
            result = await source.fetch(f"http://127.0.0.1:{port}/image.jpg")
        assert result.outcome is FetchOutcome.FETCH_FAILED
        assert result.reason is not None
        assert result.reason.startswith(f"bad HTTP response from 127.0.0.1:{port}: Bad status line")

    run(scenario)


def test_truncated_image_is_fetched_and_left_to_the_decoder() -> None:
    result, _ = fetch_sync("/truncated")
    assert (result.outcome, result.image_format, result.data) == (FetchOutcome.OK, "JPEG", TRUNCATED_JPEG)
    image = Image.open(io.BytesIO(TRUNCATED_JPEG))
    with pytest.raises(OSError, match="truncated"):
        image.load()  # the worker's decode step reports this one as DECODE_FAILED


def test_polyglot_that_starts_as_a_jpeg_is_accepted() -> None:
    """By design: only the magic number is sniffed, and the bytes are only ever decoded as an image."""
    result, _ = fetch_sync("/polyglot")
    assert (result.outcome, result.image_format, result.data) == (FetchOutcome.OK, "JPEG", POLYGLOT)


@pytest.mark.parametrize(
    ("encoding", "wbits", "magic"), [("gzip", 31, b"\x1f\x8b"), ("deflate", 15, b"x\xda")], ids=["gzip", "deflate"]
)
def test_compression_bomb_is_not_inflated(encoding: str, wbits: int, magic: bytes) -> None:
    """Content-Encoding sent despite Accept-Encoding: identity: the compressed bytes are not an image."""
    body = gzip_bomb() if encoding == "gzip" else deflate_bomb()
    assert len(body) < 3 * MiB and len(zlib.decompressobj(wbits).decompress(body[: 64 * 1024])) > 32 * MiB
    tracemalloc.start()
    try:
        started = time.perf_counter()
        result, state = asyncio.run(asyncio.wait_for(fetch_path(f"/bomb/{encoding}", max_bytes=8 * MiB), 20))
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (result.outcome, result.status) == (FetchOutcome.NOT_AN_IMAGE, 200)
    assert result.reason is not None and result.reason.startswith("not an image (starts with " + repr(magic)[:-1])
    assert state.hits[f"/bomb/{encoding}"] == 1
    assert elapsed < 5 and peak < 32 * MiB  # it inflates to 2 GiB


# -- redirects that go nowhere --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "hops", "visited"),
    [("/loop/self", 1, {"/loop/self": 1}), ("/loop/a", 2, {"/loop/a": 1, "/loop/b": 1})],
    ids=["self", "a-b-a"],
)
def test_redirect_loop_fails_as_a_loop(start: str, hops: int, visited: dict[str, int]) -> None:
    """A loop is a broken host, not an SSRF attempt: FETCH_FAILED, found before max_redirects runs out."""

    async def scenario() -> None:
        async with serving() as server, HttpImageSource(settings(max_redirects=10, retries=2)) as source:
            result = await source.fetch(server.url(start))
        assert (result.outcome, result.status, result.attempts) == (FetchOutcome.FETCH_FAILED, 302, 1)
        assert result.reason is not None
        assert result.reason.startswith(f"redirect loop: back to {server.url(start)}")
        assert result.reason.endswith(f"after {hops} redirects")
        assert {path: server.state.hits[path] for path in visited} == visited

    run(scenario)


# -- URLs too long to be real ---------------------------------------------------------------------


def test_over_long_url_is_refused_before_connecting() -> None:
    async def scenario() -> None:
        async with serving() as server, HttpImageSource(settings()) as source:
            base = server.url("/image.jpg?q=")
            longest = base + "a" * (2048 - len(base))
            too_long = longest + "a"
            at_limit = await source.fetch(longest)
            direct = await source.fetch(too_long)
            redirected = await source.fetch(server.url("/redirect-long/2049"))
        assert at_limit.outcome is FetchOutcome.OK
        assert (direct.outcome, direct.reason, direct.status) == (
            FetchOutcome.FETCH_FAILED,
            "URL longer than 2048 characters",
            None,
        )
        assert (redirected.outcome, redirected.reason, redirected.status) == (
            FetchOutcome.FETCH_FAILED,
            "URL longer than 2048 characters",
            302,
        )
        assert server.state.hits["/image.jpg"] == 1  # only the one at the limit

    run(scenario)


# -- a TLS handshake that never ends --------------------------------------------------------------


def test_stalled_tls_handshake_is_a_tls_timeout() -> None:
    """TCP connects, the ClientHello is never answered: aiohttp says "connection timeout", we say TLS."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, release: asyncio.Event) -> None:
        await release.wait()

    async def scenario() -> None:
        async with raw_serving(silent) as port, HttpImageSource(settings(connect_timeout_s=0.3)) as source:
            result = await source.fetch(f"https://127.0.0.1:{port}/image.jpg")
        assert (result.outcome, result.reason) == (
            FetchOutcome.TIMEOUT,
            f"TLS handshake with 127.0.0.1:{port} timed out after 0.3s",
        )
        assert result.seconds < 3

    run(scenario)
