"""Transactional delivery: outputs and consumer offsets commit together, after librdkafka's transactions.c.

A listing's outputs are queued when it is decided. Every transaction interval, the outputs of every
record below each partition's contiguous finished position are produced in offset order inside one
transaction together with those positions. Every blocking transactional call runs on the Kafka
thread. On failure: an abortable error aborts, a fatal one replaces the producer (fencing the old
one), and both rewind the consumer to the committed offsets so the work is redone. A record the
broker refused inside an aborted transaction (its size) is remembered, so that when it comes back
it becomes a dead letter instead of aborting every transaction again.

Outputs are held until their transaction commits, so read them with ``isolation.level=read_committed``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from streams.metrics import WorkerMetrics
from streams.tracker import OffsetTracker, TopicPartitionKey
from streams.worker.clients import KafkaClients
from streams.worker.delivery import REFUSED
from streams.worker.health import HealthState
from streams.worker.records import Consumed, Output

logger = logging.getLogger(__name__)

TXN_TIMEOUT_S = 30.0


@dataclass
class _Queued:
    tp: TopicPartitionKey
    offset: int
    outputs: list[Output]


class Transactional:
    """Delivery in transactions; see the module docstring."""

    def __init__(
        self,
        clients: KafkaClients,
        tracker: OffsetTracker,
        metrics: WorkerMetrics,
        health: HealthState,
        rewind: Callable[[], Awaitable[None]],
    ) -> None:
        self.clients = clients
        self.tracker = tracker
        self.metrics = metrics
        self.health = health
        self._rewind = rewind
        self._queued: list[_Queued] = []
        self._refused: dict[tuple[TopicPartitionKey, int], str] = {}

    async def deliver(self, record: Consumed, outputs: list[Output]) -> None:
        """Queue the outputs for the next transaction (returns at once)."""
        self._queued.append(_Queued(record.tp, record.offset, outputs))

    def refusal(self, tp: TopicPartitionKey, offset: int) -> str | None:
        """Why the broker refused this record's output in an aborted transaction, if it did."""
        return self._refused.pop((tp, offset), None)

    def forget(self, keys: set[TopicPartitionKey]) -> None:
        """Drop queued outputs of partitions no longer owned (their new owner redoes them)."""
        self._queued = [q for q in self._queued if q.tp not in keys]

    async def commit(self, *, final: bool = False) -> None:
        """One transaction with every committable record's outputs and the partitions' positions."""
        positions = self.tracker.committable()
        if not positions:
            return
        emit = sorted(
            (q for q in self._queued if q.tp in positions and q.offset < positions[q.tp]),
            key=lambda q: (q.tp, q.offset),
        )
        try:
            await self.clients.call(self._transaction, emit, positions)
        except KafkaException as exc:
            await self._failed(exc)
            return
        emitted = set(map(id, emit))
        self._queued = [q for q in self._queued if id(q) not in emitted]
        self.tracker.mark_committed(positions)
        self.metrics.commits.inc()
        self.health.recovered("broker")
        for queued in emit:
            for output in queued.outputs:
                self.metrics.produced.labels(output.topic).inc()
                if output.on_ack is not None:
                    output.on_ack()

    def _transaction(self, emit: list[_Queued], positions: dict[TopicPartitionKey, int]) -> None:
        """Kafka thread: begin, produce, send the offsets, commit."""
        producer = self.clients.producer
        producer.begin_transaction()
        for queued in emit:
            report = self._reporter(queued.tp, queued.offset)
            for output in queued.outputs:
                while True:
                    try:
                        producer.produce(output.topic, value=output.value, key=output.key, on_delivery=report)
                        break
                    except BufferError:
                        producer.poll(0.05)  # the local queue is full: serve delivery reports, then retry
                    except KafkaException as exc:
                        error = exc.args[0] if exc.args else None
                        if isinstance(error, KafkaError) and error.code() in REFUSED:
                            self._refused[(queued.tp, queued.offset)] = error.str()
                        raise
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        metadata = self.clients.consumer.consumer_group_metadata()
        producer.send_offsets_to_transaction(offsets, metadata, TXN_TIMEOUT_S)
        producer.commit_transaction(TXN_TIMEOUT_S)

    def _reporter(self, tp: TopicPartitionKey, offset: int) -> Callable[[KafkaError | None, Message], None]:
        def report(err: KafkaError | None, _: Message) -> None:
            if err is not None:
                self.metrics.delivery_errors.labels(err.name()).inc()
                if err.code() in REFUSED:
                    self._refused[(tp, offset)] = err.str()

        return report

    async def _failed(self, exc: KafkaException) -> None:
        error = exc.args[0] if exc.args else None
        fatal = isinstance(error, KafkaError) and error.fatal()
        kind = "fatal" if fatal else "abortable"
        logger.warning("transaction failed (%s): %s; rewinding to the last committed offsets", kind, exc)
        self.health.failing("broker", f"transaction failed: {exc}")
        if fatal:
            await self.clients.renew_producer()
        else:
            with contextlib.suppress(KafkaException):
                await self.clients.call(self.clients.producer.abort_transaction, TXN_TIMEOUT_S)
        self._queued.clear()
        await self._rewind()

    def rewind_consumer(self) -> None:
        """Kafka thread: seek every owned partition back to its committed offset."""
        consumer = self.clients.consumer
        for committed in consumer.committed(consumer.assignment(), timeout=TXN_TIMEOUT_S):
            offset = committed.offset if committed.offset >= 0 else -2  # OFFSET_BEGINNING when none
            consumer.seek(TopicPartition(committed.topic, committed.partition, offset))
