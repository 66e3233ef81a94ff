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

The handlers and routes are here; the templates' environment, filters and helpers, the security
headers and the queue-filter parsing are in :mod:`streams.review.pages_render`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from streams.review.host import ReviewHost
from streams.review.pages_render import SECURITY_HEADERS, STATIC, Filters, environment, query, safe_next, segment
from streams.review.rules import ReviewError, check_reviewer
from streams.review.service import ReviewService
from tagger.taxonomy import UnknownValueError

logger = logging.getLogger(__name__)

REVIEWER_COOKIE = "swatch_reviewer"  # the cookie ReviewApp.reviewer_of reads (app.REVIEWER_COOKIE)
COOKIE_MAX_AGE_S = 30 * 24 * 3600
PAGE_SIZE = 50
MAX_KEYS = 9  # candidates reachable with the number keys 1-9

NOTICES = {"empty": "Nothing left to review with these filters."}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
