"""What the worker's integration tests share: topics, settings, listing records, an output reader, runners."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from streams.codec import Codec
from streams.config import Settings
from streams.events import listing_event
from streams.kafka import admin_config
from streams.topics import create_topics, topic_specs
from streams.worker import Worker

PARTITIONS = 2
OUTPUT_SCHEMAS = {"attributes": "attribute_event", "review": "review_request", "dlq": "dead_letter"}


@dataclass
class Output:
    """One decoded output record."""

    kind: str  # attributes, review, dlq
    key: bytes | None
    value: dict[str, Any] | None  # None for a tombstone
    partition: int
    offset: int


def make_settings(kafka_bootstrap: str, redis_url: str | None, prefix: str, **sections: dict[str, Any]) -> Settings:
    """Settings for one test: its own topics and group, loopback images allowed, fast commits, port 0."""
    values: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap": kafka_bootstrap, "session_timeout_ms": 6000, "group_id": f"{prefix}-workers"},
        "redis": {"url": redis_url, "version_prefix": f"{prefix}:ver:", "key_prefix": f"{prefix}:pred:"},
        "topics": {
            "listings": f"{prefix}-listings",
            "attributes": f"{prefix}-attributes",
            "review": f"{prefix}-review",
            "decisions": f"{prefix}-decisions",
            "dlq": f"{prefix}-dlq",
            "partitions": PARTITIONS,
        },
        "fetch": {"allow_networks": ["127.0.0.0/8"], "retries": 0, "total_timeout_s": 5.0},
        "worker": {"metrics_port": 0, "commit_interval_ms": 100, "drain_timeout_s": 20},
        "batch": {"max_wait_ms": 10},
    }
    for section, changes in sections.items():
        values.setdefault(section, {}).update(changes)
    settings = Settings(**values)
    create_topics(admin_config(settings.kafka), topic_specs(settings.topics))
    return settings


def env_for(settings: Settings) -> dict[str, str]:
    """The SWATCH_* variables that give a subprocess worker the same settings."""
    s = settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWATCH_")}
    env.update(
        {
            "SWATCH_KAFKA_BOOTSTRAP": s.kafka.bootstrap or "",
            "SWATCH_KAFKA_SESSION_TIMEOUT_MS": str(s.kafka.session_timeout_ms),
            "SWATCH_KAFKA_GROUP_ID": s.kafka.group_id,
            "SWATCH_REDIS_URL": s.redis.url or "",
            "SWATCH_REDIS_KEY_PREFIX": s.redis.key_prefix,
            "SWATCH_REDIS_VERSION_PREFIX": s.redis.version_prefix,
            "SWATCH_TOPICS_LISTINGS": s.topics.listings,
            "SWATCH_TOPICS_ATTRIBUTES": s.topics.attributes,
            "SWATCH_TOPICS_REVIEW": s.topics.review,
            "SWATCH_TOPICS_DECISIONS": s.topics.decisions,
            "SWATCH_TOPICS_DLQ": s.topics.dlq,
            "SWATCH_FETCH_ALLOW_NETWORKS": ",".join(str(n) for n in s.fetch.allow_networks),
            "SWATCH_FETCH_RETRIES": str(s.fetch.retries),
            "SWATCH_WORKER_METRICS_PORT": "0",
            "SWATCH_WORKER_COMMIT_INTERVAL_MS": str(s.worker.commit_interval_ms),
            "SWATCH_WORKER_DRAIN_TIMEOUT_S": str(s.worker.drain_timeout_s),
            "SWATCH_LOG_FORMAT": "text",
        }
    )
    if not env["SWATCH_REDIS_URL"]:
        del env["SWATCH_REDIS_URL"]
    return env


def listing(
    listing_id: str,
    urls: list[str],
    *,
    version: int = 1,
    operation: str = "UPSERT",
    category: str = "women/clothing/dresses",
    declared: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """A listing event record."""
    return listing_event(
        listing_id,
        version,
        merchant_id="merchant-1",
        category_path=category.split("/"),
        title=f"listing {listing_id}",
        image_urls=urls,
        declared=declared,
        operation=operation,
    )


def publish(settings: Settings, *records: dict[str, Any] | tuple[bytes | None, bytes | None]) -> None:
    """Send listing records (encoded) or raw (key, value) pairs to the listings topic, in order."""
    codec = Codec()
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "enable.idempotence": True})
    for record in records:
        if isinstance(record, tuple):
            key, value = record
        else:
            key, value = record["listing_id"].encode(), codec.encode("listing_event", record)
        producer.produce(settings.topics.listings, key=key, value=value)
    assert producer.flush(15) == 0


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class OutputReader:
    """Reads the three output topics from the beginning, without a group, and keeps what it saw."""

    settings: Settings
    seen: list[Output] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.codec = Codec()
        self.consumer = Consumer(
            {"bootstrap.servers": self.settings.kafka.bootstrap, "group.id": "unused", "enable.auto.commit": False}
        )
        self.kinds = {getattr(self.settings.topics, kind): kind for kind in OUTPUT_SCHEMAS}
        self.consumer.assign([TopicPartition(t, p, -2) for t in self.kinds for p in range(PARTITIONS)])

    def poll(self, seconds: float = 0.2) -> None:
        """Read whatever arrived within ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = self.consumer.poll(0.05)
            if message is None or message.error():
                continue
            kind = self.kinds[message.topic()]
            raw = message.value()
            value = None if raw is None else self.codec.decode(OUTPUT_SCHEMAS[kind], raw)
            self.seen.append(Output(kind, message.key(), value, message.partition(), message.offset()))

    def wait_for(self, predicate: Callable[[list[Output]], bool], timeout: float = 45.0) -> list[Output]:
        """Poll until ``predicate(seen)`` holds; fails the test with what was seen otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.seen):
                return self.seen
            self.poll()
        raise AssertionError(f"timed out; saw {[(o.kind, o.key) for o in self.seen]}")

    def of(self, kind: str, listing_id: str) -> list[Output]:
        """Outputs of one kind for one listing key."""
        return [o for o in self.seen if o.kind == kind and o.key == listing_id.encode()]

    def attribute_events(self, listing_id: str) -> list[dict[str, Any]]:
        """Decoded attribute events (tombstones excluded) of one listing."""
        return [o.value for o in self.of("attributes", listing_id) if o.value is not None]

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()


@contextmanager
def running(worker: Worker, timeout: float = 30.0) -> Iterator[Worker]:
    """Run a worker in a thread until it has partitions; stop and join it afterwards."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run()), name="worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not worker.metrics.value("swatch_assigned_partitions") and time.monotonic() < deadline:
        if not thread.is_alive():
            raise AssertionError("the worker exited during start-up")
        time.sleep(0.05)
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(60)
        assert not thread.is_alive(), "the worker did not stop"
    assert result == [0], f"worker exit code {result}"


def start_subprocess_worker(
    settings: Settings, log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``swatch worker`` in its own process, logging to ``log``."""
    env = env_for(settings) | (extra_env or {})
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
