"""`swatch review`: a faust-streaming app that keeps the review queue, and its web UI and JSON API.

Faust does what it is solid at here: a consumer group reading ``listing-attributes-review`` (new
items) and ``listings`` (newer versions and deletes take items out), offsets committed after each
event is applied, and the aiohttp web server it runs in the same process. The queue state lives in
Redis (:mod:`streams.review.store`), not a Faust Table: see that module for the measurement.

Every event ends as a queue change, a counted no-op (an older version), or a dead letter with a
reason (undecodable or invalid); the agent never stops on one.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, cast

import faust
import redis.asyncio as aioredis
from aiohttp import web
from faust.web.drivers.aiohttp import Web as FaustWeb

from streams.codec import Codec
from streams.config import Settings
from streams.errors import DecodeError, SwatchError
from streams.events import Original, dead_letter, error_text, qualified_name
from streams.images import ImageFetcher
from streams.review.items import ReviewItem
from streams.review.metrics import ReviewMetrics
from streams.review.pages import add_pages
from streams.review.publish import Publisher, PublishError
from streams.review.service import ReviewError, ReviewService, check_reviewer
from streams.review.store import QueueFilter, ReviewStore
from tagger.errors import TaggerError
from tagger.taxonomy import Taxonomy, load_taxonomy

if TYPE_CHECKING:
    from tagger.predict import Predictor

logger = logging.getLogger(__name__)

REVIEWER_COOKIE = "swatch_reviewer"
SWEEP_INTERVAL_S = 2.0  # lease expiries counted and queue gauges refreshed this often
IMAGE_CACHE = 256


class ProxyRequiredError(SwatchError):
    """The service would listen beyond loopback without an authenticating proxy declared in front."""


def check_bind(settings: Settings) -> None:
    """Refuse a non-loopback address unless SWATCH_REVIEW_BEHIND_PROXY says a proxy authenticates reviewers."""
    host = settings.review.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not settings.review.behind_proxy:
        raise ProxyRequiredError(
            f"the review service authenticates no one: listening on {host} needs an authenticating proxy in front "
            "that sets the reviewer header, declared with SWATCH_REVIEW_BEHIND_PROXY=true"
        )


class _ReviewWeb(FaustWeb):
    """Faust's aiohttp driver without its index page at ``/`` (the queue lives there)."""

    production_blueprints: ClassVar[Any] = ()


class _FaustApp(faust.App):
    """Faust's app, with the review service's start and stop hooked into its own."""

    hooks: tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]] | None = None

    def _new_web(self) -> Any:
        return _ReviewWeb(self)

    async def on_start(self) -> None:
        await super().on_start()
        if self.hooks:
            await self.hooks[0]()

    async def on_stop(self) -> None:
        if self.hooks:
            await self.hooks[1]()
        await super().on_stop()


class ReviewApp:
    """The faust app, its agents, the service and the web routes, wired from settings."""

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap: str | None = None,
        redis_url: str | None = None,
        predictor: Predictor | None = None,
    ) -> None:
        check_bind(settings)
        self.settings = settings
        self.bootstrap = bootstrap or settings.kafka.bootstrap
        self.redis_url = redis_url or settings.redis.url
        if not self.bootstrap or not self.redis_url:
            raise SwatchError(
                "the review service needs Kafka and Redis: set SWATCH_KAFKA_BOOTSTRAP and SWATCH_REDIS_URL"
            )
        self.metrics = ReviewMetrics()
        self.codec = Codec.from_settings(settings.registry)
        self.predictor = predictor
        self._predictor_loaded = predictor is not None
        self._images: dict[tuple[str, int], tuple[bytes, str]] = {}
        self._gradcams: dict[tuple[str, str, int], bytes] = {}
        self.redis = aioredis.from_url(self.redis_url, socket_timeout=5)
        prefix = f"{settings.review.key_prefix}{settings.topics.review}:"
        published = f"{settings.redis.version_prefix}{settings.topics.attributes}:"  # the worker's version store
        self.store = ReviewStore(self.redis, prefix, published)
        self.publisher: Publisher | None = None
        self.service: ReviewService | None = None
        self.fetcher = ImageFetcher(settings.fetch)
        self._starting = asyncio.Lock()
        self.faust = self._faust_app()

    # -- faust -------------------------------------------------------------------------------------

    def _faust_app(self) -> faust.App:
        s = self.settings
        app = _FaustApp(
            s.review.group_id,
            broker=[f"kafka://{server}" for server in str(self.bootstrap).split(",")],
            broker_credentials=_credentials(s),
            store="memory://",
            web_enabled=True,
            web_bind=s.review.host,
            web_port=s.review.port,
            web_in_thread=False,
            web_router_enabled=False,
            web_tables_enabled=False,
            web_stats_enabled=False,
            web_graph_enabled=False,
            topic_disable_leader=True,
            topic_allow_declare=False,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=s.kafka.session_timeout_ms / 1000,
            broker_heartbeat_interval=min(3.0, s.kafka.session_timeout_ms / 3000),
            autodiscover=False,
            logging_config=None,
        )
        reviews = app.topic(s.topics.review, value_type=bytes, value_serializer="raw", key_serializer="raw")
        listings = app.topic(s.topics.listings, value_type=bytes, value_serializer="raw", key_serializer="raw")

        async def on_reviews(stream: Any) -> AsyncIterator[None]:
            async for event in stream.events():
                await self.guarded(self.on_review, event)
                yield None

        async def on_listings(stream: Any) -> AsyncIterator[None]:
            async for event in stream.events():
                await self.guarded(self.on_listing, event)
                yield None

        app.agent(reviews, name="review-requests")(on_reviews)
        app.agent(listings, name="listing-versions")(on_listings)
        app.task(self._sweeper)
        app.hooks = (self.start, self.close)
        self._routes(cast("_ReviewWeb", app.web).web_app)
        return app

    async def start(self) -> None:
        """Open the producer, the image fetcher and the service (the faust app calls this on start-up)."""
        async with self._starting:
            if self.service is None:
                await self._start()

    async def _start(self) -> None:
        self.publisher = Publisher(self.settings, self.codec, self.bootstrap)
        await self.fetcher.start()
        taxonomy = self._taxonomy()
        self.service = ReviewService(self.settings, self.store, self.publisher, taxonomy, self.metrics)
        await self.service.refresh_depth()

    def _taxonomy(self) -> Taxonomy:
        if self.predictor is not None:
            return self.predictor.taxonomy
        return load_taxonomy()

    async def close(self) -> None:
        """Release the producer, fetcher and Redis client."""
        if self.publisher is not None:
            await asyncio.to_thread(self.publisher.close)
            self.publisher = None
        await self.fetcher.close()
        await self.redis.aclose()

    async def guarded(self, handle: Callable[[Any], Awaitable[None]], event: Any) -> None:
        """Apply one event; an undecodable or invalid one becomes a dead letter, never a stopped agent."""
        message = event.message
        await self.start()
        try:
            await handle(event)
        except DecodeError as exc:
            await self._dead_letter(message, exc.reason, exc)
        except (KeyError, TypeError, ValueError) as exc:
            await self._dead_letter(message, "invalid_event", exc)

    async def on_review(self, event: Any) -> None:
        """A review request: queue it (latest version per listing) unless a newer version is known."""
        record = await asyncio.to_thread(self.codec.decode, "review_request", event.value)
        item = ReviewItem.of(record)
        stored = await self.store.upsert(item)
        self.metrics.requests.labels("queued" if stored else "superseded").inc()

    async def on_listing(self, event: Any) -> None:
        """A listing event: a newer version supersedes the pending item, a delete removes it.

        Most listings have nothing pending: those cost one Redis EXISTS and are not decoded (a late
        review request for an older version is refused by the worker's version store instead).
        """
        key = event.message.key
        if event.value is None or not key or not await self.store.pending(key.decode("utf-8", "replace")):
            return
        record = await asyncio.to_thread(self.codec.decode, "listing_event", event.value)
        deleted = record.get("operation") == "DELETE"
        if await self.store.supersede(record["listing_id"], int(record["listing_version"]), deleted=deleted):
            self.metrics.removed.labels("deleted" if deleted else "newer").inc()

    async def _dead_letter(self, message: Any, reason: str, exc: BaseException) -> None:
        self.metrics.invalid.labels(message.topic).inc()
        logger.warning("dead-lettering %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc)
        original = Original(
            message.topic, message.partition, message.offset, message.key, message.value, timestamp=None
        )
        letter = dead_letter(
            original, reason, qualified_name(exc), error_text(exc), worker_id=f"review:{self.settings.review.group_id}"
        )
        if self.publisher is None:
            raise SwatchError("the review service is not started")
        await self.publisher.send(
            self.settings.topics.dlq, "dead_letter", str(message.key or b"", "utf-8", "replace"), letter
        )

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            if self.service is None:
                continue
            try:
                await self.service.sweep()
                await self.service.refresh_depth()
            except (aioredis.RedisError, OSError) as exc:
                logger.warning("lease sweep failed: %s", exc)

    # -- web -------------------------------------------------------------------------------------

    def reviewer_of(self, request: web.Request) -> str | None:
        """The reviewer: the proxy's header behind a proxy; else that header or the login cookie."""
        header = request.headers.get(self.settings.review.reviewer_header)
        if self.settings.review.behind_proxy:
            return header
        return header or request.cookies.get(REVIEWER_COOKIE)

    def _service(self) -> ReviewService:
        if self.service is None:
            raise ReviewError(503, "starting", "the review service is still starting")
        return self.service

    def _routes(self, app: web.Application) -> None:
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
        add_pages(app, self)

    def _api(
        self, handler: Callable[[web.Request], Awaitable[Any]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def wrapped(request: web.Request) -> web.Response:
            if self.settings.review.behind_proxy and not self.reviewer_of(request):
                return _error(401, "no_reviewer", f"the auth proxy must set {self.settings.review.reviewer_header}")
            try:
                return web.json_response(await handler(request))
            except ReviewError as exc:
                return _error(exc.status, exc.code, str(exc))
            except PublishError as exc:
                self.metrics.errors.labels(handler.__name__.strip("_")).inc()
                return _error(503, "publish_failed", f"{exc}; nothing was decided, retry with the same decision_id")
            except (aioredis.RedisError, OSError) as exc:
                self.metrics.errors.labels(handler.__name__.strip("_")).inc()
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
        return check_reviewer(self.reviewer_of(request))

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            ready = self.service is not None and bool(await self.redis.ping())
        except (aioredis.RedisError, OSError):
            ready = False
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain")

    async def _queue(self, request: web.Request) -> Any:
        q = request.query
        return await self._service().queue(
            queue_filter(q), self.reviewer_of(request), offset=_int(q.get("offset"), 0), limit=_int(q.get("limit"), 50)
        )

    async def _counts(self, request: web.Request) -> Any:
        return {"depth": await self.store.depth(), "counts": await self.store.counts()}

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

    # -- images and Grad-CAM ---------------------------------------------------------------------

    async def image_bytes(self, listing_id: str, index: int) -> tuple[bytes, str]:
        """An image of a pending listing, fetched through the SSRF-safe fetcher (the browser never fetches it)."""
        key = (listing_id, index)
        if key in self._images:
            return self._images[key]
        item = await self.store.get(listing_id)
        if item is None or not 0 <= index < len(item.images):
            raise ReviewError(404, "no_image", f"{listing_id} has no image {index}")
        result = await self.fetcher.fetch(item.images[index]["url"])
        if result.data is None:
            raise ReviewError(502, "fetch_failed", f"{result.outcome.value}: {result.reason}")
        kind = (result.image_format or "octet-stream").lower()
        answer = (result.data, f"image/{kind}" if result.image_format else "application/octet-stream")
        self._images[key] = answer
        while len(self._images) > IMAGE_CACHE:
            self._images.pop(next(iter(self._images)))
        return answer

    async def _image(self, request: web.Request) -> web.StreamResponse:
        try:
            data, kind = await self.image_bytes(request.match_info["listing_id"], _int(request.match_info["index"], -1))
        except ReviewError as exc:
            return _error(exc.status, exc.code, str(exc))
        return web.Response(body=data, content_type=kind, headers={"Cache-Control": "private, max-age=300"})

    async def _gradcam(self, request: web.Request) -> web.StreamResponse:
        listing_id = request.match_info["listing_id"]
        attribute = request.match_info["attribute"].removesuffix(".png")
        index = _int(request.query.get("image"), 0)
        try:
            png = await self.gradcam_png(listing_id, attribute, index, request.query.get("value"))
        except ReviewError as exc:
            return _error(exc.status, exc.code, str(exc))
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    async def gradcam_png(self, listing_id: str, attribute: str, index: int, value: str | None = None) -> bytes:
        """The Grad-CAM overlay of ``attribute`` on the listing's image (the model under review must be loaded)."""
        key = (listing_id, f"{attribute}={value}", index)
        if key in self._gradcams:
            return self._gradcams[key]
        if not self.settings.review.explain:
            raise ReviewError(404, "explain_off", "Grad-CAM is switched off (SWATCH_REVIEW_EXPLAIN=false)")
        item = await self.store.get(listing_id)
        if item is None:
            raise ReviewError(404, "not_pending", f"{listing_id} has no pending review")
        predictor = await self._load_predictor()
        if predictor is None or predictor.model_id != item.model_id:
            loaded = predictor.model_id if predictor else "none"
            raise ReviewError(404, "model_not_loaded", f"model {item.model_id} is not loaded here ({loaded} is)")
        data, _ = await self.image_bytes(listing_id, index)
        png = await asyncio.to_thread(_explain_png, predictor, data, item.group, attribute, value)
        self._gradcams[key] = png
        while len(self._gradcams) > IMAGE_CACHE:
            self._gradcams.pop(next(iter(self._gradcams)))
        return png

    async def _load_predictor(self) -> Predictor | None:
        if not self._predictor_loaded:
            self._predictor_loaded = True
            from tagger.predict import Predictor  # torch and Grad-CAM load only when an overlay is asked for

            try:
                self.predictor = await asyncio.to_thread(
                    Predictor.load, self.settings.model.dir, self.settings.model.device
                )
            except (SwatchError, OSError, RuntimeError) as exc:
                logger.warning("no Grad-CAM: the model could not be loaded: %s", exc)
        return self.predictor


def _explain_png(predictor: Predictor, data: bytes, group: str | None, attribute: str, value: str | None) -> bytes:
    from tagger.explain import explain

    head = f"{group}.{attribute}" if group else attribute
    try:
        [explanation] = explain(predictor, data, [head], group=group, value=value)
    except (TaggerError, ValueError) as exc:
        raise ReviewError(422, "explain_failed", str(exc)) from exc
    out = io.BytesIO()
    explanation.overlay().save(out, "PNG")
    return out.getvalue()


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


def _credentials(settings: Settings) -> Any:
    kafka = settings.kafka
    if kafka.security_protocol == "PLAINTEXT":
        return None
    context = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=kafka.ssl_ca_location)
        if kafka.ssl_certificate_location:
            password = kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
            context.load_cert_chain(kafka.ssl_certificate_location, kafka.ssl_key_location, password)
    if kafka.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        return faust.SASLCredentials(
            username=kafka.sasl_username or "",
            password=password,
            mechanism=kafka.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


def run(settings: Settings, *, bootstrap: str | None = None, redis_url: str | None = None) -> NoReturn:
    """Run the review service until SIGTERM or Ctrl-C, then exit the process (Faust's worker does)."""
    review = ReviewApp(settings, bootstrap=bootstrap, redis_url=redis_url)
    worker = faust.Worker(review.faust, loglevel=settings.log.level, quiet=True)
    worker.execute_from_commandline()
