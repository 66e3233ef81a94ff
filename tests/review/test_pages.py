"""The review UI's pages without a browser: escaping of merchant data, login, redirects, leases, errors.

The helpers are tested directly; the pages against a running `swatch review` (real broker and
Redis) over plain HTTP with urllib, the way a browser without JavaScript would see them.
"""

from __future__ import annotations

import asyncio
import http.cookies
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Any

import pytest

from streams.combine import ImageOutcome
from streams.config import Settings
from streams.review import pages
from streams.review.pages_render import Filters, ago, percent, query, safe_next, segment
from tests.review.harness import ReviewProcess, low, produce, request_record, review_settings, running_review, wait_for

HOSTILE_TITLE = "<script>alert(1)</script>"
HOSTILE_ID = "evil\"'<i>1"
HOSTILE_DECLARED = "\"><script>alert(3)</script>"
HOSTILE_URL = "http://127.0.0.1:9/x.png?\"><script>alert(4)</script>"
HOSTILE_MERCHANT = "<img src=x onerror=alert(5)>"
HOSTILE_BULK_TITLE = "<svg onload=alert(6)>"
RAW_MARKUP = ("<script>alert", "<img src=x", "<svg onload", "<i>1")


# -- helpers, no service ----------------------------------------------------------------------------


def test_filters_keep_good_values_and_report_bad_ones() -> None:
    given = {"reason": "LOW_CONFIDENCE", "attribute": " colour ", "min_confidence": "0.2", "max_confidence": ""}
    parsed = Filters.parse(given)
    assert parsed.values == {"reason": "LOW_CONFIDENCE", "attribute": "colour", "min_confidence": "0.2"}
    assert parsed.queue.reason == "LOW_CONFIDENCE" and parsed.queue.min_confidence == 0.2
    assert parsed.queue.max_confidence is None and not parsed.problems
    bad = Filters.parse({"reason": "NOPE", "min_confidence": "abc", "max_confidence": "7"})
    assert bad.values == {} and bad.queue == Filters.parse({}).queue
    assert len(bad.problems) == 3


def test_login_never_redirects_off_site() -> None:
    assert safe_next("/items/L-1?reason=LOW_CONFIDENCE") == "/items/L-1?reason=LOW_CONFIDENCE"
    for target in (None, "", "https://evil.example/", "//evil.example/", "/\\evil.example", "items", "/a\nb"):
        assert safe_next(target) == "/"


def test_small_formatters() -> None:
    assert query({"reason": "LOW_CONFIDENCE", "group": ""}, offset=50) == "?reason=LOW_CONFIDENCE&offset=50"
    assert query({"reason": "X"}, reason=None) == ""
    assert segment("a/b?c#d e") == "a%2Fb%3Fc%23d%20e"
    assert percent(0.553) == "55%" and percent(None) == "-"
    assert ago(1_000_000, now_s=1_000 + 3 * 3600 + 5) == "3 h"
    assert ago("x") == "-"


def test_the_cookie_is_the_one_the_app_reads() -> None:
    from streams.review import app

    assert pages.REVIEWER_COOKIE == app.REVIEWER_COOKIE


# -- pages of a running service -----------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: Message
    body: str


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class Browser:
    """Plain HTTP with a cookie jar of one cookie, redirects not followed."""

    base: str
    cookie: str | None = None

    def call(self, method: str, path: str, form: dict[str, str] | None = None) -> Response:
        data = None if form is None else urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if self.cookie:
            request.add_header("Cookie", self.cookie)
        opener = urllib.request.build_opener(_NoRedirects)
        try:
            with opener.open(request, timeout=30) as response:
                return Response(response.status, response.headers, response.read().decode())
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.headers, exc.read().decode())

    def login(self, name: str) -> Response:
        response = self.call("POST", "/login", {"reviewer": name, "next": "/"})
        morsel = http.cookies.SimpleCookie(response.headers["Set-Cookie"])[pages.REVIEWER_COOKIE]
        self.cookie = f"{pages.REVIEWER_COOKIE}={morsel.coded_value}"
        return response


@dataclass
class Service:
    settings: Settings
    review: ReviewProcess

    def browser(self) -> Browser:
        return Browser(self.review.api.base)


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    settings = review_settings(kafka_bootstrap, redis_url, f"rvp-{uuid.uuid4().hex[:8]}")
    with running_review(settings, tmp_path_factory.mktemp("logs")) as review:
        hostile = request_record(
            HOSTILE_ID,
            uncertain=[low("colour", [("navy", 0.6), ("black", 0.3)], "DECLARED_CONFLICT", declared=HOSTILE_DECLARED)],
            images=[ImageOutcome(HOSTILE_URL, "TAGGED", content_hash="1" * 64)],
        )
        hostile["title"] = HOSTILE_TITLE
        hostile["merchant_id"] = HOSTILE_MERCHANT
        easy = request_record("P-2", uncertain=[low("colour", [("black", 0.93)])])
        easy["title"] = HOSTILE_BULK_TITLE
        produce(settings, settings.topics.review, "review_request", hostile, easy)
        wait_for(lambda: review.api.get("/api/queue")["total"] == 2, what="both items in the queue")
        yield Service(settings, review)


def assert_escaped(body: str) -> None:
    for markup in RAW_MARKUP:
        assert markup not in body, f"{markup!r} reached the page unescaped"


@pytest.mark.integration
@pytest.mark.slow
def test_pages_escape_merchant_data(service: Service) -> None:
    browser = service.browser()
    browser.login("alice")

    queue = browser.call("GET", "/")
    assert queue.status == 200, queue.body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in queue.body
    assert "&lt;img src=x onerror=alert(5)&gt;" in queue.body
    assert f'href="/items/{segment(HOSTILE_ID)}"' in queue.body
    assert_escaped(queue.body)
    assert "script-src 'self'" in queue.headers["Content-Security-Policy"]
    assert "alice" in queue.body

    item = browser.call("GET", f"/items/{segment(HOSTILE_ID)}")
    assert item.status == 200, item.body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in item.body
    assert "&#34;&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in item.body  # the declared value
    assert "alert(4)" in item.body and "disagrees" in item.body
    assert_escaped(item.body)
    data = item.body.split('<script type="application/json" id="page-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(data)["listing_id"] == HOSTILE_ID  # the script's data: JSON with <, >, &, ' escaped

    bulk = browser.call("GET", "/bulk")
    assert bulk.status == 200, bulk.body
    assert "&lt;svg onload=alert(6)&gt;" in bulk.body
    assert_escaped(bulk.body)


@pytest.mark.integration
@pytest.mark.slow
def test_login_logout_and_redirects(service: Service) -> None:
    anonymous = service.browser()
    for path in ("/", "/bulk", f"/items/{segment(HOSTILE_ID)}"):
        response = anonymous.call("GET", path)
        assert response.status == 303
        location = urllib.parse.urlsplit(response.headers["Location"])
        assert location.path == "/login" and urllib.parse.parse_qs(location.query) == {"next": [path]}
    form = anonymous.call("GET", "/login?next=/bulk")
    assert form.status == 200 and 'name="reviewer"' in form.body and 'value="/bulk"' in form.body
    refused = anonymous.call("POST", "/login", {"reviewer": "", "next": "/"})
    assert refused.status == 400 and "Type your name" in refused.body
    off_site = anonymous.call("POST", "/login", {"reviewer": "carol", "next": "//evil.example/"})
    assert off_site.status == 303 and off_site.headers["Location"] == "/"
    cookie = off_site.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie

    browser = service.browser()
    browser.login("Zoë Ågren")
    assert "Zoë Ågren" in browser.call("GET", "/").body
    out = browser.call("GET", "/logout")
    assert out.status == 303 and out.headers["Location"] == "/login"
    assert 'Max-Age=0' in out.headers["Set-Cookie"] or "expires" in out.headers["Set-Cookie"].lower()

    assert anonymous.call("GET", "/static/item.js").status == 200
    assert anonymous.call("GET", "/static/../pages.py").status in (403, 404)


@pytest.mark.integration
@pytest.mark.slow
def test_item_leases_start_and_missing_items(service: Service) -> None:
    bob = service.browser()
    bob.login("bob")
    start = bob.call("POST", "/next", {"reason": "LOW_CONFIDENCE"})
    assert start.status == 303 and start.headers["Location"] == "/items/P-2?reason=LOW_CONFIDENCE"
    opened = bob.call("GET", "/items/P-2?reason=LOW_CONFIDENCE")
    assert opened.status == 200 and "yours" in opened.body

    dave = service.browser()
    dave.login("dave")
    read_only = dave.call("GET", "/items/P-2")
    assert read_only.status == 200
    assert "bob is reviewing this item: you see it read-only." in read_only.body
    assert '"read_only": true' in read_only.body
    queue = dave.call("GET", "/?reason=LOW_CONFIDENCE")
    assert '<span class="lease">bob</span>' in queue.body

    empty = dave.call("POST", "/next", {"reason": "NO_USABLE_IMAGE"})
    assert empty.status == 303 and empty.headers["Location"] == "/?reason=NO_USABLE_IMAGE&done=empty"
    assert "Nothing left to review with these filters." in dave.call("GET", empty.headers["Location"]).body

    gone = dave.call("GET", "/items/never-queued")
    assert gone.status == 404 and "is not waiting for review" in gone.body
    bad = dave.call("GET", "/?min_confidence=abc&reason=%3Cb%3E")
    assert bad.status == 200 and "min confidence must be a number" in bad.body
    assert "&lt;b&gt;" in bad.body and "<b>" not in bad.body



# -- behind an authenticating proxy (no service needed) ---------------------------------------------------


@dataclass
class _ProxiedHost:
    """The parts of ReviewApp the pages use, behind a proxy and still starting (no service yet)."""

    settings: Settings
    service: Any = None
    store: Any = None

    def reviewer_of(self, request: Any) -> str | None:
        return request.headers.get(self.settings.review.reviewer_header)


def test_behind_a_proxy_the_header_names_the_reviewer(clean_swatch_env: None) -> None:
    from aiohttp import ClientSession, web
    from aiohttp.test_utils import TestServer

    settings = Settings(review={"behind_proxy": True, "host": "0.0.0.0"})  # noqa: S104

    async def scenario() -> None:
        app = web.Application()
        pages.add_pages(app, _ProxiedHost(settings))
        async with TestServer(app) as server, ClientSession(base_url=str(server.make_url("/"))) as http:
            async with http.get("/") as anonymous:
                assert anonymous.status == 401
                assert "X-Forwarded-User" in await anonymous.text()
            me = {"X-Forwarded-User": "grace"}
            async with http.get("/", headers=me) as starting:
                assert starting.status == 503 and "still starting" in await starting.text()
            async with http.get("/login", headers=me) as login:
                body = await login.text()
                assert "Signed in by the proxy" in body and "grace" in body
                assert "Log out" not in body and 'name="reviewer"' not in body
            async with http.post("/login", data={"reviewer": "mallory"}, allow_redirects=False) as post:
                assert post.status == 303 and "Set-Cookie" not in post.headers
            async with http.get("/logout", headers=me, allow_redirects=False) as logout:
                assert logout.status == 200 and "Set-Cookie" not in logout.headers
            async with http.get("/", headers={"Cookie": f"{pages.REVIEWER_COOKIE}=mallory"}) as cookie_only:
                assert cookie_only.status == 401  # behind a proxy a cookie names no one

    asyncio.run(scenario())
