"""The input side of a chaos scenario: a plan of listing events, and a feeder that publishes it and remembers it.

The plan uses a few hundred distinct synthetic images repeated across many listings (so the cache
matters), gives some listings several versions published in order (so the version gate matters),
and can mix in undecodable records (so dead letters are part of the input set). The feeder records
each record's partition, offset and event time from the broker's delivery report: that record of
what went in is half of what the verifier compares.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer

from streams.codec import Codec
from tests.streams.worker_harness import listing

Row = dict[str, str]


@dataclass(frozen=True)
class Planned:
    """One input record to publish: a listing version, or undecodable bytes when ``version`` is None."""

    key: str
    version: int | None
    urls: tuple[str, ...] = ()
    category: str = "women/clothing/dresses"
    kind: str = "normal"  # a scenario's own label (normal, slow, stuck, after-restart, ...)


@dataclass
class Sent:
    """A published input record and where the broker put it."""

    planned: Planned
    event_time_ms: int
    partition: int = -1
    offset: int = -1


def plan_listings(
    rows: Sequence[Row],
    url_for: Callable[[Row], str],
    n: int,
    *,
    prefix: str,
    seed: int,
    multi_version_share: float = 0.0,
    max_version: int = 3,
    junk: int = 0,
    kind: str = "normal",
) -> list[Planned]:
    """``n`` listings over ``rows`` (images repeat), later versions of some of them later in the plan, and junk.

    A listing's versions are in increasing order in the plan; as they share a key they share a
    partition, so the worker sees them in that order too.
    """
    rng = random.Random(seed)
    plan = [
        Planned(f"{prefix}{i:05d}", 1, (url_for(row),), row["category"], kind)
        for i, row in ((i, rows[rng.randrange(len(rows))]) for i in range(n))
    ]
    firsts = list(plan)
    for base in (firsts[i] for i in rng.sample(range(n), int(n * multi_version_share))):
        at = plan.index(base)
        for version in range(2, max_version + 1):
            row = rows[rng.randrange(len(rows))]
            at = rng.randint(at + 1, len(plan))
            plan.insert(at, Planned(base.key, version, (url_for(row),), row["category"], kind))
    for j in range(junk):
        plan.insert(rng.randint(0, len(plan)), Planned(f"{prefix}junk-{j:03d}", None, kind="junk"))
    return plan


class Feeder:
    """Publishes planned records to the listings topic, optionally paced, from the caller or a thread."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.codec = Codec()
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        self.sent: list[Sent] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def publish(self, plan: Sequence[Planned], rate: float | None = None) -> None:
        """Publish ``plan`` in order, ``rate`` records a second (None: as fast as possible), then flush."""
        started = time.monotonic()
        for i, item in enumerate(plan):
            if self._stop.is_set():
                break
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self._send(item)
            self.producer.poll(0)
        remaining = self.producer.flush(120)
        if remaining:
            self.errors.append(f"{remaining} input records not delivered within 120s")

    def start(self, plan: Sequence[Planned], rate: float | None = None) -> Feeder:
        """Publish in a background thread; see :meth:`join`."""
        self._thread = threading.Thread(target=self.publish, args=(plan, rate), name="feeder", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 300.0) -> None:
        """Wait for a background :meth:`start` to finish publishing."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise AssertionError(f"the feeder did not finish within {timeout:.0f}s")
        if self.errors:
            raise AssertionError(f"input not delivered: {self.errors}")

    def stop(self) -> None:
        """Stop a background feed early (clean-up)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(130)

    @property
    def done(self) -> bool:
        """Whether a background feed has finished."""
        return self._thread is None or not self._thread.is_alive()

    def snapshot(self) -> list[Sent]:
        """What was published so far."""
        with self._lock:
            return list(self.sent)

    def _send(self, item: Planned) -> None:
        if item.version is None:
            value = f"not avro: chaos junk {item.key}".encode()
            event_time = int(time.time() * 1000)
        else:
            record = listing(item.key, list(item.urls), version=item.version, category=item.category)
            value = self.codec.encode("listing_event", record)
            event_time = int(record["event_time"])
        sent = Sent(item, event_time)
        with self._lock:
            self.sent.append(sent)

        def delivered(err: KafkaError | None, message: Message) -> None:
            if err is not None:
                self.errors.append(f"{item.key}: {err}")
                return
            sent.partition, sent.offset = message.partition(), message.offset() or 0

        while True:
            try:
                self.producer.produce(self.topic, key=item.key.encode(), value=value, on_delivery=delivered)
                return
            except BufferError:
                self.producer.poll(0.05)
