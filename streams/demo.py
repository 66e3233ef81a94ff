"""`swatch demo` for this stage of Swatch: a smoke run of the foundation, not of tagging.

It starts (or uses the configured) Kafka and Redis, creates the topics, sends one listing event
through the broker and back through the codec, and round-trips a cache entry through Redis. The
streaming worker that tags listings is not built yet, so nothing here claims to tag.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from streams.codec import Codec, listing_event_id, now_millis, to_millis
from streams.config import Settings
from streams.embedded import services
from streams.errors import SwatchError
from streams.kafka import admin_config, consumer_config, producer_config
from streams.topics import create_topics, topic_specs

Report = Callable[[str, str], None]


@dataclass
class DemoSummary:
    """What the smoke demo did, step by step, and where."""

    kafka_bootstrap: str = ""
    redis_url: str = ""
    embedded: tuple[str, ...] = ()
    steps: list[dict[str, Any]] = field(default_factory=list)
    tagged: int = 0  # the worker does not exist yet; kept explicit so nobody reads a count into it


def sample_listing(listing_id: str = "demo-listing-1", version: int = 1) -> dict[str, Any]:
    """A realistic listing event record."""
    return {
        "schema_version": 1,
        "event_id": listing_event_id(listing_id, version),
        "listing_id": listing_id,
        "listing_version": version,
        "merchant_id": "demo-merchant",
        "operation": "UPSERT",
        "category_path": ["apparel", "dresses"],
        "title": "Floral midi dress with short sleeves",
        "image_urls": ["https://images.example.com/demo/dress-front.jpg"],
        "declared_attributes": {"colour": ["navy"], "sleeve_type": ["short"]},
        "event_time": now_millis(),
    }


def round_trip_listing(
    settings: Settings, bootstrap: str, codec: Codec, timeout_s: float = 30.0
) -> tuple[dict[str, Any], Message]:
    """Produce one listing event, read it back from its exact offset, and decode it."""
    record = sample_listing()
    topic = settings.topics.listings
    value = codec.encode("listing_event", record, topic=topic)
    producer = Producer(producer_config(settings.kafka, bootstrap))
    reports: list[tuple[Any, Message]] = []
    producer.produce(
        topic, key=record["listing_id"].encode(), value=value, on_delivery=lambda err, msg: reports.append((err, msg))
    )
    if producer.flush(timeout_s) or not reports:
        raise SwatchError(f"the broker did not acknowledge the listing event within {timeout_s:.0f}s")
    error, sent = reports[0]
    if error is not None or sent.partition() is None or sent.offset() is None:
        raise SwatchError(f"the broker refused the listing event: {error}")
    # Assign the exact partition and offset: no group join needed for a one-off read.
    consumer = Consumer(consumer_config(settings.kafka, f"swatch-demo-{uuid.uuid4().hex[:8]}", bootstrap))
    try:
        consumer.assign([TopicPartition(topic, sent.partition() or 0, sent.offset() or 0)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise SwatchError(f"consuming {topic}: {msg.error()}")
            decoded = codec.decode("listing_event", msg.value())
            if {**decoded, "event_time": to_millis(decoded["event_time"])} != record:
                raise SwatchError(f"the listing event changed on its way through {topic}: {decoded}")
            return decoded, msg
    finally:
        consumer.close()
    raise SwatchError(f"the listing event did not come back from {topic} within {timeout_s:.0f}s")


def round_trip_cache(settings: Settings, url: str, payload: bytes) -> tuple[str, int]:
    """Store a value under a content-hash key with the cache TTL, read it back, return key and TTL."""
    key = f"{settings.redis.key_prefix}demo:{hashlib.sha256(payload).hexdigest()}"
    timeout = settings.redis.timeout_ms / 1000
    with redis.Redis.from_url(url, socket_timeout=max(timeout, 1.0)) as client:
        client.set(key, payload, ex=settings.redis.ttl_s)
        if client.get(key) != payload:
            raise SwatchError(f"Redis at {url} returned a different value for {key}")
        return key, int(client.ttl(key))


def run_demo(settings: Settings, report: Report) -> DemoSummary:
    """Run the smoke demo; ``report(step, detail)`` is called as each step completes."""
    summary = DemoSummary()

    def step(name: str, detail: str, started: float) -> None:
        summary.steps.append({"step": name, "detail": detail, "seconds": round(time.monotonic() - started, 3)})
        report(name, detail)

    started = time.monotonic()
    with services(settings) as endpoints:
        summary.kafka_bootstrap, summary.redis_url, summary.embedded = (
            endpoints.kafka_bootstrap,
            endpoints.redis_url,
            endpoints.embedded,
        )
        where = f"embedded {', '.join(endpoints.embedded)}" if endpoints.embedded else "configured"
        step("services", f"Kafka {endpoints.kafka_bootstrap}, Redis {endpoints.redis_url} ({where})", started)

        started = time.monotonic()
        replication = 1 if "kafka" in endpoints.embedded else None
        specs = topic_specs(settings.topics, replication=replication)
        results = create_topics(admin_config(settings.kafka, endpoints.kafka_bootstrap), specs)
        made = [r.name for r in results if r.created]
        kept = [r.name for r in results if not r.created]
        step("topics", f"created {', '.join(made) or 'none'}; already there: {', '.join(kept) or 'none'}", started)

        started = time.monotonic()
        codec = Codec.from_settings(settings.registry)
        decoded, msg = round_trip_listing(settings, endpoints.kafka_bootstrap, codec)
        step(
            "listing",
            f"listing {decoded['listing_id']} v{decoded['listing_version']} went through "
            f"{msg.topic()}[{msg.partition()}]@{msg.offset()} ({len(msg.value() or b'')} bytes, "
            f"{codec.wire_format}) and decoded intact",
            started,
        )

        started = time.monotonic()
        key, ttl = round_trip_cache(settings, endpoints.redis_url, msg.value() or b"")
        step("cache", f"Redis stored and returned {key[:40]}... with TTL {ttl}s", started)
    step("stopped", "embedded servers stopped" if summary.embedded else "nothing to stop", time.monotonic())
    return summary
