"""Reading any Swatch topic as decoded events, for people (``swatch tail``), tests and the demo.

The reader assigns itself every partition of the topic at explicit offsets (the beginning, the end,
or a group's committed offsets) instead of subscribing: it starts at once, never joins a consumer
group and never commits, so it cannot disturb the worker or any other consumer.

Each record comes back as a :class:`TailRecord`: a decoded event, a tombstone (value ``None``) or
the reason it could not be decoded; an undecodable record never stops the reader.

On the embedded Tansu 0.6 broker "the end" of a partition is the first offset of its last record
batch + 1 rather than the last offset + 1, so ``--latest`` there may first show the rest of the
last batch that was already in the log. Real Kafka brokers report it exactly.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from streams.codec import Codec, to_millis
from streams.config import Settings, TopicSettings
from streams.errors import DecodeError, KafkaAdminError, TopicNotFoundError
from streams.kafka import consumer_config
from streams.topics import topic_partitions

logger = logging.getLogger(__name__)

# Logical topic name (the TopicSettings field) -> the event every record on it carries.
TOPIC_SCHEMAS = {
    "listings": "listing_event",
    "attributes": "attribute_event",
    "review": "review_request",
    "decisions": "review_decision",
    "dlq": "dead_letter",
}
BytesStyle = Literal["base64", "hex", "short"]
_SHORT_BYTES = 16


@dataclass(frozen=True)
class TailRecord:
    """One record read from a topic: where it was, its key, and its decoded event or why it is not one.

    ``value`` is the decoded event (times as aware datetimes, bytes as bytes), or ``None`` for a
    tombstone and for an undecodable record; ``error`` is the decoder's reason for the latter.
    """

    topic: str
    partition: int
    offset: int
    key: str | None
    value: dict[str, Any] | None
    error: str | None
    timestamp_ms: int | None
    size: int = 0

    @property
    def tombstone(self) -> bool:
        """A null value: the key was deleted (on the compacted attributes topic, the listing was)."""
        return self.value is None and self.error is None

    def to_json(self, bytes_style: BytesStyle = "base64") -> dict[str, Any]:
        """Plain JSON data: times as UTC milliseconds, bytes as base64 (or hex)."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key": self.key,
            "tombstone": self.tombstone,
            "error": self.error,
            "value": plain(self.value, bytes_style=bytes_style, times="millis") if self.value is not None else None,
        }


def plain(data: Any, *, bytes_style: BytesStyle = "base64", times: Literal["millis", "iso"] = "millis") -> Any:
    """A decoded event as JSON-able data: datetimes as UTC ms (or ISO 8601), bytes as base64, hex or a short repr."""
    if isinstance(data, dict):
        return {str(k): plain(v, bytes_style=bytes_style, times=times) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [plain(v, bytes_style=bytes_style, times=times) for v in data]
    if isinstance(data, datetime):
        return to_millis(data) if times == "millis" else _iso(data)
    if isinstance(data, bytes | bytearray | memoryview):
        return _bytes_text(bytes(data), bytes_style)
    return data


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bytes_text(raw: bytes, style: BytesStyle) -> str:
    if style == "base64":
        return base64.b64encode(raw).decode("ascii")
    if style == "hex":
        return raw.hex()
    more = "..." if len(raw) > _SHORT_BYTES else ""
    return f"<{len(raw)} bytes: {raw[:_SHORT_BYTES].hex()}{more}>"


def resolve_topic(topics: TopicSettings, name: str) -> tuple[str, str]:
    """``(topic name, event schema)`` for a configured topic name or a logical one (listings, dlq, ...)."""
    for logical, schema in TOPIC_SCHEMAS.items():
        if getattr(topics, logical) == name:
            return name, schema
    if name in TOPIC_SCHEMAS:
        return getattr(topics, name), TOPIC_SCHEMAS[name]
    known = ", ".join(f"{logical} ({getattr(topics, logical)})" for logical in TOPIC_SCHEMAS)
    raise TopicNotFoundError(
        f"{name!r} is not one of Swatch's topics: {known}. For another topic name the event with --schema"
    )


def read_topic(
    settings: Settings,
    topic: str,
    *,
    schema: str | None = None,
    from_beginning: bool = True,
    max_records: int | None = None,
    idle_timeout_s: float | None = 5.0,
    group: str | None = None,
    bootstrap: str | None = None,
    codec: Codec | None = None,
) -> Iterator[TailRecord]:
    """Read records from every partition of ``topic`` and decode them.

    ``topic`` is a configured or logical topic name (mapped to its configured name); ``schema`` (an
    event name) is needed only for other topics, and overrides the topic's event otherwise.
    Starts at the beginning or the end of each partition, or, with ``group``, at that group's
    committed offsets (falling back to beginning/end where it has none); never commits.
    Stops after ``max_records`` records or ``idle_timeout_s`` seconds without one (``None``: never).
    """
    try:
        topic, topic_schema = resolve_topic(settings.topics, topic)
    except TopicNotFoundError:
        if schema is None:
            raise
        topic_schema = schema
    schema = schema or topic_schema
    codec = codec or Codec.from_settings(settings.registry)
    codec.schemas.current(schema)  # an unknown event name fails here, before connecting
    if max_records is not None and max_records <= 0:
        return
    conf = consumer_config(settings.kafka, group or f"swatch-tail-{uuid.uuid4().hex[:12]}", bootstrap)
    conf["allow.auto.create.topics"] = False  # reading must never create the topic it asks about
    consumer = Consumer(conf)
    try:
        partitions = topic_partitions(consumer, topic, str(conf["bootstrap.servers"]))
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        assignment = [TopicPartition(topic, p, start) for p in partitions]
        if group is not None:
            assignment = _committed_or(consumer, assignment, start)
        consumer.assign(assignment)
        yield from _poll(consumer, codec, schema, max_records, idle_timeout_s)
    finally:
        consumer.close()


def _committed_or(consumer: Consumer, assignment: list[TopicPartition], fallback: int) -> list[TopicPartition]:
    """The group's committed offsets, the fallback where the group has committed nothing."""
    try:
        committed = consumer.committed([TopicPartition(tp.topic, tp.partition) for tp in assignment], timeout=10)
    except KafkaException as exc:
        raise KafkaAdminError(f"cannot read the group's committed offsets: {exc}") from exc
    return [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else fallback) for tp in committed]


def _poll(
    consumer: Consumer, codec: Codec, schema: str, max_records: int | None, idle_timeout_s: float | None
) -> Iterator[TailRecord]:
    count = 0
    last = time.monotonic()
    while max_records is None or count < max_records:
        if idle_timeout_s is not None:
            remaining = idle_timeout_s - (time.monotonic() - last)
            if remaining <= 0:
                return
            msg = consumer.poll(min(0.5, remaining))
        else:
            msg = consumer.poll(0.5)
        if msg is None:
            continue
        error = msg.error()
        if error is not None:
            if error.fatal() or error.code() in (
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
            ):
                raise KafkaAdminError(f"reading {msg.topic()}: {error.str()}")
            logger.warning("reading %s: %s", msg.topic(), error.str())
            continue
        last = time.monotonic()
        count += 1
        yield _record(msg, codec, schema)


def _record(msg: Message, codec: Codec, schema: str) -> TailRecord:
    raw_key = msg.key()
    key = raw_key.decode("utf-8", errors="backslashreplace") if isinstance(raw_key, bytes) else raw_key
    ts_type, ts = msg.timestamp()
    timestamp_ms = None if ts_type == TIMESTAMP_NOT_AVAILABLE else int(ts)
    data = msg.value()
    value, error = None, None
    if data is not None:
        try:
            value = codec.decode(schema, data)
        except DecodeError as exc:
            error = f"{exc.reason}: {exc}"
    size = len(data) if data is not None else 0
    return TailRecord(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, key, value, error, timestamp_ms, size)
