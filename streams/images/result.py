"""What fetching one image returns, and the small contracts every image source shares.

An image source never raises for bad input or hostile hosts: it returns a :class:`FetchResult`
whose ``outcome`` says how the fetch ended and whose ``reason`` says why, in a few words. The
reason often quotes the other side (an HTTP parser's complaint about a malformed status line, a
refused address), so :class:`FetchResult` clips it to :data:`streams.text.MAX_REASON_CHARS`
whoever builds it: an event cannot grow with what a host sends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Protocol, Self

from streams.text import MAX_REASON_CHARS, clip_optional

__all__ = [
    "FetchObserver",
    "FetchOutcome",
    "FetchResult",
    "NullObserver",
    "Resolver",
    "RetryPolicy",
    "StartClose",
    "UrlCacheOutcome",
    "report",
]

logger = logging.getLogger(__name__)


class FetchOutcome(StrEnum):
    """How a fetch ended.

    The failure values are symbols of the ``ImageOutcome`` Avro enum; ``OK`` is not one: the worker
    reports a fetched image as ``TAGGED`` or ``CACHE_HIT`` (or ``DECODE_FAILED``) once it knows more.
    ``BLOCKED_URL`` means the URL (or a redirect hop) was refused by policy, the signal operators watch
    for SSRF attempts; a host that merely misbehaves (redirect loops, malformed answers) is ``FETCH_FAILED``.
    """

    OK = "OK"
    FETCH_FAILED = "FETCH_FAILED"
    TIMEOUT = "TIMEOUT"
    TOO_LARGE = "TOO_LARGE"
    BLOCKED_URL = "BLOCKED_URL"
    NOT_AN_IMAGE = "NOT_AN_IMAGE"


class UrlCacheOutcome(StrEnum):
    """What a source's URL cache did for a successful fetch (``swatch_url_cache_total``'s label).

    ``FRESH``: the remembered hash was reused without a request. ``REVALIDATED``: a conditional
    request got ``304``. ``CHANGED``: a conditional request got a new ``200``. ``MISS``: nothing
    usable was remembered, the image was downloaded. ``SHARED``: the result of a fetch of the same
    URL already in flight. Without bytes (``FRESH``, ``REVALIDATED`` and a ``SHARED`` one of them),
    ``data`` is None and ``content_hash`` the image's hash as last downloaded.
    """

    FRESH = "fresh"
    REVALIDATED = "revalidated"
    CHANGED = "changed"
    MISS = "miss"
    SHARED = "shared"


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The outcome of one fetch, successful or not.

    Attributes:
        url: The URL asked for (before any redirect).
        outcome: How the fetch ended.
        data: The image bytes; only for ``OK``, and None there too when a URL cache vouched for the
            image without downloading it (see :attr:`url_cache`, :attr:`has_bytes`).
        content_hash: Hex SHA-256 of the image; only for ``OK``.
        reason: Short human-readable detail of a failure (HTTP status, refused address, ...), at most
            :data:`~streams.text.MAX_REASON_CHARS` characters (longer ones are clipped on creation).
        status: The last HTTP status seen, if any response arrived.
        attempts: Attempts made (1 + retries used).
        seconds: Wall-clock seconds spent, backoff included.
        image_format: The sniffed format for ``OK``, e.g. ``"JPEG"``.
        url_cache: What the source's URL cache did for an ``OK`` result; None when it was not
            consulted (no URL cache, or bytes were asked for).
    """

    url: str
    outcome: FetchOutcome
    data: bytes | None = field(repr=False)
    content_hash: str | None
    reason: str | None
    status: int | None
    attempts: int
    seconds: float
    image_format: str | None
    url_cache: UrlCacheOutcome | None = None

    def __post_init__(self) -> None:
        # the one place every reason passes, so no source can forget the bound
        object.__setattr__(self, "reason", clip_optional(self.reason, MAX_REASON_CHARS))

    @classmethod
    def failed(cls, url: str, outcome: FetchOutcome, reason: str, *, seconds: float = 0.0) -> FetchResult:
        """A failure decided before anything was downloaded (a refused URL): one attempt, no status."""
        return cls(url, outcome, None, None, reason, None, attempts=1, seconds=seconds, image_format=None)

    @property
    def ok(self) -> bool:
        """True when the image was fetched (or vouched for by a URL cache) and looks like an image."""
        return self.outcome is FetchOutcome.OK

    @property
    def has_bytes(self) -> bool:
        """True when the image was fetched and its bytes are here (not only its hash)."""
        return self.outcome is FetchOutcome.OK and self.data is not None


class FetchObserver(Protocol):
    """Told about every finished fetch (the worker counts outcomes and latencies here)."""

    def fetched(self, result: FetchResult) -> None:
        """Record one finished fetch; must be quick and must not block."""


class NullObserver:
    """The observer that ignores everything: the default when nobody listens."""

    def fetched(self, result: FetchResult) -> None:
        """Ignore ``result``."""


def report(observer: FetchObserver, result: FetchResult) -> None:
    """Tell ``observer`` about ``result``; its failures are logged, never passed on to the fetch."""
    try:
        observer.fetched(result)
    except Exception:
        logger.exception("fetch observer failed")


class Resolver(Protocol):
    """Turns a host name into the IP addresses to judge and connect to."""

    async def resolve(self, host: str, port: int) -> list[str]:
        """Return the IP addresses of ``host`` as strings; raise :class:`OSError` when it has none."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between attempts: full jitter over an exponential ceiling.

    The wait before retry ``n`` (0-based) is uniform in ``[0, min(cap_s, base_s * 2**n)]``; on 429
    and 503 it is at least the server's ``Retry-After``, cut to ``retry_after_cap_s``.
    """

    base_s: float = 0.25
    cap_s: float = 4.0
    retry_after_cap_s: float = 5.0


class StartClose:
    """``async with`` for a class that has ``start`` and ``close`` (the image sources and the router)."""

    async def start(self) -> None:
        """Acquire what the object needs; overridden."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release what :meth:`start` acquired; overridden."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
