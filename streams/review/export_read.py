"""The first half of ``swatch dataset from-reviews``: the decisions that count, and the export's record.

:func:`read_to_end` reads the decisions topic from the beginning of every partition to its end (the
end offsets taken when the export starts; a partition is done once the consumer reports it reached
its end), so an export ends by itself and says exactly what it read. :func:`effective_latest` then
drops repeated event ids and undone decisions and keeps the latest decision per listing (steps 1
and 2 of :mod:`streams.review.export`, which turns what is kept into manifest rows).

:class:`ExportResult` is what both halves fill in: counts, skips with examples, the partitions read;
its :meth:`~ExportResult.to_dict` is the sidecar.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from streams.codec import Codec, to_millis
from streams.config import Settings
from streams.errors import DecodeError, KafkaAdminError, SwatchError
from streams.kafka import consumer_config
from streams.text import MAX_REASON_CHARS, clip
from streams.topics import topic_partitions

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SCHEMA",
    "DecisionRead",
    "ExportError",
    "ExportResult",
    "PartitionRange",
    "effective_latest",
    "read_to_end",
]

logger = logging.getLogger(__name__)

FORMAT: Final = "swatch.review-export"
FORMAT_VERSION: Final = 1
"""Version of the sidecar's layout; bumped when a field changes meaning or goes away."""

SCHEMA: Final = "review_decision"
_MAX_EXAMPLES: Final = 50


class ExportError(SwatchError):
    """The export cannot be made (bad options, a topic that cannot be read to its end, unwritable output)."""


@dataclass(frozen=True)
class PartitionRange:
    """What was read of one partition: from ``start`` up to (not including) ``next``; ``end`` as seen first."""

    partition: int
    start: int
    end: int
    next: int

    def to_dict(self) -> dict[str, int]:
        """Plain data for the sidecar."""
        return {"partition": self.partition, "start": self.start, "end": self.end, "next": self.next}


@dataclass
class ExportResult:
    """What an export read, kept, skipped and wrote; :meth:`to_dict` is the sidecar."""

    manifest: Path
    sidecar: Path
    topic: str
    split: str | None
    taxonomy_version: int
    taxonomy_fingerprint: str
    created_at: str = ""
    bootstrap: str | None = None
    partitions: list[PartitionRange] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    labels_skipped: Counter[str] = field(default_factory=Counter)
    images: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)
    manifest_sha256: str = ""

    @property
    def rows(self) -> int:
        """Rows written to the manifest."""
        return self.counts["rows"]

    def note(self, reason: str, decision: Mapping[str, Any] | None, detail: str = "") -> None:
        """Keep an example of a skipped decision or label (the first few only; the counters have them all)."""
        if len(self.examples) >= _MAX_EXAMPLES:
            return
        example = {"reason": reason, "detail": detail}
        if decision is not None:
            example |= {
                "listing_id": str(decision.get("listing_id")),
                "listing_version": str(decision.get("listing_version")),
                "event_id": str(decision.get("event_id")),
            }
        self.examples.append(example)

    def to_dict(self) -> dict[str, Any]:
        """The sidecar: plain JSON data."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": self.created_at,
            "manifest": self.manifest.name,
            "manifest_sha256": self.manifest_sha256,
            "split": self.split or "",
            "source": {
                "bootstrap": self.bootstrap,
                "topic": self.topic,
                "schema": SCHEMA,
                "partitions": [p.to_dict() for p in self.partitions],
            },
            "taxonomy": {"version": self.taxonomy_version, "fingerprint": self.taxonomy_fingerprint},
            "counts": dict(sorted(self.counts.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "labels": dict(sorted(self.labels.items())),
            "labels_skipped": dict(sorted(self.labels_skipped.items())),
            "images": dict(sorted(self.images.items())),
            "examples": self.examples,
        }


@dataclass(frozen=True)
class DecisionRead:
    """One decoded decision and where it was read."""

    partition: int
    offset: int
    value: dict[str, Any]

    @property
    def event_id(self) -> str:
        """The decision's event id (a redelivered decision repeats it)."""
        return str(self.value["event_id"])

    def order(self) -> tuple[int, int, int, int]:
        """Later wins: listing version, decision time, then topic order."""
        return (int(self.value["listing_version"]), to_millis(self.value["decided_at"]), self.partition, self.offset)


# -- reading ------------------------------------------------------------------------------------


def read_to_end(settings: Settings, codec: Codec, result: ExportResult, idle_timeout_s: float) -> list[DecisionRead]:
    """Every decision on the topic, from the beginning of each partition to its end."""
    topic = settings.topics.decisions
    conf = consumer_config(settings.kafka, f"swatch-export-{uuid.uuid4().hex[:12]}")
    conf["allow.auto.create.topics"] = False  # reading must never create the topic it asks about
    conf["enable.partition.eof"] = True  # the consumer says when it reached a partition's end
    consumer = Consumer(conf)
    try:
        partitions = topic_partitions(consumer, topic, str(conf["bootstrap.servers"]))
        reader = _Reader(consumer, topic, {p: _watermarks(consumer, topic, p) for p in partitions}, codec, result)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        reader.run(idle_timeout_s)
    finally:
        consumer.close()
    result.partitions = [
        PartitionRange(p, low, high, reader.next_offset[p]) for p, (low, high) in sorted(reader.ranges.items())
    ]
    return reader.reads


def _watermarks(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
    except KafkaException as exc:
        raise KafkaAdminError(f"cannot read the end offsets of {topic} [{partition}]: {exc}") from exc
    return int(low), int(high)


@dataclass
class _Reader:
    """Polls an assigned consumer until every partition reported its end (at or past the end seen first).

    The end offsets are taken before reading; a partition is done when the consumer reports that it
    reached the partition's end (``_PARTITION_EOF``) at or past that offset. That holds on brokers
    that report the end at the start of the last record batch (Tansu) and past transaction markers
    alike. After a silence of ``idle_timeout_s`` a partition whose position is at its end is done
    too; any other is an error, so an export never quietly misses decisions.
    """

    consumer: Consumer
    topic: str
    ranges: dict[int, tuple[int, int]]
    codec: Codec
    result: ExportResult
    reads: list[DecisionRead] = field(default_factory=list)
    reached: set[int] = field(default_factory=set)
    next_offset: dict[int, int] = field(default_factory=dict)

    def run(self, idle_timeout_s: float) -> None:
        """Read until every partition is done."""
        self.next_offset = {p: low for p, (low, _high) in self.ranges.items()}
        last = time.monotonic()
        while len(self.reached) < len(self.ranges):
            msg = self.consumer.poll(0.5)
            if msg is None:
                if time.monotonic() - last >= idle_timeout_s:
                    self._positions_at_end(idle_timeout_s)
                continue
            last = time.monotonic()
            partition, offset = msg.partition() or 0, msg.offset() or 0
            error = msg.error()
            if error is None:
                self._record(partition, offset, msg.value())
            elif error.code() == KafkaError._PARTITION_EOF:
                self._advance(partition, offset)
                if offset >= self.ranges[partition][1]:
                    self.reached.add(partition)
            elif error.fatal() or error.code() in (
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
            ):
                raise KafkaAdminError(f"reading {self.topic}: {error.str()}")
            else:
                logger.warning("reading %s: %s", self.topic, error.str())

    def _advance(self, partition: int, next_offset: int) -> None:
        self.next_offset[partition] = max(self.next_offset[partition], next_offset)

    def _record(self, partition: int, offset: int, data: bytes | None) -> None:
        counts = self.result.counts
        counts["records"] += 1
        self._advance(partition, offset + 1)
        if data is None:
            counts["tombstones"] += 1
            return
        try:
            value = self.codec.decode(SCHEMA, data)
        except DecodeError as exc:
            counts["undecodable"] += 1
            self.result.note(
                "undecodable", None, clip(f"partition {partition} offset {offset}: {exc}", MAX_REASON_CHARS)
            )
            return
        self.reads.append(DecisionRead(partition, offset, value))

    def _positions_at_end(self, idle_s: float) -> None:
        """After a silence: the partitions whose position is at their end are done; the others an error."""
        open_ = [p for p in self.ranges if p not in self.reached]
        behind = []
        for tp in self.consumer.position([TopicPartition(self.topic, p) for p in open_]):
            low, high = self.ranges[tp.partition]
            if tp.offset >= high or low >= high:  # read to its end, or empty
                self._advance(tp.partition, max(tp.offset, low))
                self.reached.add(tp.partition)
            else:
                behind.append(f"[{tp.partition}] at {max(tp.offset, low)} of {high}")
        if behind:
            raise ExportError(
                f"{self.topic}: no record for {idle_s:g}s before the end of partition(s) {', '.join(behind)}"
            )


def effective_latest(reads: Sequence[DecisionRead], result: ExportResult) -> list[DecisionRead]:
    """Drop repeated and withdrawn decisions; keep the latest per listing."""
    unique: dict[str, DecisionRead] = {}
    for read in reads:
        if read.event_id in unique:
            result.counts["duplicates"] += 1
            continue
        unique[read.event_id] = read
    undoers: dict[str, list[str]] = {}
    for read in unique.values():
        target = read.value.get("undoes")
        if target:
            undoers.setdefault(str(target), []).append(read.event_id)
    memo: dict[str, bool] = {}

    def effective(event_id: str, visiting: frozenset[str] = frozenset()) -> bool:
        if event_id not in memo:
            if event_id in visiting:  # a cycle of undos cannot be resolved: nothing in it stands
                return False
            inner = visiting | {event_id}
            memo[event_id] = not any(effective(u, inner) for u in undoers.get(event_id, ()))
        return memo[event_id]

    latest: dict[str, DecisionRead] = {}
    for read in unique.values():
        if read.value.get("undoes"):
            result.counts["undos"] += 1
            continue
        result.counts["decisions"] += 1
        if read.value.get("applied_from"):
            result.counts["applied_from"] += 1
        if not effective(read.event_id):
            result.counts["undone"] += 1
            continue
        listing = str(read.value["listing_id"])
        previous = latest.get(listing)
        if previous is None or read.order() > previous.order():
            latest[listing] = read
        if previous is not None:
            result.counts["superseded"] += 1
    result.counts["undo_targets_missing"] = sum(1 for target in undoers if target not in unique)
    result.counts["kept"] = len(latest)
    return sorted(latest.values(), key=lambda read: str(read.value["listing_id"]))
