"""Delivery: outputs to the broker and offsets to the group, at-least-once or in transactions.

Both modes sit behind one interface over the :class:`streams.tracker.OffsetTracker`:

- :meth:`Delivery.deliver` takes one listing's outputs. At-least-once produces them one after
  another (each after the previous one is acknowledged, so an attribute event never promises a
  review request the broker refused) and returns when all are acknowledged; transactional mode
  queues them for the next transaction and returns at once.
- :meth:`Delivery.commit` runs every commit interval. Every commit checks each partition's error
  (as quix-streams' ``Checkpoint.commit`` does): only positions the broker accepted count. At
  least once commits asynchronously (:mod:`streams.worker.commits`), so a commit never blocks polling.

Broker errors, by owner: a refused record (``MSG_SIZE_TOO_LARGE`` and the like) raises
:class:`OutputRefusedError`, and the listing becomes a dead letter; a retriable error (timeouts,
transport, leader changes, an unknown topic) is retried here with backoff while health shows the
broker as failing; a fatal or non-retriable one raises :class:`streams.errors.FatalError`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, Message

from streams.errors import FatalError, SwatchError
from streams.metrics import WorkerMetrics
from streams.tracker import OffsetTracker, TopicPartitionKey
from streams.worker.clients import KafkaClients
from streams.worker.commits import Committer
from streams.worker.health import HealthState
from streams.worker.records import Consumed, Output

logger = logging.getLogger(__name__)

REFUSED = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_MSG,
    }
)
TRANSIENT = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
    }
)
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 10.0


class OutputRefusedError(SwatchError):
    """The broker refused one output for good (its size or content): the listing becomes a dead letter."""

    def __init__(self, output: Output, error: KafkaError) -> None:
        super().__init__(f"the broker refused the {output.kind} output ({output.size} bytes): {error.str()}")
        self.output = output
        self.error = error


def backoff(attempt: int) -> float:
    """Full-jitter exponential backoff before retry ``attempt`` (0-based)."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))  # noqa: S311 - jitter, not crypto


class Delivery(Protocol):
    """What the worker needs from a delivery mode."""

    async def deliver(self, record: Consumed, outputs: list[Output]) -> None:
        """Produce (or queue) one record's outputs."""

    async def commit(self, *, final: bool = False) -> None:
        """Commit what is committable now (``final``: the last commit before leaving, and wait for it)."""

    def refusal(self, tp: TopicPartitionKey, offset: int) -> str | None:
        """Why the broker refused this record's output earlier (transactional mode), if it did."""

    def forget(self, keys: set[TopicPartitionKey]) -> None:
        """Drop what is held for partitions no longer owned."""


class AtLeastOnce:
    """Outputs acknowledged before offsets are committed; a redelivery repeats outputs with the same ids."""

    def __init__(
        self, clients: KafkaClients, tracker: OffsetTracker, metrics: WorkerMetrics, health: HealthState
    ) -> None:
        self.clients = clients
        self.tracker = tracker
        self.metrics = metrics
        self.health = health
        self.committer = Committer(clients, tracker, metrics)

    async def deliver(self, record: Consumed, outputs: list[Output]) -> None:
        """Produce the outputs one after another, each once the previous one is acknowledged."""
        for output in outputs:
            await self._send(output)

    def refusal(self, tp: TopicPartitionKey, offset: int) -> str | None:
        """Never: refusals are raised by :meth:`deliver` as they happen."""
        return None

    def forget(self, keys: set[TopicPartitionKey]) -> None:
        """Nothing is held: outputs are produced as soon as they are decided."""

    async def _send(self, output: Output) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            acked: asyncio.Future[KafkaError | None] = loop.create_future()

            def delivered(err: KafkaError | None, _: Message, acked: asyncio.Future[KafkaError | None] = acked) -> None:
                if not acked.done():
                    acked.set_result(err)

            error = await self._produce(output, delivered)
            if error is None:
                error = await acked
            if error is None:
                self.metrics.produced.labels(output.topic).inc()
                self.health.recovered("broker")
                if output.on_ack is not None:
                    output.on_ack()
                return
            self._classify(output, error)
            delay = backoff(attempt)
            attempt += 1
            logger.warning(
                "output to %s not acknowledged (%s); retry %d in %.2fs", output.topic, error.str(), attempt, delay
            )
            self.metrics.retries.labels("broker").inc()
            await asyncio.sleep(delay)

    async def _produce(
        self, output: Output, delivered: Callable[[KafkaError | None, Message], None]
    ) -> KafkaError | None:
        """Hand the output to the producer, waiting while its local queue is full; a refusal is returned."""
        while True:
            producer = self.clients.producer
            try:
                producer.produce(output.topic, value=output.value, key=output.key, on_delivery=delivered)
                return None
            except BufferError:
                producer.poll(0)
                await asyncio.sleep(0.01)  # the queue drains as the broker acknowledges
            except KafkaException as exc:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if error is None:
                    raise
                return error

    def _classify(self, output: Output, error: KafkaError) -> None:
        """Raise for errors that retrying cannot fix; return for retriable ones."""
        self.metrics.delivery_errors.labels(error.name()).inc()
        if error.fatal():
            raise FatalError(f"fatal producer error on {output.topic}: {error.str()}")
        if error.code() in REFUSED:
            raise OutputRefusedError(output, error)
        if error.code() in TRANSIENT or error.retriable():
            self.health.failing("broker", f"{output.topic}: {error.str()}")
            return
        raise FatalError(f"output to {output.topic} not acknowledged: {error.str()}")

    async def commit(self, *, final: bool = False) -> None:
        """Commit every partition's contiguous finished position (asynchronously; synchronously when ``final``)."""
        if final:
            await self.committer.commit_and_wait()
        else:
            await self.committer.commit()

    def commit_now(self, positions: dict[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
        """Kafka thread: commit synchronously (on revoke); returns what the broker accepted."""
        return self.committer.commit_now(positions)
