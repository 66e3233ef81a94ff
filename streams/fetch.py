"""The worker's image fetcher: bounded, SSRF-safe HTTP downloads of listing images.

:class:`ImageFetcher` downloads one image per :meth:`ImageFetcher.fetch` call and never raises for
bad input or hostile hosts: every failure comes back as a :class:`FetchResult` whose ``outcome``
says what went wrong and whose ``reason`` says why, in a few words. What it enforces:

* **SSRF guard.** A URL must be ``http``/``https`` without user-info. Literal IP hosts are judged
  before connecting; legacy numeric forms (``2130706433``, ``0x7f000001``, ``127.1``) are
  normalised, judged and refused. Names are resolved by a custom aiohttp resolver that judges
  *every* address and hands aiohttp only the addresses it judged, so the check and the connection
  use the same resolution (no DNS rebinding window). One refused address refuses the host.
  Only globally routable addresses pass, unless ``allow_networks`` lists them
  (see :func:`check_address`). Every redirect hop is checked again before it is connected to.
* **Limits.** A connect timeout and a total timeout per attempt (the total covers every hop of
  the attempt, from the moment the first hop got its per-host slot); a byte cap enforced while
  streaming, and up front from ``Content-Length``; at most ``max_redirects`` hops; at most
  ``per_host_concurrency`` downloads per host (an :class:`asyncio.Semaphore` per host) plus a
  total connection limit on the connector.
* **Sniffing.** The first bytes must be JPEG, PNG, GIF, WebP, BMP or TIFF by magic number;
  ``Content-Type`` is ignored. A body that does not start like an image is abandoned at once.
* **Retries.** Only transient failures are retried (connect errors, timeouts, lost connections,
  HTTP 429/500/502/503/504), with exponential backoff and full jitter; a ``Retry-After`` on 429
  and 503 is honoured up to a few seconds. A retry starts again from the original URL.

Usage, inside a running event loop::

    async with ImageFetcher(settings.fetch) as fetcher:
        result = await fetcher.fetch(url)
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import ipaddress
import logging
import os
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import TracebackType
from typing import Final, Protocol, Self

import aiohttp
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from streams.config import FetchSettings

__all__ = [
    "DEFAULT_CONNECTION_LIMIT",
    "FetchObserver",
    "FetchOutcome",
    "FetchResult",
    "ImageFetcher",
    "Resolver",
    "RetryPolicy",
    "SystemResolver",
    "check_address",
    "sniff_image_format",
]

logger = logging.getLogger(__name__)

DEFAULT_CONNECTION_LIMIT: Final = 100
"""Connections the fetcher's connector opens at most, over all hosts."""

USER_AGENT: Final = "swatch-image-fetcher/0.1"
_CHUNK_BYTES: Final = 64 * 1024
_SNIFF_BYTES: Final = 32
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
_ALLOWED_SCHEMES: Final = frozenset({"http", "https"})

IPNetwork = IPv4Network | IPv6Network


class FetchOutcome(StrEnum):
    """How a fetch ended.

    The failure values are symbols of the ``ImageOutcome`` Avro enum; ``OK`` is not one: the worker
    reports a fetched image as ``TAGGED`` or ``CACHE_HIT`` (or ``DECODE_FAILED``) once it knows more.
    """

    OK = "OK"
    FETCH_FAILED = "FETCH_FAILED"
    TIMEOUT = "TIMEOUT"
    TOO_LARGE = "TOO_LARGE"
    BLOCKED_URL = "BLOCKED_URL"
    NOT_AN_IMAGE = "NOT_AN_IMAGE"


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The outcome of one :meth:`ImageFetcher.fetch` call, successful or not.

    Attributes:
        url: The URL asked for (before any redirect).
        outcome: How the fetch ended.
        data: The image bytes; only for ``OK``.
        content_hash: Hex SHA-256 of ``data``; only for ``OK``.
        reason: Short human-readable detail of a failure (HTTP status, refused address, ...).
        status: The last HTTP status seen, if any response arrived.
        attempts: Attempts made (1 + retries used).
        seconds: Wall-clock seconds spent, backoff included.
        image_format: The sniffed format for ``OK``, e.g. ``"JPEG"``.
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

    @property
    def ok(self) -> bool:
        """True when the image was fetched and looks like an image."""
        return self.outcome is FetchOutcome.OK


class FetchObserver(Protocol):
    """Told about every finished fetch (the worker counts outcomes and latencies here)."""

    def fetched(self, result: FetchResult) -> None:
        """Record one finished fetch; must be quick and must not block."""


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


class _NullObserver:
    def fetched(self, result: FetchResult) -> None:
        pass


class SystemResolver:
    """The default :class:`Resolver`: the event loop's ``getaddrinfo`` (non-blocking)."""

    async def resolve(self, host: str, port: int) -> list[str]:
        """Return the distinct addresses ``getaddrinfo`` gives for ``host``, in its order."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        addresses: list[str] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = str(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
        return addresses


# -- the address check ----------------------------------------------------------------------------

_V4_RULES: Final[tuple[tuple[IPv4Network, str], ...]] = tuple(
    (IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/32", "unspecified address"),
        ("0.0.0.0/8", "'this network' address"),
        ("10.0.0.0/8", "private address"),
        ("100.64.0.0/10", "shared (CGNAT) address"),
        ("127.0.0.0/8", "loopback address"),
        ("169.254.169.254/32", "cloud metadata address"),
        ("169.254.0.0/16", "link-local address"),
        ("172.16.0.0/12", "private address"),
        ("192.0.0.0/24", "IETF protocol address"),
        ("192.0.2.0/24", "documentation address"),
        ("192.88.99.0/24", "6to4 relay address"),
        ("192.168.0.0/16", "private address"),
        ("198.18.0.0/15", "benchmarking address"),
        ("198.51.100.0/24", "documentation address"),
        ("203.0.113.0/24", "documentation address"),
        ("224.0.0.0/4", "multicast address"),
        ("255.255.255.255/32", "broadcast address"),
        ("240.0.0.0/4", "reserved address"),
    )
)

_V6_RULES: Final[tuple[tuple[IPv6Network, str], ...]] = tuple(
    (IPv6Network(net), why)
    for net, why in (
        ("::/128", "unspecified address"),
        ("::1/128", "loopback address"),
        ("::/8", "reserved address"),
        ("64:ff9b:1::/48", "local-use NAT64 address"),
        ("100::/64", "discard-only address"),
        ("2001:2::/48", "benchmarking address"),
        ("2001:db8::/32", "documentation address"),
        ("2001::/23", "IETF protocol address"),
        ("3fff::/20", "documentation address"),
        ("fd00:ec2::254/128", "cloud metadata address"),
        ("fc00::/7", "unique-local address"),
        ("fe80::/10", "link-local address"),
        ("fec0::/10", "site-local address"),
        ("ff00::/8", "multicast address"),
    )
)

_NAT64: Final = IPv6Network("64:ff9b::/96")
_TEREDO: Final = IPv6Network("2001::/32")


def _embedded_v4(ip: IPv6Address) -> list[tuple[str, IPv4Address]]:
    """The IPv4 addresses an IPv6 address stands for or tunnels to, named by how they are embedded."""
    if ip.ipv4_mapped is not None:
        return [("IPv4-mapped", ip.ipv4_mapped)]
    if ip in _NAT64:
        return [("NAT64", IPv4Address(int(ip) & 0xFFFFFFFF))]
    if ip.sixtofour is not None:
        return [("6to4", ip.sixtofour)]
    if ip.teredo is not None:
        server, client = ip.teredo
        return [("Teredo server", server), ("Teredo client", client)]
    return []


def _problem(ip: IPv4Address | IPv6Address, allow: Sequence[IPNetwork]) -> tuple[str, str] | None:
    """``(address shown, why refused)`` for a refused address, None for an acceptable one."""
    if any(ip in net for net in allow):
        return None
    rules: Sequence[tuple[IPNetwork, str]] = _V4_RULES
    if isinstance(ip, IPv6Address):
        rules = _V6_RULES
        for kind, inner in _embedded_v4(ip):
            inner_problem = _problem(inner, allow)
            if inner_problem is not None:
                return str(ip), f"{kind} {inner} is a {inner_problem[1]}"
        if ip.ipv4_mapped is not None:
            return None  # judged entirely by the IPv4 address it stands for
        if ip in _TEREDO:
            rules = ((_TEREDO, "Teredo tunnel address"),)
    why = next((why for net, why in rules if ip in net), None)
    if why is None and not ip.is_global:
        why = "not globally routable"
    return None if why is None else (str(ip), why)


def check_address(ip: str, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Judge one resolved or literal address for the SSRF guard.

    Args:
        ip: An IPv4 or IPv6 address as text (an IPv6 zone suffix such as ``%eth0`` is accepted).
        allow: Networks let through even though they are not globally routable.

    Returns:
        None when the address may be connected to, else a reason such as
        ``"refused 10.0.0.5: private address"``. IPv4-mapped, NAT64, 6to4 and Teredo IPv6
        addresses are judged by the IPv4 addresses they embed.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return f"refused {ip!r}: not an IP address"
    problem = _problem(address, allow)
    return None if problem is None else f"refused {problem[0]}: {problem[1]}"


_NUMERIC_HOST: Final = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+))*\.?$", re.IGNORECASE)
_CANONICAL_V4: Final = re.compile(
    r"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$"
)


def _legacy_ipv4(host: str) -> IPv4Address | None:
    """The address ``inet_aton`` would make of a numeric host (``0x7f.1``, ``2130706433``), or None."""
    parts = host.rstrip(".").split(".") if host != "." else []
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        lowered = part.lower()
        if lowered.startswith("0x"):
            value = int(lowered[2:] or "0", 16)
        elif len(part) > 1 and part.startswith("0"):
            if any(c in "89" for c in part):
                return None
            value = int(part, 8)
        else:
            value = int(part)
        values.append(value)
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return IPv4Address(number)


def _check_literal_host(host: str, allow: Sequence[IPNetwork]) -> str | None:
    """Judge a URL's host when it is an IP literal; names (None) are judged when they are resolved."""
    if ":" in host:
        return check_address(host, allow)
    if _CANONICAL_V4.match(host):
        return check_address(host, allow)
    if not _NUMERIC_HOST.match(host):
        return None
    address = _legacy_ipv4(host)
    if address is None:
        return f"refused {host!r}: malformed numeric host"
    problem = _problem(address, allow)
    if problem is not None:
        return f"refused {address} (written {host}): {problem[1]}"
    return f"refused {host}: non-canonical form of {address}"


# -- sniffing -------------------------------------------------------------------------------------

_BMP_DIB_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_MAGIC_NUMBERS: Final[tuple[tuple[str, tuple[bytes, ...]], ...]] = (
    ("JPEG", (b"\xff\xd8\xff",)),
    ("PNG", (b"\x89PNG\r\n\x1a\n",)),
    ("GIF", (b"GIF87a", b"GIF89a")),
    ("TIFF", (b"II*\x00", b"MM\x00*")),
)


def sniff_image_format(head: bytes) -> str | None:
    """Name the image format that ``head`` (the first bytes of a file) starts with, by magic number.

    Args:
        head: The first bytes; 32 are plenty.

    Returns:
        ``"JPEG"``, ``"PNG"``, ``"GIF"``, ``"WEBP"``, ``"BMP"`` or ``"TIFF"``, else None.
    """
    for name, magics in _MAGIC_NUMBERS:
        if head.startswith(magics):
            return name
    if len(head) >= 12 and head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if len(head) >= 18 and head.startswith(b"BM") and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return "BMP"  # "BM" alone is too weak: also require a known DIB header size
    return None


# -- the connector's resolver ---------------------------------------------------------------------


class _BlockedAddressError(OSError):
    """Raised by the guarded resolver; aiohttp wraps it in ClientConnectorDNSError."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _GuardedResolver(AbstractResolver):
    """Resolves with a :class:`Resolver`, judges every address, and returns only judged ones."""

    def __init__(self, resolver: Resolver, allow: Sequence[IPNetwork]) -> None:
        self._resolver = resolver
        self._allow = tuple(allow)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await self._resolver.resolve(host, port)
        except OSError:
            raise
        except Exception as exc:
            raise OSError(f"resolver failed: {type(exc).__name__}: {exc}") from exc
        if not addresses:
            raise OSError(f"no addresses for {host}")
        results: list[ResolveResult] = []
        for address in addresses:
            reason = check_address(address, self._allow)
            if reason is not None:
                raise _BlockedAddressError(f"{reason} (resolved from {host})")
            ip_family = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family not in (socket.AF_UNSPEC, ip_family):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=port,
                    family=ip_family,
                    proto=socket.IPPROTO_TCP,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise OSError(f"no {family.name} addresses for {host}")
        return results

    async def close(self) -> None:
        pass


# -- the fetcher ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Attempt:
    """The end of one attempt (all its hops)."""

    outcome: FetchOutcome
    reason: str | None = None
    status: int | None = None
    data: bytes | None = None
    image_format: str | None = None
    transient: bool = False
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class _Redirect:
    location: str
    status: int


@dataclass(slots=True)
class _HostSlot:
    semaphore: asyncio.Semaphore
    users: int = 0


class _HostLimiter:
    """A semaphore per host, dropped again when nobody holds or waits for it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._slots: dict[str, _HostSlot] = {}

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        entry = self._slots.get(host)
        if entry is None:
            entry = self._slots[host] = _HostSlot(asyncio.Semaphore(self._limit))
        entry.users += 1
        try:
            async with entry.semaphore:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._slots[host]


def _retry_after_seconds(value: str | None) -> float | None:
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


def _error_text(exc: OSError) -> str:
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


class ImageFetcher:
    """Downloads listing images with the limits of :class:`~streams.config.FetchSettings`.

    Use it as an async context manager (or call :meth:`start` and :meth:`close`) inside a running
    event loop; :meth:`fetch` may then be called concurrently from many tasks.

    Args:
        settings: Timeouts, byte cap, redirect and retry limits, per-host concurrency, allowed networks.
        resolver: Name resolution for the SSRF guard; default :class:`SystemResolver`.
        observer: Told about every finished fetch; default: nobody.
        retry_policy: Backoff between attempts; default :class:`RetryPolicy` ().
        connection_limit: Connections open at most over all hosts.
    """

    def __init__(
        self,
        settings: FetchSettings,
        *,
        resolver: Resolver | None = None,
        observer: FetchObserver | None = None,
        retry_policy: RetryPolicy | None = None,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
    ) -> None:
        self._settings = settings
        self._allow: tuple[IPNetwork, ...] = tuple(settings.allow_networks)
        self._resolver = resolver if resolver is not None else SystemResolver()
        self._observer = observer if observer is not None else _NullObserver()
        self._retry = retry_policy if retry_policy is not None else RetryPolicy()
        self._connection_limit = connection_limit
        self._limiter = _HostLimiter(settings.per_host_concurrency)
        self._random = random.SystemRandom()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the HTTP session; call from inside the event loop that will run the fetches."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._connection_limit,
            limit_per_host=self._settings.per_host_concurrency,
            resolver=_GuardedResolver(self._resolver, self._allow),
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._settings.connect_timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # proxies from the environment would bypass the address check
            headers={hdrs.USER_AGENT: USER_AGENT, hdrs.ACCEPT: "image/*", hdrs.ACCEPT_ENCODING: "identity"},
        )

    async def close(self) -> None:
        """Close the session and its connections; the fetcher can be started again afterwards."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def fetch(self, url: str) -> FetchResult:
        """Download one image, retrying transient failures; never raises for bad URLs or hosts.

        Args:
            url: An ``http`` or ``https`` URL.

        Returns:
            The result; ``outcome`` is ``OK`` with the bytes, or the failure with a ``reason``.

        Raises:
            RuntimeError: The fetcher was not started.
        """
        session = self._session
        if session is None:
            raise RuntimeError("ImageFetcher is not started: use `async with ImageFetcher(...)` or await start()")
        started = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            try:
                end = await self._attempt(session, url)
            except Exception as exc:  # a bug or an input nobody foresaw must still not stop the worker
                logger.warning("unexpected error fetching %r", url, exc_info=exc)
                end = _Attempt(FetchOutcome.FETCH_FAILED, f"unexpected {type(exc).__name__}: {exc}")
            if not end.transient or attempts > self._settings.retries:
                break
            delay = self._backoff(attempts - 1, end)
            logger.debug("retrying %s in %.2fs after %s (attempt %d)", url, delay, end.reason, attempts)
            await asyncio.sleep(delay)
        data = end.data if end.outcome is FetchOutcome.OK else None
        result = FetchResult(
            url=url,
            outcome=end.outcome,
            data=data,
            content_hash=hashlib.sha256(data).hexdigest() if data is not None else None,
            reason=end.reason,
            status=end.status,
            attempts=attempts,
            seconds=time.perf_counter() - started,
            image_format=end.image_format if data is not None else None,
        )
        if not result.ok:
            logger.debug("fetch %s: %s (%s)", url, result.outcome, result.reason)
        try:
            self._observer.fetched(result)
        except Exception:
            logger.exception("fetch observer failed")
        return result

    def _backoff(self, retry: int, end: _Attempt) -> float:
        ceiling = min(self._retry.cap_s, self._retry.base_s * 2**retry)
        delay = self._random.uniform(0.0, ceiling)
        if end.retry_after is not None:
            delay = max(delay, min(end.retry_after, self._retry.retry_after_cap_s))
        return delay

    def _validate(self, raw: str) -> URL:
        """Parse a URL and judge its scheme, user-info and literal host (names are judged on resolution).

        Raises:
            _Ended: The URL is invalid or refused.
        """
        try:
            url = URL(raw)
        except (TypeError, ValueError) as exc:
            raise _Ended(FetchOutcome.FETCH_FAILED, f"invalid URL: {exc}") from exc
        scheme = url.scheme.lower()
        if not scheme:
            raise _Ended(FetchOutcome.FETCH_FAILED, "invalid URL: no scheme")
        if scheme not in _ALLOWED_SCHEMES:
            raise _Ended(FetchOutcome.BLOCKED_URL, f"scheme {scheme!r} not allowed")
        if "@" in url.raw_authority:
            raise _Ended(FetchOutcome.BLOCKED_URL, "credentials in URL")
        if not url.host:
            raise _Ended(FetchOutcome.FETCH_FAILED, "invalid URL: no host")
        refused = _check_literal_host(url.host, self._allow)
        if refused is not None:
            raise _Ended(FetchOutcome.BLOCKED_URL, refused)
        return url

    async def _attempt(self, session: aiohttp.ClientSession, url: str) -> _Attempt:
        """One attempt: follow up to ``max_redirects`` hops, judging each hop's URL before connecting."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        status: int | None = None
        current = url
        try:
            for _hop in range(self._settings.max_redirects + 1):
                checked = self._validate(current)
                async with self._limiter.slot(checked.host or ""):
                    if deadline is None:
                        deadline = loop.time() + self._settings.total_timeout_s
                    try:
                        async with asyncio.timeout_at(deadline):
                            step = await self._hop(session, checked)
                    except _Ended:
                        raise
                    except Exception as exc:
                        raise _Ended.from_exception(exc, checked, self._settings) from exc
                if isinstance(step, _Attempt):
                    return step
                status, current = step.status, step.location
        except _Ended as ended:
            end = ended.attempt
            return end if end.status is not None or status is None else replace(end, status=status)
        return _Attempt(FetchOutcome.BLOCKED_URL, f"more than {self._settings.max_redirects} redirects", status)

    async def _hop(self, session: aiohttp.ClientSession, url: URL) -> _Attempt | _Redirect:
        """One request: a redirect to follow, or the end of the attempt."""
        async with session.get(url, allow_redirects=False) as response:
            status = response.status
            if status in _REDIRECT_STATUSES:
                return _redirect(response)
            if status in _TRANSIENT_STATUSES:
                retry_after = None
                if status in _RETRY_AFTER_STATUSES:
                    retry_after = _retry_after_seconds(response.headers.get(hdrs.RETRY_AFTER))
                return _Attempt(
                    FetchOutcome.FETCH_FAILED, f"HTTP {status}", status, transient=True, retry_after=retry_after
                )
            if not 200 <= status < 300:
                return _Attempt(FetchOutcome.FETCH_FAILED, f"HTTP {status}", status)
            return await _read_body(response, self._settings.max_bytes)


class _Ended(Exception):
    """Ends an attempt early with a final :class:`_Attempt` (raised and caught inside the fetcher)."""

    def __init__(self, outcome: FetchOutcome, reason: str, status: int | None = None, *, transient: bool = False):
        super().__init__(reason)
        self.attempt = _Attempt(outcome, reason, status, transient=transient)

    @classmethod
    def from_exception(cls, exc: Exception, url: URL, settings: FetchSettings) -> _Ended:
        """Classify an exception raised by one hop: the outcome, a short reason, and whether to retry."""
        where = f"{url.host}:{url.port}"
        outcome, retry, status = FetchOutcome.FETCH_FAILED, False, None
        if isinstance(exc, aiohttp.ConnectionTimeoutError):  # before TimeoutError: it is one
            outcome, retry, reason = FetchOutcome.TIMEOUT, True, f"connect timeout after {settings.connect_timeout_s}s"
        elif isinstance(exc, TimeoutError):
            outcome, retry, reason = FetchOutcome.TIMEOUT, True, f"timed out after {settings.total_timeout_s}s"
        elif isinstance(exc, aiohttp.ClientConnectorDNSError):  # before ClientConnectorError: it is one
            cause = exc.os_error
            if isinstance(cause, _BlockedAddressError):
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
        return cls(outcome, reason, status, transient=retry)


def _redirect(response: aiohttp.ClientResponse) -> _Redirect:
    """Where a 3xx response points, resolved against the URL that gave it."""
    status = response.status
    location = response.headers.get(hdrs.LOCATION)
    if not location:
        raise _Ended(FetchOutcome.FETCH_FAILED, f"HTTP {status} without Location", status)
    try:
        target = response.url.join(URL(location))
    except (TypeError, ValueError) as exc:
        raise _Ended(FetchOutcome.FETCH_FAILED, f"HTTP {status} with an invalid Location", status) from exc
    return _Redirect(str(target), status)


async def _read_body(response: aiohttp.ClientResponse, cap: int) -> _Attempt:
    """Stream a 2xx body, stopping at the byte cap or as soon as the first bytes are not an image."""
    status = response.status
    length = response.content_length
    if length is not None and length > cap:
        response.close()
        return _Attempt(FetchOutcome.TOO_LARGE, f"Content-Length {length} exceeds {cap} bytes", status)
    body = bytearray()
    image_format: str | None = None
    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
        if len(body) + len(chunk) > cap:
            response.close()
            return _Attempt(FetchOutcome.TOO_LARGE, f"exceeded {cap} bytes", status)
        body += chunk
        if image_format is None and len(body) >= _SNIFF_BYTES:
            image_format = sniff_image_format(bytes(body[:_SNIFF_BYTES]))
            if image_format is None:
                response.close()  # do not download the rest of something that is not an image
                return _not_an_image(body, status)
    if image_format is None:
        image_format = sniff_image_format(bytes(body))
    if image_format is None:
        return _not_an_image(body, status)
    return _Attempt(FetchOutcome.OK, None, status, data=bytes(body), image_format=image_format)


def _not_an_image(body: bytearray, status: int) -> _Attempt:
    if not body:
        return _Attempt(FetchOutcome.NOT_AN_IMAGE, "not an image (empty body)", status)
    return _Attempt(FetchOutcome.NOT_AN_IMAGE, f"not an image (starts with {bytes(body[:16])!r})", status)
