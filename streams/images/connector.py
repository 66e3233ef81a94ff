"""The HTTP source's connector: name resolution through the SSRF guard, and which phase a connect reached.

* :class:`GuardedResolver` resolves with a :class:`~streams.images.result.Resolver`, judges *every*
  address with :func:`~streams.images.policy.check_address` and hands aiohttp only the addresses it
  judged, so the check and the connection use the same resolution (no DNS rebinding window). One
  refused address refuses the host.
* :func:`watch_connects` tells a timed-out connect that stalled in TCP from one that stalled in the
  TLS handshake. aiohttp runs both under the one ``sock_connect`` timeout
  (``TCPConnector._wrap_create_connection``: ``aiohappyeyeballs.start_connection`` then
  ``loop.create_connection(ssl=..., sock=...)``) and raises the same
  :class:`aiohttp.ConnectionTimeoutError` for either, so the connector's socket factory keeps a
  duplicate of each socket it makes while a watch is open; after the failure the duplicate says
  whether the TCP connection had been established.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Final

import aiohttp
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult

from streams.images.policy import IPNetwork, check_address
from streams.images.result import Resolver

__all__ = [
    "BlockedAddressError",
    "ConnectWatch",
    "GuardedResolver",
    "SystemResolver",
    "make_connector",
    "watch_connects",
]

_DNS_CACHE_S: Final = 10


class SystemResolver:
    """The default :class:`~streams.images.result.Resolver`: the event loop's ``getaddrinfo`` (non-blocking)."""

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


class BlockedAddressError(OSError):
    """Raised by the guarded resolver; aiohttp wraps it in ClientConnectorDNSError."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GuardedResolver(AbstractResolver):
    """Resolves with a :class:`~streams.images.result.Resolver`, judges every address, returns only judged ones."""

    def __init__(self, resolver: Resolver, allow: Sequence[IPNetwork]) -> None:
        self._resolver = resolver
        self._allow = tuple(allow)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The judged addresses of ``host`` of ``family``; :class:`BlockedAddressError` if any is refused."""
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
                raise BlockedAddressError(f"{reason} (resolved from {host})")
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
        """Nothing to release."""


class ConnectWatch:
    """The sockets the connector made while the watch was open (as duplicates, closed with the watch)."""

    def __init__(self) -> None:
        self._probes: list[socket.socket] = []

    def add(self, sock: socket.socket) -> None:
        """Keep a duplicate of ``sock``: it outlives the original, which aiohttp closes on failure."""
        with suppress(OSError):  # out of descriptors: no probe, the failure reads as a connect timeout
            self._probes.append(sock.dup())

    def tcp_connected(self) -> bool:
        """True when one of the sockets got as far as an established TCP connection."""
        for probe in self._probes:
            with suppress(OSError):
                probe.getpeername()
                return True
        return False

    def close(self) -> None:
        """Close the duplicates (the connections themselves stay with aiohttp)."""
        probes, self._probes = self._probes, []
        for probe in probes:
            probe.close()


_WATCH: Final[ContextVar[ConnectWatch | None]] = ContextVar("swatch_connect_watch", default=None)


@contextmanager
def watch_connects() -> Iterator[ConnectWatch]:
    """Record the connects made by this task (and tasks it starts) until the block ends."""
    watch = ConnectWatch()
    token = _WATCH.set(watch)
    try:
        yield watch
    finally:
        _WATCH.reset(token)
        watch.close()


def _socket_factory(addr_info: AddrInfoType) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    watch = _WATCH.get()
    if watch is not None:
        watch.add(sock)
    return sock


def make_connector(
    resolver: Resolver, allow: Sequence[IPNetwork], *, limit: int, limit_per_host: int
) -> aiohttp.TCPConnector:
    """The connector of the HTTP source: guarded resolution, watched sockets, connection limits."""
    return aiohttp.TCPConnector(
        limit=limit,
        limit_per_host=limit_per_host,
        resolver=GuardedResolver(resolver, allow),
        ttl_dns_cache=_DNS_CACHE_S,
        socket_factory=_socket_factory,
    )
