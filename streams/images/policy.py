"""The SSRF policy: which URLs an image source may fetch and which addresses it may connect to.

Two checks, both pure functions:

* :func:`check_url` judges a URL before anything is connected: its length (at most
  :data:`MAX_URL_CHARS`), its syntax, its scheme, user-info (credentials are refused) and, when the
  host is an IP literal, the address. Legacy numeric hosts (``2130706433``, ``0x7f000001``,
  ``0177.0.0.1``, ``127.1``) are normalised the way ``inet_aton`` reads them, judged, and refused
  either way: a canonical address is the only spelling let through. :func:`check_url_form` is the
  part that does not depend on the source (everything but the host), for the scheme router.
* :func:`check_address` judges one resolved or literal address. Only globally routable addresses
  pass, unless ``allow`` lists them. IPv6 addresses that stand for or tunnel to an IPv4 address
  (IPv4-mapped, NAT64, 6to4, Teredo) are judged by that IPv4 address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final

from yarl import URL

from streams.images.result import FetchOutcome
from streams.text import MAX_URL_CHARS  # the same bound events clip echoed URLs to

__all__ = [
    "MAX_URL_CHARS",
    "IPNetwork",
    "URLRefusedError",
    "check_address",
    "check_url",
    "check_url_form",
]

IPNetwork = IPv4Network | IPv6Network

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

# first match wins: a network comes before any larger one that contains it
_V6_RULES: Final[tuple[tuple[IPv6Network, str], ...]] = tuple(
    (IPv6Network(net), why)
    for net, why in (
        ("::/128", "unspecified address"),
        ("::1/128", "loopback address"),
        ("64:ff9b:1::/48", "local-use NAT64 address"),  # before ::/8, which contains it
        ("::/8", "reserved address"),
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


class URLRefusedError(Exception):
    """A URL the policy refuses: ``outcome`` (``BLOCKED_URL`` or ``FETCH_FAILED``) and a short ``reason``."""

    def __init__(self, outcome: FetchOutcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


def check_url_form(raw: str, schemes: Collection[str]) -> URL:
    """Parse ``raw`` and judge what any source would: length, syntax, scheme, credentials, a host.

    Args:
        raw: The URL as it came from the listing or a ``Location`` header.
        schemes: The schemes accepted (lower case).

    Returns:
        The parsed URL.

    Raises:
        URLRefusedError: ``FETCH_FAILED`` for a URL that is too long or malformed, ``BLOCKED_URL`` for a
            scheme outside ``schemes`` or user-info in the authority.
    """
    if len(raw) > MAX_URL_CHARS:
        raise URLRefusedError(FetchOutcome.FETCH_FAILED, f"URL longer than {MAX_URL_CHARS} characters")
    try:
        url = URL(raw)
        scheme, authority, host = url.scheme.lower(), url.raw_authority, url.host
    except (TypeError, ValueError) as exc:
        raise URLRefusedError(FetchOutcome.FETCH_FAILED, f"invalid URL: {exc}") from exc
    if not scheme:
        raise URLRefusedError(FetchOutcome.FETCH_FAILED, "invalid URL: no scheme")
    if scheme not in schemes:
        raise URLRefusedError(FetchOutcome.BLOCKED_URL, f"scheme {scheme!r} not allowed")
    if "@" in authority:
        raise URLRefusedError(FetchOutcome.BLOCKED_URL, "credentials in URL")
    if not host:
        raise URLRefusedError(FetchOutcome.FETCH_FAILED, "invalid URL: no host")
    return url


def check_url(raw: str, schemes: Collection[str], allow: Sequence[IPNetwork] = ()) -> URL:
    """:func:`check_url_form`, then the host when it is an IP literal (names are judged when resolved).

    Raises:
        URLRefusedError: As :func:`check_url_form`, and ``BLOCKED_URL`` for a refused literal address.
    """
    url = check_url_form(raw, schemes)
    refused = _check_literal_host(url.host or "", allow)
    if refused is not None:
        raise URLRefusedError(FetchOutcome.BLOCKED_URL, refused)
    return url


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
