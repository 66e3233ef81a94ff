"""The JSON API (for teams that script reviewing), the probes and /metrics of `swatch review`.

Every call names the reviewer as the pages do (see :meth:`streams.review.app.ReviewApp.reviewer_of`);
refusals are ``{"error", "code"}`` with a 4xx status, and a 503 means nothing was decided and the
same request can be sent again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from streams.review.host import ReviewHost
from streams.review.publish import PublishError
from streams.review.rules import ReviewError, check_reviewer
from streams.review.service import ReviewService
from streams.review.store import QueueFilter


class JsonApi:
    """The API's handlers over the host's service."""

    def __init__(self, host: ReviewHost) -> None:
        self.host = host

    def _service(self) -> ReviewService:
        if self.host.service is None:
            raise ReviewError(503, "starting", "the review service is still starting")
        return self.host.service

    def add_routes(self, app: web.Application) -> None:
        """Register the probes, /metrics and the JSON API."""
        api = self._api
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/queue", api(self._queue))
        app.router.add_get("/api/counts", api(self._counts))
        app.router.add_get("/api/taxonomy", api(self._taxonomy_json))
        app.router.add_post("/api/next", api(self._next))
        app.router.add_get("/api/bulk", api(self._bulk))
        app.router.add_post("/api/bulk/accept", api(self._bulk_accept))
        app.router.add_post("/api/undo", api(self._undo))
        app.router.add_get("/api/items/{listing_id}", api(self._item))
        app.router.add_get("/api/items/{listing_id}/history", api(self._history))
        app.router.add_post("/api/items/{listing_id}/claim", api(self._claim))
        app.router.add_post("/api/items/{listing_id}/heartbeat", api(self._claim))
        app.router.add_post("/api/items/{listing_id}/release", api(self._release))
        app.router.add_post("/api/items/{listing_id}/skip", api(self._skip))
        app.router.add_post("/api/items/{listing_id}/accept", api(self._accept))
        app.router.add_post("/api/items/{listing_id}/decision", api(self._decide))
        app.router.add_get("/api/items/{listing_id}/images/{index}", self._image)
        app.router.add_get("/api/items/{listing_id}/gradcam/{attribute}", self._gradcam)

    def _api(
        self, handler: Callable[[web.Request], Awaitable[Any]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def wrapped(request: web.Request) -> web.Response:
            if self.host.settings.review.behind_proxy and not self.host.reviewer_of(request):
                return _error(
                    401, "no_reviewer", f"the auth proxy must set {self.host.settings.review.reviewer_header}"
                )
            try:
                return web.json_response(await handler(request))
            except ReviewError as exc:
                return _error(exc.status, exc.code, str(exc))
            except PublishError as exc:
                self.host.metrics.errors.labels(handler.__name__.strip("_")).inc()
                return _error(503, "publish_failed", f"{exc}; nothing was decided, retry with the same decision_id")
            except (aioredis.RedisError, OSError) as exc:
                self.host.metrics.errors.labels(handler.__name__.strip("_")).inc()
                return _error(503, "redis_unavailable", f"the review queue is unavailable: {exc}")

        return wrapped

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except ValueError as exc:
            raise ReviewError(400, "bad_json", f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ReviewError(400, "bad_json", "the body is a JSON object")
        return body

    def _me(self, request: web.Request) -> str:
        return check_reviewer(self.host.reviewer_of(request))

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            ready = self.host.service is not None and bool(await self.host.redis.ping())
        except (aioredis.RedisError, OSError):
            ready = False
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.host.metrics.render(), content_type="text/plain")

    async def _queue(self, request: web.Request) -> Any:
        q = request.query
        return await self._service().queue(
            queue_filter(q),
            self.host.reviewer_of(request),
            offset=_int(q.get("offset"), 0),
            limit=_int(q.get("limit"), 50),
        )

    async def _counts(self, request: web.Request) -> Any:
        return {"depth": await self.host.store.depth(), "counts": await self.host.store.counts()}

    async def _taxonomy_json(self, request: web.Request) -> Any:
        return self._service().taxonomy.to_dict()

    async def _next(self, request: web.Request) -> Any:
        body = await self._body(request)
        claimed = await self._service().next(self._me(request), queue_filter(body))
        if claimed is None:
            raise ReviewError(404, "queue_empty", "nothing left to review with these filters")
        return claimed

    async def _bulk(self, request: web.Request) -> Any:
        return {"items": await self._service().bulk_candidates(queue_filter(request.query))}

    async def _bulk_accept(self, request: web.Request) -> Any:
        body = await self._body(request)
        entries = body.get("items")
        if not isinstance(entries, list):
            raise ReviewError(422, "no_items", "items is a list of {listing_id, version, decision_id}")
        return {"results": await self._service().bulk_accept(self._me(request), entries)}

    async def _undo(self, request: web.Request) -> Any:
        return await self._service().undo(self._me(request))

    async def _item(self, request: web.Request) -> Any:
        return await self._service().item(request.match_info["listing_id"])

    async def _history(self, request: web.Request) -> Any:
        return {"history": await self._service().history(request.match_info["listing_id"])}

    async def _claim(self, request: web.Request) -> Any:
        return await self._service().claim(request.match_info["listing_id"], self._me(request))

    async def _release(self, request: web.Request) -> Any:
        return await self._service().release(request.match_info["listing_id"], self._me(request))

    async def _skip(self, request: web.Request) -> Any:
        return await self._service().skip(request.match_info["listing_id"], self._me(request))

    async def _accept(self, request: web.Request) -> Any:
        body = await self._body(request)
        return await self._service().accept(request.match_info["listing_id"], self._me(request), body)

    async def _decide(self, request: web.Request) -> Any:
        body = await self._body(request)
        return await self._service().decide(request.match_info["listing_id"], self._me(request), body)

    async def _image(self, request: web.Request) -> web.StreamResponse:
        try:
            data, kind = await self.host.visuals.image_bytes(
                request.match_info["listing_id"], _int(request.match_info["index"], -1)
            )
        except ReviewError as exc:
            return _error(exc.status, exc.code, str(exc))
        return web.Response(body=data, content_type=kind, headers={"Cache-Control": "private, max-age=300"})

    async def _gradcam(self, request: web.Request) -> web.StreamResponse:
        listing_id = request.match_info["listing_id"]
        attribute = request.match_info["attribute"].removesuffix(".png")
        index = _int(request.query.get("image"), 0)
        try:
            png = await self.host.visuals.gradcam_png(listing_id, attribute, index, request.query.get("value"))
        except ReviewError as exc:
            return _error(exc.status, exc.code, str(exc))
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "private, max-age=300"})


def queue_filter(source: Any) -> QueueFilter:
    """A queue filter from query parameters or a JSON body (``reason``, ``attribute``, ``group``, confidences)."""

    def text(name: str) -> str | None:
        value = source.get(name)
        return str(value) if value not in (None, "") else None

    def number(name: str) -> float | None:
        value = text(name)
        try:
            return None if value is None else float(value)
        except ValueError as exc:
            raise ReviewError(400, "bad_filter", f"{name} must be a number, not {value!r}") from exc

    return QueueFilter(
        reason=text("reason"),
        attribute=text("attribute"),
        group=text("group"),
        min_confidence=number("min_confidence"),
        max_confidence=number("max_confidence"),
    )


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)
