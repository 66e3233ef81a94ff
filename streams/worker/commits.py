"""At-least-once offset commits: asynchronous on the poll path, synchronous where they must finish.

The periodic commit must never block the Kafka thread: a synchronous commit sent while the group is
rebalancing waits for the coordinator, and while it waits nothing is polled, on any partition (on
the embedded broker that stopped every partition's output for 3 s on each join). So periodic
commits are asynchronous: the result arrives in librdkafka's commit callback, on the Kafka thread,
and is handed to the event loop, where each partition's error is checked (as quix-streams'
``Checkpoint.commit`` does) and only accepted positions are marked committed. A commit on revoke
(inside the rebalance callback, before the partitions leave) and the last one on shutdown are
synchronous, because they must be done before what follows.
"""

from __future__ import annotations

import asyncio
import logging

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.metrics import WorkerMetrics
from streams.tracker import OffsetTracker, TopicPartitionKey
from streams.worker.clients import KafkaClients

logger = logging.getLogger(__name__)

Result = tuple[str, int, int, KafkaError | None]


class Committer:
    """Commits the tracker's positions; see the module docstring."""

    def __init__(self, clients: KafkaClients, tracker: OffsetTracker, metrics: WorkerMetrics) -> None:
        self.clients = clients
        self.tracker = tracker
        self.metrics = metrics
        self._pending: dict[TopicPartitionKey, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        clients.on_commit = self._on_commit

    async def commit(self) -> None:
        """Send an asynchronous commit of every position that moved and is not on its way already."""
        self._loop = asyncio.get_running_loop()
        positions = {tp: pos for tp, pos in self.tracker.committable().items() if self._pending.get(tp) != pos}
        if not positions:
            return
        self._pending.update(positions)
        await self.clients.call(self._send, positions)

    def _send(self, positions: dict[TopicPartitionKey, int]) -> None:
        """Kafka thread: hand the commit to librdkafka without waiting for the coordinator."""
        wanted = self._owned(positions)
        if not wanted:
            return
        try:
            self.clients.consumer.commit(offsets=_offsets(wanted), asynchronous=True)
        except KafkaException as exc:
            self._failed(wanted, exc)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's commit callback (Kafka thread): pass the result to the event loop."""
        results = [(p.topic, p.partition, p.offset, p.error or err) for p in partitions]
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._settle, results)

    def _settle(self, results: list[Result]) -> None:
        """Event loop: mark the accepted positions committed; the failed ones go again next time."""
        accepted: dict[TopicPartitionKey, int] = {}
        for topic, partition, offset, error in results:
            tp = (topic, partition)
            if self._pending.get(tp) == offset:
                del self._pending[tp]
            if error is not None:
                self.metrics.commit_failures.labels(error.name()).inc()
                logger.warning("offset commit failed for %s[%d] (will retry): %s", topic, partition, error.str())
            elif offset >= 0:
                accepted[tp] = offset
        if accepted:
            self.tracker.mark_committed(accepted)
            self.metrics.commits.inc()

    def commit_now(self, positions: dict[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
        """Kafka thread: commit synchronously (on revoke, on shutdown); returns what the broker accepted."""
        wanted = self._owned(positions)
        if not wanted:
            return {}
        try:
            results = self.clients.consumer.commit(offsets=_offsets(wanted), asynchronous=False)
        except KafkaException as exc:
            self._failed(wanted, exc)
            return {}
        accepted = {}
        for result in results or []:
            tp = (result.topic, result.partition)
            if result.error is not None:
                self.metrics.commit_failures.labels(result.error.name()).inc()
                logger.warning("offset commit failed for %s[%d] (will retry): %s", *tp, result.error.str())
            elif tp in wanted:
                accepted[tp] = wanted[tp]
        if accepted:
            self.metrics.commits.inc()
        return accepted

    async def commit_and_wait(self) -> None:
        """Commit what is committable synchronously (the last commit before leaving the group)."""
        positions = self.tracker.committable()
        if positions:
            self.tracker.mark_committed(await self.clients.call(self.commit_now, positions))

    def _owned(self, positions: dict[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
        owned = {(p.topic, p.partition) for p in self.clients.consumer.assignment()}
        for tp in set(positions) - owned:
            self._pending.pop(tp, None)
        return {tp: pos for tp, pos in positions.items() if tp in owned}

    def _failed(self, wanted: dict[TopicPartitionKey, int], exc: KafkaException) -> None:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        name = error.name() if error is not None else type(exc).__name__
        self.metrics.commit_failures.labels(name).inc(len(wanted))
        logger.warning("offset commit failed for %d partition(s) (will retry): %s", len(wanted), exc)
        for tp in wanted:
            self._pending.pop(tp, None)


def _offsets(positions: dict[TopicPartitionKey, int]) -> list[TopicPartition]:
    return [TopicPartition(t, p, o) for (t, p), o in positions.items()]
