"""The obvious faust-streaming tagger, the baseline ``swatch bench baseline`` measures the worker against.

What a competent engineer writes first: one agent on the listings topic that, per event, decodes
it, downloads each image with aiohttp, preprocesses it, runs the model on it alone (batch of one),
decides the attributes with Swatch's own rules and sends the attribute event; no cache, no
batching, no thread pools, Faust's default agent concurrency. It uses the same codec, model and
runtime as the worker (``SWATCH_MODEL_*``), so the difference measured is the pipeline's design.
A listing that fails anywhere gets a raw record on the dead-letter topic, so every event has an
output to count. ``/readyz`` on ``SWATCH_WORKER_METRICS_PORT`` answers 200 once partitions are
assigned.

Run as ``python -m streams.perf.naive`` with the worker's ``SWATCH_*`` variables.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import faust

from streams.codec import Codec, now_millis
from streams.combine import ImageOutcome, decide, resolve_thresholds
from streams.config import load_settings
from streams.events import ListingContext, attribute_event
from tagger.predict import Predictor

logger = logging.getLogger(__name__)


def build() -> faust.App:
    """The app, from the ``SWATCH_*`` environment."""
    settings = load_settings()
    if settings.model.threads is not None:
        import torch  # noqa: PLC0415

        torch.set_num_threads(settings.model.threads)
    predictor = Predictor.load(settings.model.dir, settings.model.device, settings.model.runtime)
    taxonomy = predictor.taxonomy
    thresholds = resolve_thresholds(taxonomy, predictor.card.thresholds, dict(settings.model.thresholds))
    codec = Codec()
    topics = settings.topics
    app = faust.App(
        settings.kafka.group_id,
        broker=[f"kafka://{server}" for server in str(settings.kafka.bootstrap).split(",")],
        store="memory://",
        web_enabled=True,
        web_bind="127.0.0.1",
        web_port=settings.worker.metrics_port,
        web_in_thread=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=min(3.0, settings.kafka.session_timeout_ms / 3000),
        autodiscover=False,
        logging_config=None,
    )
    listings = app.topic(topics.listings, value_type=bytes, value_serializer="raw", key_serializer="raw")
    attributes = app.topic(topics.attributes, value_type=bytes, value_serializer="raw", key_serializer="raw")
    dlq = app.topic(topics.dlq, value_type=bytes, value_serializer="raw", key_serializer="raw")
    state: dict[str, Any] = {}

    @app.agent(listings)
    async def tag(stream: Any) -> AsyncIterator[None]:
        session = state.setdefault("session", aiohttp.ClientSession())
        async for key, value in stream.items():
            try:
                listing = codec.decode("listing_event", value)
                images = []
                for url in listing["image_urls"]:
                    async with session.get(url) as response:
                        response.raise_for_status()
                        data = await response.read()
                    tensor = predictor.preprocess(data)
                    probabilities = predictor.probabilities(tensor.unsqueeze(0))[0]
                    digest = hashlib.sha256(data).hexdigest()
                    images.append(ImageOutcome(url, "TAGGED", digest, None, probabilities))
                decision = decide(
                    taxonomy,
                    listing["category_path"],
                    images,
                    thresholds,
                    listing.get("declared_attributes") or {},
                    fresh=True,
                )
                context = ListingContext.of(listing, now_millis())
                event = attribute_event(
                    context, predictor.model_id, decision, images, review_pending=decision.review_pending
                )
                await attributes.send(key=key, value=codec.encode("attribute_event", event, topic=topics.attributes))
            except Exception as exc:
                logger.warning("listing failed: %s: %s", type(exc).__name__, exc)
                await dlq.send(key=key, value=f"{type(exc).__name__}: {exc}".encode())
            yield None

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        assigned = app.consumer.assignment() if app.consumer is not None else set()
        return web.json({"assigned": len(assigned)}, status=200 if assigned else 503)

    return app


def main() -> None:
    """Run the baseline until SIGTERM."""
    app = build()
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
