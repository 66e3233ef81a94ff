"""The review UI's server-rendered pages: login, the queue, one item, the bulk grid.

Jinja2 templates under ``templates/`` (autoescaped: titles, URLs and declared values come from
merchants), scripts and styles under ``static/``. The pages read through the same
:class:`~streams.review.service.ReviewService` as the JSON API; everything that changes state
(heartbeats, decisions, accept, skip, undo, bulk accept) the page scripts send to ``/api/...``, so
the API's checks and its idempotent decision ids hold for the UI as well. Data for a script travels
in a ``<script type="application/json">`` block (Jinja's ``tojson`` escapes ``<``, ``>``, ``&`` and
``'``), so the pages need no inline script and send a strict Content-Security-Policy.

Who reviews: without an authenticating proxy, ``/login`` sets the ``swatch_reviewer`` cookie
(``SameSite=Strict``, so another site cannot post in the reviewer's name); behind one, the proxy's
header names the reviewer and ``/login`` only says so.
"""

from __future__ import annotations

import hashlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import jinja2
import redis.asyncio as aioredis
from aiohttp import web

from streams.config import Settings
from streams.review.items import REASONS
from streams.review.service import ReviewError, ReviewService, check_reviewer
from streams.review.store import QueueFilter, ReviewStore
from tagger.taxonomy import UnknownValueError

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

REVIEWER_COOKIE = "swatch_reviewer"  # the cookie ReviewApp.reviewer_of reads (app.REVIEWER_COOKIE)
COOKIE_MAX_AGE_S = 30 * 24 * 3600
PAGE_SIZE = 50
MAX_KEYS = 9  # candidates reachable with the number keys 1-9
MAX_FILTER_TEXT = 128

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

NOTICES = {"empty": "Nothing left to review with these filters."}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ReviewHost(Protocol):
    """What the pages need of :class:`streams.review.app.ReviewApp` (a protocol: app.py imports this module)."""

    @property
    def settings(self) -> Settings:
        """The service's settings."""

    @property
    def service(self) -> ReviewService | None:
        """The review service, None while starting."""

    @property
    def store(self) -> ReviewStore:
        """The Redis queue."""

    def reviewer_of(self, request: web.Request) -> str | None:
        """Who makes the request (proxy header or login cookie)."""


@dataclass(frozen=True)
class Filters:
    """The queue filters of a page: the parsed filter, the values to echo back, and what was refused."""

    queue: QueueFilter
    values: dict[str, str]
    problems: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, source: Mapping[str, Any]) -> Filters:
        """Filters from query parameters or form fields; unusable values are dropped with a problem noted."""
        values: dict[str, str] = {}
        problems: list[str] = []
        for name in ("reason", "attribute", "group"):
            text = str(source.get(name) or "").strip()[:MAX_FILTER_TEXT]
            if name == "reason" and text and text not in REASONS:
                problems.append(f"unknown reason {text!r}")
                continue
            if text:
                values[name] = text
        numbers: dict[str, float] = {}
        for name in ("min_confidence", "max_confidence"):
            text = str(source.get(name) or "").strip()
            if not text:
                continue
            try:
                number = float(text)
            except ValueError:
                problems.append(f"{name.replace('_', ' ')} must be a number between 0 and 1, not {text[:20]!r}")
                continue
            if not 0.0 <= number <= 1.0:
                problems.append(f"{name.replace('_', ' ')} must be between 0 and 1")
                continue
            numbers[name] = number
            values[name] = text
        flt = QueueFilter(
            reason=values.get("reason"),
            attribute=values.get("attribute"),
            group=values.get("group"),
            min_confidence=numbers.get("min_confidence"),
            max_confidence=numbers.get("max_confidence"),
        )
        return cls(flt, values, problems)


def query(values: Mapping[str, Any], **overrides: Any) -> str:
    """``?a=1&b=2`` of the non-empty values (overrides win; None drops a key), or ``""``."""
    merged = {**values, **overrides}
    kept = {k: str(v) for k, v in merged.items() if v not in (None, "")}
    return "?" + urllib.parse.urlencode(kept) if kept else ""


def segment(value: Any) -> str:
    """A value quoted for one URL path segment (listing ids may hold ``/``, ``?`` or ``#``)."""
    return urllib.parse.quote(str(value), safe="")


def percent(value: Any) -> str:
    """A confidence as a whole percentage (``0.553`` -> ``55%``)."""
    try:
        return f"{float(value) * 100:.0f}%"
    except (TypeError, ValueError):
        return "-"


def when(millis: Any) -> str:
    """UTC milliseconds as ``2024-05-01 12:30:05 UTC``."""
    try:
        moment = datetime.fromtimestamp(float(millis) / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(millis: Any, now_s: float | None = None) -> str:
    """How long ago UTC milliseconds were (``42 s``, ``5 min``, ``3 h``, ``2 d``)."""
    try:
        seconds = (time.time() if now_s is None else now_s) - float(millis) / 1000
    except (TypeError, ValueError):
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def safe_next(target: str | None) -> str:
    """A local path to go to after login (never another site: ``//host`` and ``/\\host`` are refused)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or "\n" in target:
        return "/"
    return target


def environment() -> jinja2.Environment:
    """The templates, autoescaped, with the UI's filters and helpers."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(seg=segment, pct=percent, when=when, ago=ago)
    env.globals.update(query=query, reasons=REASONS, static_version=static_version())
    return env


def static_version() -> str:
    """A hash of the static files, appended to their URLs so a new release is never served stale."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class Pages:
    """The page handlers, bound to the review app."""

    def __init__(self, host: ReviewHost) -> None:
        self.host = host
        self.env = environment()

    # -- plumbing ----------------------------------------------------------------------------------

    def render(self, request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
        """An HTML page with the security headers; ``reviewer`` and the proxy flag are always in context."""
        context.setdefault("reviewer", self.reviewer(request))
        context.setdefault("messages", [])
        context.setdefault("page", template.removesuffix(".html"))
        context.setdefault("title", "Swatch review")
        context["behind_proxy"] = self.host.settings.review.behind_proxy
        context["reviewer_header"] = self.host.settings.review.reviewer_header
        html = self.env.get_template(template).render(**context)
        return web.Response(text=html, status=status, content_type="text/html", headers=SECURITY_HEADERS)

    def reviewer(self, request: web.Request) -> str | None:
        """The reviewer when the request names a valid one."""
        try:
            return check_reviewer(self.host.reviewer_of(request))
        except ReviewError:
            return None

    def require(self, request: web.Request) -> str:
        """The reviewer, or a redirect to the login form (a 401 page behind a proxy)."""
        reviewer = self.reviewer(request)
        if reviewer is not None:
            return reviewer
        if self.host.settings.review.behind_proxy:
            header = self.host.settings.review.reviewer_header
            raise ReviewError(401, "no_reviewer", f"the auth proxy must set {header}")
        raise web.HTTPSeeOther(location="/login" + query({"next": request.path_qs}))

    def service(self) -> ReviewService:
        """The review service (a 503 page while it starts)."""
        if self.host.service is None:
            raise ReviewError(503, "starting", "the review service is still starting; reload in a moment")
        return self.host.service

    def page(self, handler: Handler) -> Handler:
        """A handler whose refusals and outages become an error page instead of a traceback."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ReviewError as exc:
                return self.problem(request, exc.status, exc.code, str(exc))
            except (aioredis.RedisError, OSError) as exc:
                logger.warning("page %s failed: %s", request.path, exc)
                return self.problem(request, 503, "redis_unavailable", f"the review queue is unavailable: {exc}")

        return wrapped

    def problem(self, request: web.Request, status: int, code: str, message: str) -> web.Response:
        """The error page."""
        return self.render(request, "problem.html", status=status, code=code, message=message, title="Problem")

    # -- login -------------------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        """The login form (or, behind a proxy, what names the reviewer)."""
        return self.render(request, "login.html", next=safe_next(request.query.get("next")), error=None)

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Set the reviewer cookie and go on to the queue (or where the reviewer was going)."""
        if self.host.settings.review.behind_proxy:
            return _redirect("/login")
        form = await request.post()
        name = str(form.get("reviewer") or "").strip()
        target = safe_next(str(form.get("next") or "/"))
        try:
            name = check_reviewer(name)
        except ReviewError:
            error = "Type your name: 1-128 printable characters."
            return self.render(request, "login.html", status=400, next=target, error=error, reviewer=None)
        response = _redirect(target)
        response.set_cookie(REVIEWER_COOKIE, name, max_age=COOKIE_MAX_AGE_S, path="/", httponly=True, samesite="Strict")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Forget the reviewer cookie."""
        if self.host.settings.review.behind_proxy:
            return self.render(request, "login.html", next="/", error=None)
        response = _redirect("/login")
        response.del_cookie(REVIEWER_COOKIE, path="/")
        return response

    # -- the queue ---------------------------------------------------------------------------------

    async def queue(self, request: web.Request) -> web.StreamResponse:
        """Counts, filters and a page of the queue in review order."""
        reviewer = self.require(request)
        filters = Filters.parse(request.query)
        offset = max(0, _int(request.query.get("offset"), 0))
        result = await self.service().queue(filters.queue, reviewer, offset=offset, limit=PAGE_SIZE)
        messages = [{"kind": "error", "text": p} for p in filters.problems]
        notice = NOTICES.get(request.query.get("done", ""))
        if notice:
            messages.append({"kind": "info", "text": notice})
        counts = result["counts"]
        options = {
            "attribute": _options(counts.get("attr", {}), filters.values.get("attribute")),
            "group": _options(counts.get("group", {}), filters.values.get("group")),
        }
        return self.render(
            request,
            "queue.html",
            result=result,
            counts=counts,
            filters=filters.values,
            options=options,
            messages=messages,
            offset=offset,
            limit=result["limit"],
            page_data={"filters": filters.values},
            title="Review queue",
        )

    async def start(self, request: web.Request) -> web.StreamResponse:
        """ "Start reviewing": claim the next item with the queue's filters and open it."""
        reviewer = self.require(request)
        filters = Filters.parse(await request.post())
        claimed = await self.service().next(reviewer, filters.queue)
        if claimed is None:
            return _redirect("/" + query(filters.values, done="empty"))
        return _redirect(f"/items/{segment(claimed['listing_id'])}" + query(filters.values))

    # -- one item ----------------------------------------------------------------------------------

    async def item(self, request: web.Request) -> web.StreamResponse:
        """The item page; opening it claims the lease (read-only when another reviewer holds it)."""
        reviewer = self.require(request)
        service = self.service()
        listing_id = request.match_info["listing_id"]
        filters = Filters.parse(request.query)
        try:
            data = await service.item(listing_id)
            holder, read_only, ttl_s = reviewer, False, float(self.host.settings.review.lease_ttl_s)
            try:
                ttl_s = float((await service.claim(listing_id, reviewer))["ttl_s"])
            except ReviewError as exc:
                if exc.code != "leased":
                    raise
                holder, read_only = await self.host.store.holder(listing_id) or "another reviewer", True
        except ReviewError as exc:
            if exc.code != "not_pending":
                raise
            history = await service.history(listing_id)
            return self.render(
                request,
                "gone.html",
                status=404,
                listing_id=listing_id,
                history=history,
                filters=filters.values,
                page_data={"filters": filters.values, "listing_id": listing_id},
                title=f"{listing_id}: not pending",
            )
        attributes = [self._attribute(data["item"].get("category_group"), a) for a in data["attributes"]]
        request_record = data["request"]
        page_data = {
            "listing_id": listing_id,
            "version": data["item"]["version"],
            "read_only": read_only,
            "holder": holder,
            "ttl_s": ttl_s,
            "filters": filters.values,
            "same_image": data["same_image"],
            "attributes": [
                {
                    "name": a["name"],
                    "candidates": [c["value"] for c in a["candidates"]],
                    "values": a["values"],
                    "multi_label": a["multi_label"],
                    "declared_values": a["declared_values"],
                }
                for a in attributes
            ],
        }
        messages = [{"kind": "error", "text": p} for p in filters.problems]
        if read_only:
            messages.append({"kind": "warn", "text": f"{holder} is reviewing this item: you see it read-only."})
        return self.render(
            request,
            "item.html",
            item=data["item"],
            request_record=request_record,
            category=" / ".join(str(p) for p in request_record.get("category_path") or []),
            attributes=attributes,
            accepted=data["accepted"],
            images=data["images"],
            history=data["history"],
            same_image=data["same_image"],
            holder=holder,
            read_only=read_only,
            filters=filters.values,
            messages=messages,
            page_data=page_data,
            title=f"{listing_id}: review",
        )

    def _attribute(self, group_name: str | None, entry: Mapping[str, Any]) -> dict[str, Any]:
        """One uncertain attribute as the item page shows it: keyed candidates, the declared value compared."""
        candidates = [
            {"key": n, "value": str(c["value"]), "confidence": float(c["confidence"])}
            for n, c in enumerate((entry.get("candidates") or [])[:MAX_KEYS], start=1)
        ]
        declared = entry.get("declared_value")
        declared_values: list[str] = []
        if declared:
            group = self.service().taxonomy.groups.get(group_name or "")
            attribute = group.attributes.get(str(entry["name"])) if group else None
            for raw in str(declared).split("|"):
                try:
                    declared_values.append(attribute.canonical(raw) if attribute else raw)
                except UnknownValueError:
                    continue
        top = candidates[0]["value"] if candidates else None
        return {
            "name": str(entry["name"]),
            "reason": entry.get("reason"),
            "conflict": bool(entry.get("conflict")),
            "threshold": entry.get("threshold"),
            "candidates": candidates,
            "values": [str(v) for v in entry.get("values") or []],
            "multi_label": bool(entry.get("multi_label")),
            "top": top,
            "declared": declared,
            "declared_values": [v for v in declared_values if v in (entry.get("values") or [])],
            "disagrees": bool(declared) and top not in declared_values,
        }

    # -- the bulk grid -----------------------------------------------------------------------------

    async def bulk(self, request: web.Request) -> web.StreamResponse:
        """Items whose every uncertain attribute only needs a confirmation, to accept many at once."""
        self.require(request)
        service = self.service()
        filters = Filters.parse(request.query)
        candidates = await service.bulk_candidates(filters.queue)
        items = {i.listing_id: i for i in await self.host.store.get_many([c["listing_id"] for c in candidates])}
        cards = []
        for candidate in candidates:
            item = items.get(candidate["listing_id"])
            confidences = {
                u["name"]: float(u["candidates"][0]["confidence"])
                for u in (item.uncertain if item else [])
                if u.get("candidates")
            }
            proposals = [
                {"name": name, "value": value, "confidence": confidences.get(name)}
                for name, value in candidate["proposal"].items()
            ]
            cards.append({**candidate, "proposals": proposals})
        return self.render(
            request,
            "bulk.html",
            cards=cards,
            filters=filters.values,
            bar=self.host.settings.review.bulk_min_confidence,
            messages=[{"kind": "error", "text": p} for p in filters.problems],
            page_data={
                "filters": filters.values,
                "items": [{"listing_id": c["listing_id"], "version": c["version"]} for c in cards],
            },
            title="Bulk accept",
        )


def add_pages(app: web.Application, review: ReviewHost) -> None:
    """Register the HTML pages and the static files on the review service's web app."""
    pages = Pages(review)
    page = pages.page
    app.router.add_get("/", page(pages.queue))
    app.router.add_get("/login", page(pages.login_form))
    app.router.add_post("/login", page(pages.login))
    app.router.add_get("/logout", page(pages.logout))
    app.router.add_post("/next", page(pages.start))
    app.router.add_get("/items/{listing_id}", page(pages.item))
    app.router.add_get("/bulk", page(pages.bulk))
    app.router.add_static("/static/", STATIC, name="static")


def _options(counts: Mapping[str, int], selected: str | None) -> list[tuple[str, int]]:
    """Filter choices: what the queue holds (with counts), plus the selected one even when it holds none."""
    options = sorted(counts.items())
    if selected and selected not in counts:
        options.append((selected, 0))
    return options


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _redirect(location: str) -> web.Response:
    """A 303 to ``location`` (after a form post, the browser GETs it)."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})
