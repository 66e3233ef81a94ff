"""The SSRF policy: URL rules, every spelling of a local address, and the address check.

The URL cases go through the HTTP source without a server (a refusal is decided before connecting);
the guard cases use the test server on 127.0.0.1 as a canary that must see no request. Ranges that
cannot be served locally (metadata, private, CGNAT, NAT64, 6to4) are judged by :func:`check_address`
in-process.
"""

from __future__ import annotations

import pytest

from streams.config import FetchSettings
from streams.images import FetchOutcome, ImageFetcher, check_address
from tests.streams.images.harness import JPEG, LOOPBACK, FakeResolver, run, serving, settings


@pytest.mark.parametrize(
    ("url", "outcome", "reason"),
    [
        ("file:///etc/passwd", FetchOutcome.BLOCKED_URL, "scheme 'file' not allowed"),
        ("ftp://127.0.0.1/image.jpg", FetchOutcome.BLOCKED_URL, "scheme 'ftp' not allowed"),
        ("gopher://127.0.0.1:70/_GET", FetchOutcome.BLOCKED_URL, "scheme 'gopher' not allowed"),
        ("data:image/png;base64,iVBORw0KGgo=", FetchOutcome.BLOCKED_URL, "scheme 'data' not allowed"),
        ("javascript:alert(document.domain)", FetchOutcome.BLOCKED_URL, "scheme 'javascript' not allowed"),
        ("FILE:///etc/passwd", FetchOutcome.BLOCKED_URL, "scheme 'file' not allowed"),
        ("http://user:pw@127.0.0.1/image.jpg", FetchOutcome.BLOCKED_URL, "credentials in URL"),
        ("http://user@127.0.0.1/image.jpg", FetchOutcome.BLOCKED_URL, "credentials in URL"),
        ("http://:@127.0.0.1/image.jpg", FetchOutcome.BLOCKED_URL, "credentials in URL"),
        ("http://images.test@169.254.169.254/", FetchOutcome.BLOCKED_URL, "credentials in URL"),
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
                f"http://[::ffff:7f00:1]:{port}/image.jpg": (
                    "refused ::ffff:7f00:1: IPv4-mapped 127.0.0.1 is a loopback address"
                ),
                f"http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/image.jpg": (
                    "refused ::ffff:7f00:1: IPv4-mapped 127.0.0.1 is a loopback address"
                ),
                f"http://[64:ff9b::7f00:1]:{port}/image.jpg": (
                    "refused 64:ff9b::7f00:1: NAT64 127.0.0.1 is a loopback address"
                ),
                f"http://[2002:7f00:1::1]:{port}/image.jpg": (
                    "refused 2002:7f00:1::1: 6to4 127.0.0.1 is a loopback address"
                ),
                f"http://[::]:{port}/image.jpg": "refused ::: unspecified address",
                f"http://0.0.0.0:{port}/image.jpg": "refused 0.0.0.0: unspecified address",
                f"http://0x7f.1:{port}/image.jpg": "refused 127.0.0.1 (written 0x7f.1): loopback address",
                f"http://127.000.000.001:{port}/image.jpg": (
                    "refused 127.0.0.1 (written 127.000.000.001): loopback address"
                ),
                f"http://127.0.0.1.:{port}/image.jpg": "refused 127.0.0.1 (written 127.0.0.1.): loopback address",
                f"http://[fe80::1%25lo]:{port}/image.jpg": "refused fe80::1%lo: link-local address",
                "http://2852039166/latest/meta-data/": (
                    "refused 169.254.169.254 (written 2852039166): cloud metadata address"
                ),
                "http://0xa9fea9fe/latest/meta-data/": (
                    "refused 169.254.169.254 (written 0xa9fea9fe): cloud metadata address"
                ),
                "http://0251.0376.0251.0376/latest/meta-data/": (
                    "refused 169.254.169.254 (written 0251.0376.0251.0376): cloud metadata address"
                ),
                "http://[::ffff:169.254.169.254]/latest/meta-data/": (
                    "refused ::ffff:a9fe:a9fe: IPv4-mapped 169.254.169.254 is a cloud metadata address"
                ),
                "http://169.254.10.1/img.jpg": "refused 169.254.10.1: link-local address",
                "http://172.16.0.1/img.jpg": "refused 172.16.0.1: private address",
                "http://[fd12:3456::1]/img.jpg": "refused fd12:3456::1: unique-local address",
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
    ("::ffff:7f00:1", "IPv4-mapped 127.0.0.1 is a loopback address"),
    ("::ffff:100.64.0.1", "IPv4-mapped 100.64.0.1 is a shared (CGNAT) address"),
    ("64:ff9b::7f00:1", "NAT64 127.0.0.1 is a loopback address"),
    ("64:ff9b::a9fe:a9fe", "NAT64 169.254.169.254 is a cloud metadata address"),
    ("64:ff9b:1::a00:1", "local-use NAT64 address"),
    ("2002:7f00:1::1", "6to4 127.0.0.1 is a loopback address"),
    ("2002:a9fe:a9fe::1", "6to4 169.254.169.254 is a cloud metadata address"),
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
