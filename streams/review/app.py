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
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, cast

import faust
import redis.asyncio as aioredis
from aiohttp import web
from faust.web.drivers.aiohttp import Web as FaustWeb

from streams.cache import version_key_prefix
from streams.codec import Codec
from streams.config import Settings
from streams.errors import DecodeError, SwatchError, TransientError
from streams.events import Original, dead_letter, error_text, qualified_name
from streams.review.api import JsonApi
from streams.review.items import ReviewItem
from streams.review.metrics import ReviewMetrics
from streams.review.pages import add_pages
from streams.review.publish import Publisher, PublishError
from streams.review.service import ReviewService
from streams.review.store import ReviewStore
from streams.review.visuals import Visuals
from tagger.taxonomy import Taxonomy, load_taxonomy

if TYPE_CHECKING:
    from tagger.predict import Predictor

logger = logging.getLogger(__name__)

REVIEWER_COOKIE = "swatch_reviewer"
RETRY_FIRST_S = 0.5  # first wait of an event whose registry, Redis or broker is away
RETRY_MAX_S = 10.0
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
        self.redis = aioredis.from_url(self.redis_url, socket_timeout=5)
        prefix = f"{settings.review.key_prefix}{settings.topics.review}:"
        published = version_key_prefix(settings.redis.version_prefix, settings.topics.attributes)
        self.store = ReviewStore(self.redis, prefix, published)  # reads the worker's version store
        self.publisher: Publisher | None = None
        self.service: ReviewService | None = None
        self.visuals = Visuals(settings, self.store, predictor)
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
            datadir=_datadir(s.review.group_id),
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
        web_app = cast("_ReviewWeb", app.web).web_app
        JsonApi(self).add_routes(web_app)
        add_pages(web_app, self)
        return app

    async def start(self) -> None:
        """Open the producer, the image fetcher and the service (the faust app calls this on start-up)."""
        async with self._starting:
            if self.service is None:
                await self._start()

    async def _start(self) -> None:
        self.publisher = Publisher(self.settings, self.codec, self.bootstrap)
        await self.visuals.start()
        taxonomy = await self._taxonomy()
        self.service = ReviewService(self.settings, self.store, self.publisher, taxonomy, self.metrics)
        await self.service.refresh_depth()

    async def _taxonomy(self) -> Taxonomy:
        """The taxonomy decisions are checked against: the served model's (SWATCH_MODEL_DIR), as the worker's."""
        if self.visuals.predictor is not None:
            return self.visuals.predictor.taxonomy
        if self.settings.model.dir is None:
            return load_taxonomy()  # the demo model's own (tests/tagger/test_demo_model.py checks they agree)
        return await asyncio.to_thread(_card_taxonomy, self.settings.model.dir)

    async def close(self) -> None:
        """Release the producer, fetcher and Redis client."""
        if self.publisher is not None:
            await asyncio.to_thread(self.publisher.close)
            self.publisher = None
        await self.visuals.close()
        await self.redis.aclose()

    async def guarded(self, handle: Callable[[Any], Awaitable[None]], event: Any) -> None:
        """Apply one event: every event ends applied or as a dead letter; the agent never crashes past one.

        An undecodable or invalid event is dead-lettered; a bug (any other exception) too, as
        ``internal_error``. A registry, Redis or broker that is away is waited for: the event is
        retried with backoff and the agent does not move on (Faust would skip an event it crashed on).
        """
        message = event.message
        delay = RETRY_FIRST_S
        while True:
            try:
                await self.start()
                await self._apply_or_dead_letter(handle, event)
                return
            except (TransientError, PublishError, aioredis.RedisError, OSError) as exc:
                self.metrics.retries.labels(message.topic).inc()
                logger.warning(
                    "%s[%d]@%d waits (retry in %.1f s): %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _apply_or_dead_letter(self, handle: Callable[[Any], Awaitable[None]], event: Any) -> None:
        message = event.message
        try:
            await handle(event)
        except DecodeError as exc:
            await self._dead_letter(message, exc.reason, exc)
        except (KeyError, TypeError, ValueError) as exc:
            await self._dead_letter(message, "invalid_event", exc)
        except (TransientError, PublishError, aioredis.RedisError, OSError):
            raise
        except Exception as exc:  # a bug must not lose the event: dead-letter it and go on
            logger.exception("internal error on %s[%d]@%d", message.topic, message.partition, message.offset)
            await self._dead_letter(message, "internal_error", exc)

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
            except Exception:  # a bug must not end the task unseen: expiries and gauges would freeze
                logger.exception("lease sweep failed; retrying in %.0f s", SWEEP_INTERVAL_S)
                self.metrics.errors.labels("sweep").inc()

    # -- web -------------------------------------------------------------------------------------

    def reviewer_of(self, request: web.Request) -> str | None:
        """The reviewer: the proxy's header behind a proxy; else that header or the login cookie."""
        header = request.headers.get(self.settings.review.reviewer_header)
        if self.settings.review.behind_proxy:
            return header
        return header or request.cookies.get(REVIEWER_COOKIE)


def _card_taxonomy(model_dir: Path) -> Taxonomy:
    from tagger.card import read_card  # imports torch (seconds): only when a model directory is configured

    return read_card(model_dir).taxonomy_obj()


def _datadir(group_id: str) -> str:
    """Faust's data folder: nothing durable is kept there (state is in Redis), so a temporary one.

    Faust's default is ``<app id>-data`` in the working directory, which litters checkouts and
    fails on a read-only root filesystem; ``FAUST_DATADIR`` (the container image sets it) wins.
    """
    return os.environ.get("FAUST_DATADIR") or str(Path(tempfile.gettempdir()) / f"swatch-review-{group_id}")


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
