"""The HTTP(S) image source: bounded, SSRF-safe downloads of listing images with aiohttp.

:class:`HttpImageSource` (also known by its old name, ``ImageFetcher``) downloads one image per
:meth:`~HttpImageSource.fetch` call and never raises for bad input or hostile hosts. What it enforces:

* **SSRF guard.** Every URL, and every redirect hop before it is connected to, passes
  :func:`~streams.images.policy.check_url`; names are resolved by the guarded resolver of
  :mod:`streams.images.connector`. Proxies from the environment are ignored (they would bypass it).
* **Limits.** A connect timeout (TCP and TLS handshake) and a total timeout per attempt (the total
  covers every hop of the attempt and the wait for a per-host slot); a byte cap
  enforced while streaming, and up front from ``Content-Length``; at most ``max_redirects`` hops,
  and no URL twice in one chain; at most ``per_host_concurrency`` downloads per host (an
  :class:`asyncio.Semaphore` per host) plus a total connection limit on the connector.
* **No decompression.** ``Accept-Encoding: identity`` is asked for and the session does not inflate
  a ``Content-Encoding`` a server sends anyway, so a gzip or deflate bomb stays a few compressed
  bytes that fail sniffing.
* **Sniffing.** The first bytes must be an image by magic number (:mod:`streams.images.sniff`);
  ``Content-Type`` is ignored. A body that does not start like an image is abandoned at once.
* **Retries.** Only transient failures are retried (connect errors, timeouts, lost connections,
  HTTP 429/500/502/503/504), with exponential backoff and full jitter; a ``Retry-After`` on 429
  and 503 is honoured up to a few seconds. A retry starts again from the original URL.
* **URL cache** (opt-in, ``url_cache=True``; :mod:`streams.images.urlcache`). A URL fetched before
  is answered with its remembered content hash and no bytes while fresh, and revalidated with a
  conditional GET (every check above applies to it) once stale: ``304`` confirms the hash, ``200``
  is a normal download. Concurrent fetches of one URL share one request. ``need_bytes=True``
  always downloads.

Usage, inside a running event loop::

    async with HttpImageSource(settings.fetch) as source:
        result = await source.fetch(url)
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

import aiohttp
from aiohttp import hdrs
from yarl import URL

from streams.config import FetchSettings
from streams.images.connector import SystemResolver, make_connector, watch_connects
from streams.images.policy import IPNetwork, URLRefusedError, check_url
from streams.images.result import (
    FetchObserver,
    FetchOutcome,
    FetchResult,
    NullObserver,
    Resolver,
    RetryPolicy,
    StartClose,
    UrlCacheOutcome,
    report,
)
from streams.images.transfer import (
    Attempt,
    HostLimiter,
    Redirect,
    SlotTimeoutError,
    classify_error,
    read_body,
    redirect_target,
    retry_after_seconds,
)
from streams.images.urlcache import NO_CACHE_HEADERS, UrlCache, UrlEntry, cache_headers
from streams.text import MAX_REASON_CHARS, clip, clip_optional

__all__ = ["DEFAULT_CONNECTION_LIMIT", "SCHEMES", "USER_AGENT", "HttpImageSource", "ImageFetcher"]

logger = logging.getLogger(__name__)

DEFAULT_CONNECTION_LIMIT: Final = 100
"""Connections the source's connector opens at most, over all hosts."""

USER_AGENT: Final = "swatch-image-fetcher/0.1"
SCHEMES: Final = frozenset({"http", "https"})
"""The schemes this source fetches (and the only ones a redirect may lead to)."""

_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
_NOT_MODIFIED: Final = 304


class HttpImageSource(StartClose):
    """Downloads listing images over HTTP(S) with the limits of :class:`~streams.config.FetchSettings`.

    Use it as an async context manager (or call :meth:`start` and :meth:`close`) inside a running
    event loop; :meth:`fetch` may then be called concurrently from many tasks.

    Args:
        settings: Timeouts, byte cap, redirect and retry limits, per-host concurrency, allowed networks.
        resolver: Name resolution for the SSRF guard; default :class:`~streams.images.SystemResolver`.
        observer: Told about every finished fetch; default: nobody.
        retry_policy: Backoff between attempts; default :class:`~streams.images.RetryPolicy` ().
        connection_limit: Connections open at most over all hosts.
        url_cache: ``True``: remember URLs with their hash and validators as ``settings`` say
            (``url_cache_entries``, ``url_cache_max_age_s``; 0 entries: off); or the
            :class:`~streams.images.UrlCache` to use. Off by default: callers that need the bytes
            of every image (the review service, exports) get them.
    """

    def __init__(
        self,
        settings: FetchSettings,
        *,
        resolver: Resolver | None = None,
        observer: FetchObserver | None = None,
        retry_policy: RetryPolicy | None = None,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
        url_cache: UrlCache | bool = False,
    ) -> None:
        self._settings = settings
        self._allow: tuple[IPNetwork, ...] = tuple(settings.allow_networks)
        self._resolver = resolver if resolver is not None else SystemResolver()
        self._observer = observer if observer is not None else NullObserver()
        self._retry = retry_policy if retry_policy is not None else RetryPolicy()
        self._connection_limit = connection_limit
        self._limiter = HostLimiter(settings.per_host_concurrency)
        self._random = random.SystemRandom()
        self._session: aiohttp.ClientSession | None = None
        self._cache = _url_cache(url_cache, settings)
        self._in_flight: dict[tuple[str, bool], _InFlight] = {}

    async def start(self) -> None:
        """Create the HTTP session; call from inside the event loop that will run the fetches."""
        if self._session is not None:
            return
        connector = make_connector(
            self._resolver,
            self._allow,
            limit=self._connection_limit,
            limit_per_host=self._settings.per_host_concurrency,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._settings.connect_timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # proxies from the environment would bypass the address check
            auto_decompress=False,  # a Content-Encoding sent despite "identity" must not inflate a bomb
            headers={hdrs.USER_AGENT: USER_AGENT, hdrs.ACCEPT: "image/*", hdrs.ACCEPT_ENCODING: "identity"},
        )

    async def close(self) -> None:
        """Close the session and its connections; the source can be started again afterwards."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def url_cache(self) -> UrlCache | None:
        """The URL cache (None: off)."""
        return self._cache

    async def fetch(self, url: str, *, need_bytes: bool = False) -> FetchResult:
        """Download one image, retrying transient failures; never raises for bad URLs or hosts.

        With a URL cache, a remembered URL may end ``OK`` with its content hash and no bytes: fresh
        (no request at all) or confirmed by a ``304``; see :class:`~streams.images.UrlCacheOutcome`.
        Concurrent fetches of one URL then share one request.

        Args:
            url: An ``http`` or ``https`` URL.
            need_bytes: Download the bytes whatever the URL cache remembers (the entry is still
                updated from the answer).

        Returns:
            The result; ``outcome`` is ``OK`` with the bytes (or only the hash, see above), or the
            failure with a ``reason``.

        Raises:
            RuntimeError: The source was not started.
        """
        session = self._session
        if session is None:
            raise RuntimeError("HttpImageSource is not started: use `async with HttpImageSource(...)` or await start()")
        cache = self._cache
        if cache is None:
            return await self._download(session, url, None, consulted=False)
        if not need_bytes:
            started = time.perf_counter()
            entry = cache.fresh(url)
            if entry is not None:  # not reported to the observer: nothing was fetched
                seconds = time.perf_counter() - started
                return _known(url, entry, UrlCacheOutcome.FRESH, status=None, attempts=0, seconds=seconds)
        return await self._shared(session, url, need_bytes)

    async def _shared(self, session: aiohttp.ClientSession, url: str, need_bytes: bool) -> FetchResult:
        """Join the fetch of ``url`` in flight (one that downloads bytes serves everyone), or start it."""
        key = (url, need_bytes)
        flight = self._in_flight.get(key) or (None if need_bytes else self._in_flight.get((url, True)))
        joined = flight is not None
        if flight is None:
            task = asyncio.get_running_loop().create_task(self._revalidate(session, url, need_bytes))
            flight = self._in_flight[key] = _InFlight(key, task)
            task.add_done_callback(functools.partial(self._landed, flight))
        flight.waiters += 1
        try:
            result = await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                self._landed(flight)  # nobody may join a fetch being cancelled
                flight.task.cancel()  # everyone who wanted it is gone
        if joined and result.ok and result.url_cache is not None:
            return replace(result, url_cache=UrlCacheOutcome.SHARED)
        return result

    def _landed(self, flight: _InFlight, _task: object = None) -> None:
        if self._in_flight.get(flight.key) is flight:
            del self._in_flight[flight.key]

    async def _revalidate(self, session: aiohttp.ClientSession, url: str, need_bytes: bool) -> FetchResult:
        cache = self._cache
        entry = cache.get(url) if cache is not None and not need_bytes else None
        return await self._download(session, url, entry, consulted=not need_bytes)

    async def _download(
        self, session: aiohttp.ClientSession, url: str, entry: UrlEntry | None, *, consulted: bool
    ) -> FetchResult:
        """Fetch ``url`` (conditionally when ``entry`` has validators), update the URL cache, report."""
        started = time.perf_counter()
        validators = entry.validators if entry is not None else {}
        end, attempts = await self._attempts(session, url, validators)
        seconds = time.perf_counter() - started
        cache = self._cache
        outcome: UrlCacheOutcome | None
        if end.outcome is FetchOutcome.OK and end.data is None and entry is not None:  # 304
            if cache is not None:
                cache.revalidated(url, entry, end.cache or NO_CACHE_HEADERS)
            outcome = UrlCacheOutcome.REVALIDATED
            result = _known(url, entry, outcome, status=end.status, attempts=attempts, seconds=seconds)
        else:
            data = end.data if end.outcome is FetchOutcome.OK else None
            content_hash = hashlib.sha256(data).hexdigest() if data is not None else None
            outcome = None
            if cache is not None:
                if content_hash is not None and end.image_format and end.status == 200 and end.cache is not None:
                    cache.store(url, content_hash, end.image_format, end.cache)
                else:
                    cache.discard(url)  # failed, or not a plain 200: what was known may be wrong now
                if data is not None and consulted:
                    outcome = UrlCacheOutcome.CHANGED if validators else UrlCacheOutcome.MISS
            result = FetchResult(
                url=url,
                outcome=end.outcome,
                data=data,
                content_hash=content_hash,
                reason=end.reason,
                status=end.status,
                attempts=attempts,
                seconds=seconds,
                image_format=end.image_format if data is not None else None,
                url_cache=outcome,
            )
        if not result.ok:
            logger.debug("fetch %s: %s (%s)", url, result.outcome, result.reason)
        report(self._observer, result)
        return result

    async def _attempts(
        self, session: aiohttp.ClientSession, url: str, validators: Mapping[str, str]
    ) -> tuple[Attempt, int]:
        """Attempts until one is not transient or the retries are used up: the last one, and their count."""
        attempts = 0
        while True:
            attempts += 1
            try:
                end = await self._attempt(session, url, validators)
            except Exception as exc:  # a bug or an input nobody foresaw must still not stop the worker
                logger.warning("unexpected error fetching %r", clip(url, MAX_REASON_CHARS), exc_info=exc)
                end = Attempt(FetchOutcome.FETCH_FAILED, f"unexpected {type(exc).__name__}: {exc}")
            if not end.transient or attempts > self._settings.retries:
                return end, attempts
            delay = self._backoff(attempts - 1, end)
            logger.debug(
                "retrying %s in %.2fs after %s (attempt %d)",
                url,
                delay,
                clip_optional(end.reason, MAX_REASON_CHARS),
                attempts,
            )
            await asyncio.sleep(delay)

    def _backoff(self, retry: int, end: Attempt) -> float:
        ceiling = min(self._retry.cap_s, self._retry.base_s * 2**retry)
        delay = self._random.uniform(0.0, ceiling)
        if end.retry_after is not None:
            delay = max(delay, min(end.retry_after, self._retry.retry_after_cap_s))
        return delay

    async def _attempt(self, session: aiohttp.ClientSession, url: str, validators: Mapping[str, str]) -> Attempt:
        """One attempt: follow up to ``max_redirects`` hops, judging each hop's URL before connecting.

        ``validators`` (``If-None-Match``, ``If-Modified-Since``) go with every hop: the entry they
        come from was stored from the end of the chain.
        """
        loop = asyncio.get_running_loop()
        # The deadline covers the whole attempt, waiting for a per-host slot included: a burst on one
        # slow host cannot hold a listing longer than SWATCH_FETCH_TOTAL_TIMEOUT_S per attempt.
        deadline = loop.time() + self._settings.total_timeout_s
        status: int | None = None
        seen: set[str] = set()
        current = url
        for _hop in range(self._settings.max_redirects + 1):
            try:
                checked = check_url(current, SCHEMES, self._allow)
            except URLRefusedError as refused:
                return Attempt(refused.outcome, refused.reason, status)
            seen.add(str(checked.with_fragment(None)))
            try:
                async with self._limiter.slot(checked.host or "", deadline):
                    step = await self._hop(session, checked, deadline, validators)
            except SlotTimeoutError as busy:
                reason = f"timed out after {self._settings.total_timeout_s}s waiting for a download slot: {busy}"
                return Attempt(FetchOutcome.TIMEOUT, reason, status, transient=True)
            if isinstance(step, Attempt):
                return step if step.status is not None or status is None else replace(step, status=status)
            status, current = step.status, str(step.target)
            if str(step.target.with_fragment(None)) in seen:
                reason = f"redirect loop: back to {current} after {len(seen)} redirects"
                return Attempt(FetchOutcome.FETCH_FAILED, reason, status)
        reason = f"too many redirects (more than {self._settings.max_redirects})"
        return Attempt(FetchOutcome.FETCH_FAILED, reason, status)

    async def _hop(
        self, session: aiohttp.ClientSession, url: URL, deadline: float, validators: Mapping[str, str]
    ) -> Attempt | Redirect:
        """One request within the attempt's deadline: a redirect to follow, or the end of the attempt."""
        with watch_connects() as watch:
            try:
                async with asyncio.timeout_at(deadline):
                    return await self._request(session, url, validators)
            except Exception as exc:
                return classify_error(exc, url, self._settings, tcp_connected=watch.tcp_connected())

    async def _request(
        self, session: aiohttp.ClientSession, url: URL, validators: Mapping[str, str]
    ) -> Attempt | Redirect:
        async with session.get(url, allow_redirects=False, headers=validators or None) as response:
            status = response.status
            cache = self._cache
            if status == _NOT_MODIFIED and validators and cache is not None:
                return Attempt(FetchOutcome.OK, None, status, cache=cache_headers(response.headers, cache.max_age_s))
            if status in _REDIRECT_STATUSES:
                return redirect_target(response)
            if status in _TRANSIENT_STATUSES:
                retry_after = None
                if status in _RETRY_AFTER_STATUSES:
                    retry_after = retry_after_seconds(response.headers.get(hdrs.RETRY_AFTER))
                return Attempt(
                    FetchOutcome.FETCH_FAILED, f"HTTP {status}", status, transient=True, retry_after=retry_after
                )
            if not 200 <= status < 300:
                return Attempt(FetchOutcome.FETCH_FAILED, f"HTTP {status}", status)
            end = await read_body(response, self._settings.max_bytes)
            if status == 200 and end.outcome is FetchOutcome.OK and cache is not None:
                end = replace(end, cache=cache_headers(response.headers, cache.max_age_s))
            return end


@dataclass(slots=True)
class _InFlight:
    """A fetch that concurrent callers of the same URL share, and how many of them wait for it."""

    key: tuple[str, bool]
    task: asyncio.Task[FetchResult]
    waiters: int = 0


def _known(
    url: str, entry: UrlEntry, outcome: UrlCacheOutcome, *, status: int | None, attempts: int, seconds: float
) -> FetchResult:
    """``OK`` with the hash the URL cache remembers and no bytes."""
    return FetchResult(
        url, FetchOutcome.OK, None, entry.content_hash, None, status, attempts, seconds, entry.image_format, outcome
    )


def _url_cache(setting: UrlCache | bool, settings: FetchSettings) -> UrlCache | None:
    if isinstance(setting, UrlCache):
        return setting
    if not setting or settings.url_cache_entries == 0:
        return None
    return UrlCache(settings.url_cache_entries, settings.url_cache_max_age_s)


ImageFetcher = HttpImageSource
"""The name the worker knew the HTTP source by; kept so that callers keep working."""
