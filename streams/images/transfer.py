"""The steps of one HTTP download: per-host slots, redirects, body reading and error classification.

Everything here works on one hop of :class:`~streams.images.http.HttpImageSource` and ends it with
an :class:`Attempt` (the end of the attempt) or a :class:`Redirect` (a hop to follow); the source
owns the loop over hops and attempts.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import aiohttp
from aiohttp import hdrs
from yarl import URL

from streams.config import FetchSettings
from streams.images.connector import BlockedAddressError
from streams.images.result import FetchOutcome
from streams.images.sniff import SNIFF_BYTES, sniff_image_format
from streams.images.urlcache import CacheHeaders

__all__ = [
    "Attempt",
    "HostLimiter",
    "Redirect",
    "classify_error",
    "read_body",
    "redirect_target",
    "retry_after_seconds",
]

logger = logging.getLogger(__name__)

_CHUNK_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Attempt:
    """The end of one attempt (all its hops).

    ``OK`` without ``data`` is a ``304`` to a conditional request; ``cache`` is what the headers of a
    ``200`` or ``304`` said about caching (only when the source has a URL cache).
    """

    outcome: FetchOutcome
    reason: str | None = None
    status: int | None = None
    data: bytes | None = None
    image_format: str | None = None
    transient: bool = False
    retry_after: float | None = None
    cache: CacheHeaders | None = None


@dataclass(frozen=True, slots=True)
class Redirect:
    """A 3xx answer: the absolute URL it points to, and its status."""

    target: URL
    status: int


@dataclass(slots=True)
class _HostSlot:
    semaphore: asyncio.Semaphore
    users: int = 0


class SlotTimeoutError(Exception):
    """Every download slot of a host stayed taken until the attempt's deadline."""

    def __init__(self, host: str, limit: int) -> None:
        super().__init__(f"{host} already has {limit} downloads in flight")
        self.host = host
        self.limit = limit


class HostLimiter:
    """A semaphore per host, dropped again when nobody holds or waits for it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._slots: dict[str, _HostSlot] = {}

    @asynccontextmanager
    async def slot(self, host: str, deadline: float | None = None) -> AsyncIterator[None]:
        """Hold one of ``host``'s slots for the block, waiting while all are taken (until ``deadline``).

        Raises :class:`SlotTimeoutError` when no slot came free before the loop-time ``deadline``.
        """
        entry = self._slots.get(host)
        if entry is None:
            entry = self._slots[host] = _HostSlot(asyncio.Semaphore(self._limit))
        entry.users += 1
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await entry.semaphore.acquire()
            except TimeoutError:
                raise SlotTimeoutError(host, self._limit) from None
            if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                # freed in the same instant the wait ran out (its holders' deadlines were ours): the
                # wait is what used the time, so say so rather than time out at once on the request
                entry.semaphore.release()
                raise SlotTimeoutError(host, self._limit)
            try:
                yield
            finally:
                entry.semaphore.release()
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._slots[host]


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), None if absent or bad."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def redirect_target(response: aiohttp.ClientResponse) -> Attempt | Redirect:
    """Where a 3xx response points, resolved against the URL that gave it."""
    status = response.status
    location = response.headers.get(hdrs.LOCATION)
    if not location:
        return Attempt(FetchOutcome.FETCH_FAILED, f"HTTP {status} without Location", status)
    try:
        target = response.url.join(URL(location))
    except (TypeError, ValueError):
        return Attempt(FetchOutcome.FETCH_FAILED, f"HTTP {status} with an invalid Location", status)
    return Redirect(target, status)


async def read_body(response: aiohttp.ClientResponse, cap: int) -> Attempt:
    """Stream a 2xx body, stopping at the byte cap or as soon as the first bytes are not an image."""
    status = response.status
    length = response.content_length
    if length is not None and length > cap:
        response.close()
        return Attempt(FetchOutcome.TOO_LARGE, f"Content-Length {length} exceeds {cap} bytes", status)
    body = bytearray()
    image_format: str | None = None
    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
        if len(body) + len(chunk) > cap:
            response.close()
            return Attempt(FetchOutcome.TOO_LARGE, f"exceeded {cap} bytes", status)
        body += chunk
        if image_format is None and len(body) >= SNIFF_BYTES:
            image_format = sniff_image_format(bytes(body[:SNIFF_BYTES]))
            if image_format is None:
                response.close()  # do not download the rest of something that is not an image
                return _not_an_image(body, status)
    if image_format is None:
        image_format = sniff_image_format(bytes(body))
    if image_format is None:
        return _not_an_image(body, status)
    return Attempt(FetchOutcome.OK, None, status, data=bytes(body), image_format=image_format)


def _not_an_image(body: bytearray, status: int) -> Attempt:
    if not body:
        return Attempt(FetchOutcome.NOT_AN_IMAGE, "not an image (empty body)", status)
    return Attempt(FetchOutcome.NOT_AN_IMAGE, f"not an image (starts with {bytes(body[:16])!r})", status)


def classify_error(exc: Exception, url: URL, settings: FetchSettings, *, tcp_connected: bool) -> Attempt:
    """Classify an exception raised by one hop: the outcome, a short reason, and whether to retry.

    ``tcp_connected`` says whether the hop's TCP connection was established: aiohttp reports a stalled
    TLS handshake with the same :class:`aiohttp.ConnectionTimeoutError` as a stalled TCP connect.
    """
    where = f"{url.host}:{url.port}"
    if isinstance(exc, TimeoutError):
        return Attempt(FetchOutcome.TIMEOUT, _timeout_reason(exc, url, settings, tcp_connected), transient=True)
    outcome, retry, status = FetchOutcome.FETCH_FAILED, False, None
    if isinstance(exc, aiohttp.ClientConnectorDNSError):  # before ClientConnectorError: it is one
        cause = exc.os_error
        if isinstance(cause, BlockedAddressError):
            outcome, reason = FetchOutcome.BLOCKED_URL, cause.reason
        else:
            retry = isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_AGAIN
            reason = f"DNS lookup failed for {url.host}: {cause.strerror or cause}"
    elif isinstance(exc, aiohttp.ClientSSLError):
        reason = f"TLS error with {where}: {exc}"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        retry, reason = True, f"cannot connect to {where}: {_error_text(exc.os_error)}"
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        retry, reason = True, f"connection to {where} lost: {exc}"
    elif isinstance(exc, aiohttp.ClientResponseError):
        reason, status = f"bad HTTP response from {where}: {exc.message}", exc.status or None
    elif isinstance(exc, aiohttp.ClientError):
        reason = f"{type(exc).__name__}: {exc}"
    else:
        logger.warning("unexpected error fetching %s", url, exc_info=exc)
        reason = f"unexpected {type(exc).__name__}: {exc}"
    return Attempt(outcome, reason, status, transient=retry)


def _timeout_reason(exc: TimeoutError, url: URL, settings: FetchSettings, tcp_connected: bool) -> str:
    if not isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"timed out after {settings.total_timeout_s}s"  # the attempt's deadline
    if tcp_connected and url.scheme == "https":
        return f"TLS handshake with {url.host}:{url.port} timed out after {settings.connect_timeout_s}s"
    return f"connect timeout after {settings.connect_timeout_s}s"


def _error_text(exc: OSError) -> str:
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__
