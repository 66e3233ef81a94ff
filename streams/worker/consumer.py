"""The consumer loop: poll, dispatch, backpressure, periodic commits, rebalances, and the facts health needs.

Every consumer call runs on the Kafka thread (:class:`streams.worker.clients.KafkaClients`), so
librdkafka runs the rebalance callbacks there too. A revoke waits (up to ``revoke_timeout_s``) for
the event loop to finish the revoked partitions' work, commits what finished (each partition's
error checked), and drops the rest, all before the revoke returns; in transactional mode the work
is dropped at once (it is redone by the new owner, its outputs were never committed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from streams.codec import now_millis
from streams.config import Settings
from streams.metrics import WorkerMetrics
from streams.tracker import OffsetTracker, TopicPartitionKey
from streams.worker.clients import KafkaClients
from streams.worker.delivery import AtLeastOnce, Delivery
from streams.worker.health import HealthState
from streams.worker.jobs import JobRunner, WorkerError
from streams.worker.pausing import Action, Backpressure
from streams.worker.records import Consumed

logger = logging.getLogger(__name__)

MAX_POLL_BATCH = 500
OBSERVE_EVERY_S = 1.0  # health facts are bounds of minutes: no need to gather them on every poll


class ConsumerLoop:
    """Drives the consumer until ``stopping()`` is true; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        clients: KafkaClients,
        *,
        runner: JobRunner,
        tracker: OffsetTracker,
        delivery: Delivery,
        metrics: WorkerMetrics,
        health: HealthState,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.runner = runner
        self.tracker = tracker
        self.delivery = delivery
        self.metrics = metrics
        self.health = health
        self.assigned: set[TopicPartitionKey] = set()
        self.backpressure = Backpressure(settings.batch.max_in_flight)
        self._observed = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._moved: dict[TopicPartitionKey, tuple[int | None, float]] = {}

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Poll and dispatch until asked to stop; commits every commit (or transaction) interval."""
        self._loop = asyncio.get_running_loop()
        worker = self.settings.worker
        interval = (worker.transaction_interval_ms if self.clients.transactional else worker.commit_interval_ms) / 1000
        last_commit = time.monotonic()
        consumer = self.clients.consumer
        while not stopping():
            await self._apply_backpressure()
            room = self.backpressure.room(self.tracker.in_flight())
            messages = await self.clients.call(consumer.consume, min(MAX_POLL_BATCH, room), 0.1)
            received = now_millis()
            for message in messages:
                self._dispatch(message, received)
            if time.monotonic() - last_commit >= interval:
                last_commit = time.monotonic()
                await self.delivery.commit()
            self._observe()
            if not messages:
                await asyncio.sleep(0)  # let tasks run between empty polls

    def _dispatch(self, message: Message, received_ms: int) -> None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise WorkerError(f"fatal consumer error: {error.str()}")
            if error.code() != KafkaError._PARTITION_EOF:
                logger.warning("consumer error: %s", error.str())
            return
        record = Consumed.of(message, received_ms)
        if record.tp not in self.assigned:
            return  # fetched before a revoke; the new owner reads it again
        self.metrics.consumed.labels(record.topic).inc()
        self.runner.start(record)

    async def _apply_backpressure(self) -> None:
        in_flight = self.tracker.in_flight()
        action = self.backpressure.update(in_flight)
        if action is Action.PAUSE:
            count = await self.clients.call(self._pause_all)
            self.metrics.pauses.inc()
            logger.info("paused %d partition(s): %d listings in flight", count, in_flight)
        elif action is Action.RESUME:
            await self.clients.call(self._resume_all)
            self.metrics.paused.set(0)
            logger.info("resumed partitions: %d listings in flight", in_flight)

    def _pause_all(self) -> int:
        consumer = self.clients.consumer
        partitions = consumer.assignment()
        if partitions:
            consumer.pause(partitions)
        self.metrics.paused.set(len(partitions))
        return len(partitions)

    def _resume_all(self) -> None:
        consumer = self.clients.consumer
        partitions = consumer.assignment()
        if partitions:
            consumer.resume(partitions)

    def _observe(self) -> None:
        """Facts for /healthz, once a second: the oldest listing in flight, partitions whose commit is stuck."""
        now = time.monotonic()
        if now - self._observed < OBSERVE_EVERY_S:
            return
        self._observed = now
        bound = self.health.stuck_after_s
        stuck = []
        for tp in sorted(self.assigned):
            position = self.tracker.committed(tp)
            previous = self._moved.get(tp)
            if not self.tracker.in_flight({tp}) or previous is None or previous[0] != position:
                self._moved[tp] = (position, now)
            elif now - previous[1] > bound:
                stuck.append(f"{tp[0]}[{tp[1]}]")
        for tp in set(self._moved) - self.assigned:
            del self._moved[tp]
        self.health.stuck_partitions = tuple(stuck)
        self.health.oldest_in_flight_s = self.runner.oldest_age()

    # -- rebalances (Kafka thread) ----------------------------------------------------------------

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """New partitions: track them, and pause them at once if the worker is paused."""
        keys = {(p.topic, p.partition) for p in partitions}
        self.assigned |= keys
        self.metrics.assigned.set(len(self.assigned))
        self.metrics.rebalances.labels("assign").inc()
        if self.backpressure.paused and partitions:
            consumer.pause(partitions)
        logger.info("assigned %s", sorted(keys))

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions leave in a rebalance: finish what can finish, commit it, drop the rest."""
        self._release(partitions, lost=False)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions were lost (session expired): drop their work without committing."""
        self._release(partitions, lost=True)

    def _release(self, partitions: list[TopicPartition], *, lost: bool) -> None:
        keys = {(p.topic, p.partition) for p in partitions}
        self.metrics.rebalances.labels("lost" if lost else "revoke").inc()
        if not keys or self._loop is None:
            self.assigned -= keys
            return
        transactional = self.clients.transactional
        wait_s = 0.0 if lost or transactional else self.settings.worker.revoke_timeout_s
        started = time.monotonic()
        future = asyncio.run_coroutine_threadsafe(self.settle(keys, wait_s), self._loop)
        try:
            positions = future.result(timeout=wait_s + 30)
        except Exception as exc:  # the loop is gone (shutdown): nothing more to finish
            logger.warning("could not settle revoked partitions: %s", exc)
            positions = {}
        settled = time.monotonic()
        self.assigned -= keys
        self.metrics.assigned.set(len(self.assigned))
        if positions and not lost and isinstance(self.delivery, AtLeastOnce):
            self.delivery.commit_now(positions)
        logger.info(
            "%s %s (work settled in %.2fs, commit %.2fs)",
            "lost" if lost else "revoked",
            sorted(keys),
            settled - started,
            time.monotonic() - settled,
        )

    async def settle(self, keys: set[TopicPartitionKey], wait_s: float) -> dict[TopicPartitionKey, int]:
        """Event loop: wait up to ``wait_s`` for the partitions' jobs, drop the rest, return commit positions."""
        deadline = time.monotonic() + wait_s
        while self.tracker.in_flight(keys) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        positions = self.tracker.committable(keys)
        await self.runner.drop(keys)
        return positions
