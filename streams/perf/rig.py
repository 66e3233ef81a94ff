"""The benchmarks' test bench: broker, Redis, image server, publisher and output collector.

One :class:`Rig` serves every run of a ``swatch bench`` command: the broker and Redis (configured,
or embedded), a synthetic catalog over local HTTP, and per run fresh topics, a fresh consumer group
and fresh cache keys, so runs do not help each other. The publisher sends a plan as one burst or at
a fixed rate (open loop: it keeps the schedule whatever the worker does), stamping each listing's
``event_time`` as it sends it; the collector reads the attribute and dead-letter topics by partition
assignment (no group to join) and keeps each key's first output and its broker timestamp.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams.codec import Codec, now_millis
from streams.config import Settings, TopicSettings
from streams.embedded import Endpoints, free_port, services
from streams.kafka import admin_config, consumer_config, producer_config
from streams.perf.workload import SPARE_IMAGES, Catalog, Plan, catalog, make_catalog
from streams.topics import create_topics, topic_specs

EMBEDDED_SESSION_TIMEOUT_MS = 6000  # the embedded broker forms a group after about this long
EMBEDDED_FETCH_WAIT_MS = 10  # it holds each fetch for the whole wait: at 500 ms, p50 0.30 s instead of 0.13 s


@dataclass
class RunTopics:
    """One run's names: topics, consumer group and cache key prefixes."""

    run: str
    topics: TopicSettings
    group: str

    def env(self) -> dict[str, str]:
        """The ``SWATCH_*`` variables that point a worker at this run."""
        t = self.topics
        return {
            "SWATCH_TOPICS_LISTINGS": t.listings,
            "SWATCH_TOPICS_ATTRIBUTES": t.attributes,
            "SWATCH_TOPICS_REVIEW": t.review,
            "SWATCH_TOPICS_DECISIONS": t.decisions,
            "SWATCH_TOPICS_DLQ": t.dlq,
            "SWATCH_KAFKA_GROUP_ID": self.group,
            "SWATCH_REDIS_KEY_PREFIX": f"bench:{self.run}:pred:",
            "SWATCH_REDIS_VERSION_PREFIX": f"bench:{self.run}:ver:",
        }


@dataclass
class Collected:
    """Outputs by key: (topic, broker timestamp in ms) of the first one seen."""

    first: dict[bytes, tuple[str, int]] = field(default_factory=dict)
    sent_ms: dict[bytes, int] = field(default_factory=dict)
    publish_failures: int = 0
    publish_started: float = 0.0  # wall clock seconds
    publish_finished: float = 0.0

    def latencies_s(self, topic: str, after_s: float = 0.0) -> list[float]:
        """Event time to output per listing whose first output went to ``topic``, sent ``after_s`` into the run."""
        start = min(self.sent_ms.values(), default=0) + after_s * 1000
        return sorted(
            (ts - self.sent_ms[key]) / 1000
            for key, (t, ts) in self.first.items()
            if t == topic and key in self.sent_ms and self.sent_ms[key] >= start
        )

    def delivered(self, err: Any, _message: Any) -> None:
        """Delivery report of a published event: failures are counted (the run then stops)."""
        if err is not None:
            self.publish_failures += 1

    def timeline(self, topic: str, bucket_s: float = 1.0) -> list[list[float]]:
        """Per ``bucket_s`` of send time: [seconds since the first send, listings, p50 and max latency]."""
        if not self.sent_ms:
            return []
        start = min(self.sent_ms.values())
        buckets: dict[int, list[float]] = {}
        for key, (t, ts) in self.first.items():
            if t == topic and key in self.sent_ms:
                sent = self.sent_ms[key]
                buckets.setdefault(int((sent - start) / 1000 / bucket_s), []).append((ts - sent) / 1000)
        out = []
        for b in sorted(buckets):
            values = sorted(buckets[b])
            out.append([round(b * bucket_s, 1), len(values), round(values[len(values) // 2], 3), round(values[-1], 3)])
        return out

    def last_output_s(self) -> float:
        """Wall-clock seconds of the last first-output."""
        return max((ts for _, ts in self.first.values()), default=0) / 1000


class Rig:
    """Broker, Redis, image server and catalog for a series of runs; a context manager."""

    def __init__(self, settings: Settings, scratch: Path, catalog_size: int, seed: int = 5) -> None:
        self.settings = settings
        self.scratch = scratch
        self.catalog_size = catalog_size
        self.seed = seed
        self._stack = contextlib.ExitStack()
        self.endpoints: Endpoints | None = None
        self.catalog: Catalog | None = None

    def __enter__(self) -> Rig:
        self.endpoints = self._stack.enter_context(services(self.settings))
        manifest = make_catalog(self.scratch / "catalog", self.catalog_size + SPARE_IMAGES, self.seed)
        base_url = self._stack.enter_context(_image_server(manifest.parent, self.scratch / "image-server.log"))
        self.catalog = catalog(manifest, base_url, self.seed)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def embedded_kafka(self) -> bool:
        """Whether the broker is the embedded one (groups form after the session timeout)."""
        return self.endpoints is not None and "kafka" in self.endpoints.embedded

    def kafka_settings(self) -> Settings:
        """The settings with this rig's endpoints filled in."""
        if self.endpoints is None:
            raise RuntimeError("the rig is not started")
        kafka = self.settings.kafka.model_dump() | {"bootstrap": self.endpoints.kafka_bootstrap}
        if self.embedded_kafka:
            kafka["session_timeout_ms"] = EMBEDDED_SESSION_TIMEOUT_MS
            kafka["fetch_wait_max_ms"] = EMBEDDED_FETCH_WAIT_MS
        redis = self.settings.redis.model_dump() | {"url": self.endpoints.redis_url}
        return self.settings.model_copy(
            update={"kafka": type(self.settings.kafka)(**kafka), "redis": type(self.settings.redis)(**redis)}
        )

    def new_run(self, label: str) -> RunTopics:
        """Fresh topics, group and key prefixes for one run."""
        run = f"{label}-{uuid.uuid4().hex[:6]}"
        topics = TopicSettings(
            listings=f"bench-{run}-listings",
            attributes=f"bench-{run}-attributes",
            review=f"bench-{run}-review",
            decisions=f"bench-{run}-decisions",
            dlq=f"bench-{run}-dlq",
            partitions=self.settings.topics.partitions,
        )
        settings = self.kafka_settings()
        replication = 1 if self.embedded_kafka else None
        create_topics(admin_config(settings.kafka), topic_specs(topics, replication=replication))
        return RunTopics(run, topics, f"bench-{run}")

    def publish(self, run: RunTopics, plan: Plan, rate: float | None, collected: Collected) -> None:
        """Send ``plan`` to the run's listings topic: all at once, or ``rate`` listings per second."""
        settings = self.kafka_settings()
        producer = Producer(producer_config(settings.kafka) | {"linger.ms": 2})
        codec = Codec()
        topic = run.topics.listings
        producer.list_topics(topic, timeout=10)  # learn the leaders before the clock starts
        collected.publish_started = time.time()
        started = time.monotonic()
        for i, record in enumerate(plan.records):
            if rate is not None:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if i in plan.malformed_at:
                malformed_key = f"{record['listing_id']}-malformed".encode()
                producer.produce(topic, plan.malformed_at[i], key=malformed_key, on_delivery=collected.delivered)
            sent = now_millis()
            value = codec.encode("listing_event", dict(record, event_time=sent), topic=topic)
            key = str(record["listing_id"]).encode()
            collected.sent_ms[key] = sent
            producer.produce(topic, value, key=key, on_delivery=collected.delivered)
            producer.poll(0)
        left = producer.flush(30)
        collected.publish_failures += left
        collected.publish_finished = time.time()
        if collected.publish_failures:
            raise RuntimeError(f"{collected.publish_failures} listing events were not delivered to {topic}")


@contextlib.contextmanager
def _image_server(root: Path, log: Path) -> Iterator[str]:
    """``swatch serve-images`` in its own process, as a CDN is another machine: its GIL and garbage
    collector are not the benchmark's (in-process, a collection in the benchmark stalled every
    image download for half a second)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "streams", "serve-images", str(root), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            base_url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(base_url + "manifest.csv", timeout=1):  # noqa: S310
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the image server did not start; see {log}") from None
                    time.sleep(0.05)
            yield base_url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def collecting(rig: Rig, topics: list[str], collected: Collected) -> Iterator[threading.Event]:
    """Collect outputs of ``topics`` into ``collected`` on a thread until the block ends."""
    settings = rig.kafka_settings()
    group = f"bench-collector-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(consumer_config(settings.kafka, group_id=group))
    metadata = consumer.list_topics(timeout=10)
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in metadata.topics[t].partitions])
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            for message in consumer.consume(500, 0.1):
                key, topic = message.key(), message.topic()
                if message.error() is not None or key is None or topic is None:
                    continue
                if key not in collected.first:
                    collected.first[key] = (topic, message.timestamp()[1])

    thread = threading.Thread(target=run, name="bench-collector", daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(5)
        consumer.close()


STALL_S = 120.0  # no new output for this long: the run is over, whatever is missing


def wait_outputs(
    collected: Collected, expected: int, timeout_s: float, alive: Any = None, stall_s: float = STALL_S
) -> bool:
    """Wait until ``expected`` keys have an output (True), or the time is up, ``alive()`` is False or no
    output came for ``stall_s`` (False). On the embedded broker a long soak once ended that way: after
    about 14,000 records per partition it stopped answering fetches (100 % CPU), and the run would
    otherwise have waited for its whole timeout."""
    deadline = time.monotonic() + timeout_s
    seen, last_change = len(collected.first), time.monotonic()
    while len(collected.first) < expected:
        now = time.monotonic()
        if len(collected.first) != seen:
            seen, last_change = len(collected.first), now
        if now > deadline or now - last_change > stall_s or (alive is not None and not alive()):
            return False
        time.sleep(0.05)
    return True
