"""What flows between the worker's parts: a consumed record, an output, a listing's outcome."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from confluent_kafka import Message

from streams.events import Original
from streams.tracker import TopicPartitionKey

OutputKind = Literal["attributes", "review", "dlq"]


@dataclass(frozen=True)
class Consumed:
    """One input record, copied out of the client's message so parts can be tested without a broker."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp: int | None = None
    received_ms: int = 0  # wall clock when the worker consumed it

    @property
    def tp(self) -> TopicPartitionKey:
        """``(topic, partition)``."""
        return (self.topic, self.partition)

    @property
    def context(self) -> dict[str, Any]:
        """Log fields that place the record."""
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}

    def original(self) -> Original:
        """The record as a dead letter carries it back."""
        return Original(
            self.topic, self.partition, self.offset, self.key, self.value, self.headers, self.timestamp
        )

    @classmethod
    def of(cls, message: Message, received_ms: int) -> Consumed:
        """Copy a consumed confluent-kafka message."""
        timestamp_type, timestamp = message.timestamp()
        return cls(
            topic=str(message.topic()),
            partition=int(message.partition() or 0),
            offset=int(message.offset() or 0),
            key=message.key(),
            value=message.value(),
            headers=_headers(message),
            timestamp=timestamp if timestamp_type != 0 and timestamp >= 0 else None,
            received_ms=received_ms,
        )


@dataclass
class Output:
    """One record to produce; ``on_ack`` runs once the broker has acknowledged it."""

    kind: OutputKind
    topic: str
    key: bytes | None
    value: bytes | None
    on_ack: Callable[[], None] | None = None

    @property
    def size(self) -> int:
        """Bytes of key and value."""
        return len(self.key or b"") + len(self.value or b"")


@dataclass
class Outcome:
    """How one listing ends: the outputs to publish (none for a stale version) and the result label."""

    result: str  # tagged, review, no_usable_image, no_group, deleted, stale, dead_letter
    outputs: list[Output] = field(default_factory=list)
    listing_id: str | None = None
    reason: str | None = None  # the dead letter's reason, for dead letters


def _headers(message: Message) -> tuple[tuple[str, bytes | None], ...]:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple((str(k), v if isinstance(v, bytes | None) else str(v).encode()) for k, v in pairs)
