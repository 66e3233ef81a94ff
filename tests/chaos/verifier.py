"""The independent verifier: reads every output topic from the beginning and compares it with what went in.

It shares nothing with the worker but the schemas: an ``assign()``-ed consumer (no group, so it
cannot disturb the workers' group or depend on its offsets) reads the attribute, review and
dead-letter topics, and :class:`~streams.codec.Codec` decodes them. :meth:`Verifier.verdict` then
checks the promises of the design against the feeder's record of the input:

- **missing**: input keys with neither an attribute event for their latest version nor a dead letter;
- **duplicates**: outputs whose ``event_id`` was seen before; every repeat must equal the first
  apart from the fields that say when (or by whom) it was written (:data:`VOLATILE`);
- **stale**: per listing key, in a partition's offset order, an attribute event for a version lower
  than one already published;
- dead letters by reason, and the largest end-to-end latency (``event_time - source_event_time``).
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.codec import Codec, to_millis
from streams.config import TopicSettings
from tests.chaos.workload import Sent

SCHEMAS = {"attributes": "attribute_event", "review": "review_request", "dlq": "dead_letter"}
# Fields a faithful repeat may change: when it was written, how long that took, and (dead letters)
# which worker gave up on the record, which is another one when a partition moved.
VOLATILE = {
    "attributes": {"event_time", "processing_latency_ms"},
    "review": {"event_time", "processing_latency_ms"},
    "dlq": {"event_time", "processing_latency_ms", "worker_id"},
}


@dataclass(frozen=True)
class Output:
    """One decoded output record and where it was read."""

    kind: str
    key: str
    value: dict[str, Any] | None  # None: a tombstone
    partition: int
    offset: int

    @property
    def event_id(self) -> str | None:
        """The record's event id (None for a tombstone)."""
        return None if self.value is None else str(self.value["event_id"])

    @property
    def time_ms(self) -> int:
        """When the worker wrote it (its ``event_time``)."""
        return 0 if self.value is None else to_millis(self.value["event_time"])


@dataclass
class Verdict:
    """What the verifier found for one scenario."""

    inputs: int
    input_records: int
    outputs: int
    covered: int
    missing: list[str] = field(default_factory=list)
    duplicates: int = 0
    mismatched: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    max_latency_s: float = 0.0
    undecodable_outputs: list[str] = field(default_factory=list)


class Verifier:
    """Reads the output topics of one scenario; see the module docstring."""

    def __init__(self, bootstrap: str, topics: TopicSettings) -> None:
        self.codec = Codec()
        self.kinds = {topics.attributes: "attributes", topics.review: "review", topics.dlq: "dlq"}
        admin = AdminClient({"bootstrap.servers": bootstrap})
        metadata = admin.list_topics(timeout=15)
        assignment = [
            TopicPartition(topic, p, -2)  # OFFSET_BEGINNING
            for topic in self.kinds
            for p in sorted(metadata.topics[topic].partitions)
        ]
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "chaos-verifier", "enable.auto.commit": False}
        )
        self.consumer.assign(assignment)
        self.seen: list[Output] = []
        self.undecodable: list[str] = []
        self._last_new = time.monotonic()

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()

    def poll(self, seconds: float = 0.2) -> int:
        """Read what arrives within ``seconds``; returns how many records were read."""
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline:
            for message in self.consumer.consume(500, 0.05):
                if message.error():
                    continue
                kind = self.kinds[message.topic()]
                raw = message.value()
                key = (message.key() or b"").decode(errors="replace")
                try:
                    value = None if raw is None else self.codec.decode(SCHEMAS[kind], raw)
                except Exception as exc:  # reported, never fatal: the verdict lists it
                    self.undecodable.append(f"{kind} p{message.partition()}@{message.offset()}: {exc}")
                    continue
                self.seen.append(Output(kind, key, value, message.partition(), message.offset() or 0))
                count += 1
        if count:
            self._last_new = time.monotonic()
        return count

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll until ``predicate()`` holds (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.poll()
        return predicate()

    def drain(self, quiet_s: float = 2.0, timeout: float = 60.0) -> None:
        """Read until nothing new has arrived for ``quiet_s`` (Tansu's end offsets are not exact)."""
        deadline = time.monotonic() + timeout
        self._last_new = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - self._last_new < quiet_s:
            self.poll()

    def of(self, kind: str) -> list[Output]:
        """Outputs of one kind, tombstones included."""
        return [o for o in self.seen if o.kind == kind]

    def attribute_events(self) -> list[Output]:
        """Attribute events (no tombstones)."""
        return [o for o in self.seen if o.kind == "attributes" and o.value is not None]

    def covered(self, sent: Sequence[Sent]) -> set[str]:
        """Input keys that ended well: an attribute event for their latest version, or a dead letter."""
        latest = _latest_versions(sent)
        done = {o.key for o in self.of("dlq")}
        done.update(
            o.key
            for o in self.attribute_events()
            if o.value is not None and int(o.value["listing_version"]) == latest.get(o.key)
        )
        return done & set(_keys(sent))

    def wait_covered(self, sent: Callable[[], Sequence[Sent]], timeout: float) -> bool:
        """Poll until every key in ``sent()`` is covered."""
        return self.wait_for(lambda: not set(_keys(sent())) - self.covered(sent()), timeout)

    def first_output_ms(self, sent: Sequence[Sent]) -> dict[str, int]:
        """Per covered key, when its covering output (latest version or dead letter) was first written."""
        latest = _latest_versions(sent)
        first: dict[str, int] = {}
        for o in self.seen:
            if o.value is None:
                continue
            ends = o.kind == "dlq" or (o.kind == "attributes" and int(o.value["listing_version"]) == latest.get(o.key))
            if ends and (o.key not in first or o.time_ms < first[o.key]):
                first[o.key] = o.time_ms
        return first

    def verdict(self, sent: Sequence[Sent]) -> Verdict:
        """Compare everything read with the input; see the module docstring."""
        keys = _keys(sent)
        covered = self.covered(sent)
        verdict = Verdict(
            inputs=len(keys),
            input_records=len(sent),
            outputs=len(self.seen),
            covered=len(covered),
            missing=sorted(set(keys) - covered),
            undecodable_outputs=list(self.undecodable),
        )
        first: dict[tuple[str, str], Output] = {}
        for o in self.seen:
            if o.event_id is None:
                continue
            ident = (o.kind, o.event_id)
            if ident not in first:
                first[ident] = o
                continue
            verdict.duplicates += 1
            differences = _differences(first[ident], o)
            if differences:
                where = f"{o.kind} {o.key} p{o.partition}@{first[ident].offset}/{o.offset}"
                verdict.mismatched.append(f"{where}: {'; '.join(differences[:4])}")
        verdict.stale = _stale(self.attribute_events())
        verdict.dead_letters = dict(
            Counter(o.value["reason"] for (kind, _), o in first.items() if kind == "dlq" and o.value is not None)
        )
        latencies = [
            o.time_ms - to_millis(o.value["source_event_time"]) for o in self.attribute_events() if o.value is not None
        ]
        verdict.max_latency_s = max(latencies, default=0) / 1000
        return verdict


@dataclass(frozen=True)
class Stall:
    """The longest gap between attribute events while input was pending: its length and where it was."""

    seconds: float = 0.0
    start_ms: int = 0
    end_ms: int = 0

    def __str__(self) -> str:
        if not self.start_ms:
            return "0.0s"
        span = "-".join(
            datetime.fromtimestamp(t / 1000, UTC).strftime("%H:%M:%S.%f")[:-3] for t in (self.start_ms, self.end_ms)
        )
        return f"{self.seconds:.1f}s ({span} UTC)"


def largest_stall(
    sent: Sequence[Sent], outputs: Sequence[Output], first_done: dict[str, int], partition: int | None = None
) -> Stall:
    """The longest gap between consecutive attribute events while some published input was still unanswered.

    ``first_done`` (from :meth:`Verifier.first_output_ms`) says when each key was answered; a key
    with no answer counts as pending to the end. With ``partition``, only the input records of that
    listings partition and the attribute events of their keys count: a stall of one partition does
    not show in the merged stream while the other partitions flow.
    """
    if partition is not None:
        sent = [s for s in sent if s.partition == partition]
    keys = {s.planned.key for s in sent}
    times = sorted(o.time_ms for o in outputs if o.kind == "attributes" and o.value is not None and o.key in keys)
    first_in: dict[str, int] = {}
    for s in sent:
        first_in[s.planned.key] = min(first_in.get(s.planned.key, s.event_time_ms), s.event_time_ms)
    starts = sorted(first_in.values())
    ends = sorted(first_done.get(key, 2**62) for key in first_in)
    worst = Stall()
    for before, after in itertools.pairwise(times):
        pending = bisect.bisect_right(starts, before) - bisect.bisect_right(ends, before)
        if pending > 0 and (after - before) / 1000 > worst.seconds:
            worst = Stall((after - before) / 1000, before, after)
    return worst


def _keys(sent: Sequence[Sent]) -> list[str]:
    return list(dict.fromkeys(s.planned.key for s in sent))


def _latest_versions(sent: Sequence[Sent]) -> dict[str, int]:
    latest: dict[str, int] = {}
    for s in sent:
        if s.planned.version is not None:
            latest[s.planned.key] = max(latest.get(s.planned.key, 0), s.planned.version)
    return latest


def _stale(events: Sequence[Output]) -> list[str]:
    by_partition: dict[int, list[Output]] = defaultdict(list)
    for o in events:
        by_partition[o.partition].append(o)
    stale = []
    for partition, records in sorted(by_partition.items()):
        highest: dict[str, int] = {}
        for o in sorted(records, key=lambda r: r.offset):
            if o.value is None:
                continue
            version = int(o.value["listing_version"])
            if version < highest.get(o.key, version):
                stale.append(f"{o.key} v{version} after v{highest[o.key]} (p{partition}@{o.offset})")
            highest[o.key] = max(highest.get(o.key, version), version)
    return stale


def _differences(a: Output, b: Output) -> list[str]:
    """Where two records with one event id differ, ignoring the kind's volatile fields, as ``path: a != b``."""
    if a.key != b.key:
        return [f"key: {a.key} != {b.key}"]
    volatile = VOLATILE[a.kind]
    left = {k: v for k, v in (a.value or {}).items() if k not in volatile}
    right = {k: v for k, v in (b.value or {}).items() if k not in volatile}
    return _diff(left, right, "")


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += _diff(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]
