"""At-least-once delivery against a producer and a consumer that fail on cue (no broker)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.config import Settings
from streams.errors import FatalError
from streams.metrics import WorkerMetrics
from streams.tracker import OffsetTracker
from streams.worker.clients import KafkaClients
from streams.worker.delivery import AtLeastOnce, OutputRefusedError
from streams.worker.health import HealthState
from streams.worker.records import Output
from tests.streams.worker.fakes import consumed

Callback = Callable[[KafkaError | None, Any], None]


class FakeProducer:
    """Queues records; ``poll`` reports each with the next scripted error (None = acknowledged)."""

    def __init__(self) -> None:
        self.errors: deque[KafkaError | None] = deque()
        self.buffer_full = 0
        self.refuse_locally: KafkaError | None = None
        self.pending: list[tuple[str, Callback]] = []
        self.acknowledged: list[str] = []

    def produce(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, on_delivery: Callback | None = None
    ) -> None:
        if self.buffer_full:
            self.buffer_full -= 1
            raise BufferError("Local: Queue full")
        if self.refuse_locally is not None:
            raise KafkaException(self.refuse_locally)
        assert on_delivery is not None
        self.pending.append((topic, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        served, self.pending = self.pending, []
        for topic, callback in served:
            error = self.errors.popleft() if self.errors else None
            if error is None:
                self.acknowledged.append(topic)
            callback(error, None)
        return len(served)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


@dataclass
class _Result:
    topic: str
    partition: int
    offset: int
    error: KafkaError | None = None


@dataclass
class FakeConsumer:
    """An assignment and a commit that can fail per partition or as a whole."""

    owned: list[TopicPartition] = field(default_factory=lambda: [TopicPartition("in", 0), TopicPartition("in", 1)])
    partition_errors: dict[int, KafkaError] = field(default_factory=dict)
    whole_error: KafkaError | None = None
    commits: list[list[tuple[int, int]]] = field(default_factory=list)
    conf: dict[str, Any] = field(default_factory=dict)
    answered: list[list[_Result]] = field(default_factory=list)  # async results, served by consume()

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        pass

    def assignment(self) -> list[TopicPartition]:
        return self.owned

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> list[_Result] | None:
        if self.whole_error is not None:
            raise KafkaException(self.whole_error)
        self.commits.append([(o.partition, o.offset) for o in offsets])
        results = [_Result(o.topic, o.partition, o.offset, self.partition_errors.get(o.partition)) for o in offsets]
        if asynchronous:
            self.answered.append(results)  # like librdkafka: the answer comes later, inside consume()
            return None
        return results

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        while self.answered:
            self.conf["on_commit"](None, self.answered.pop(0))
        return []

    def close(self) -> None:
        pass


class Rig:
    def __init__(self) -> None:
        self.producer = FakeProducer()
        self.consumer = FakeConsumer()
        self.metrics = WorkerMetrics()
        self.health = HealthState()
        self.tracker = OffsetTracker()
        settings = Settings(kafka={"bootstrap": "127.0.0.1:9"})
        self.clients = KafkaClients(
            settings,
            producer_factory=lambda conf: self.producer,  # type: ignore[arg-type,return-value]
            consumer_factory=self._consumer_with,  # type: ignore[arg-type]
        )
        self.delivery = AtLeastOnce(self.clients, self.tracker, self.metrics, self.health)

    def _consumer_with(self, conf: dict[str, Any]) -> FakeConsumer:
        self.consumer.conf = conf
        return self.consumer

    async def started(self) -> asyncio.Task[None]:
        await self.clients.start(lambda *a: None, lambda *a: None, lambda *a: None)

        async def poller() -> None:
            while True:
                self.producer.poll()
                await asyncio.sleep(0.001)

        return asyncio.get_running_loop().create_task(poller())


def _outputs(acks: list[str]) -> list[Output]:
    return [
        Output("review", "review", b"L1", b"r", lambda: acks.append("review")),
        Output("attributes", "attrs", b"L1", b"a", lambda: acks.append("attributes")),
    ]


def test_outputs_go_one_after_another_and_ack_hooks_run() -> None:
    rig = Rig()
    acks: list[str] = []

    async def main() -> None:
        poller = await rig.started()
        rig.producer.buffer_full = 3  # the local queue is full for a while: wait, do not block the loop
        await rig.delivery.deliver(consumed(b"x"), _outputs(acks))
        poller.cancel()

    asyncio.run(main())
    assert acks == ["review", "attributes"] and rig.producer.acknowledged == ["review", "attrs"]
    assert rig.metrics.value("swatch_events_produced_total", {"topic": "attrs"}) == 1


def test_retriable_errors_are_retried_and_health_shows_the_broker_failing_meanwhile() -> None:
    rig = Rig()
    acks: list[str] = []
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out", retriable=True)
    seen: list[dict[str, str]] = []

    async def main() -> None:
        poller = await rig.started()
        rig.producer.errors.extend([timed_out, timed_out])

        async def watch() -> None:
            while not acks:
                if rig.health.degraded:
                    seen.append(dict(rig.health.degraded))
                await asyncio.sleep(0.001)

        await asyncio.gather(rig.delivery.deliver(consumed(b"x"), _outputs(acks)[:1]), watch())
        poller.cancel()

    asyncio.run(main())
    assert acks == ["review"] and seen and "broker" in seen[0]
    assert rig.health.degraded == {}, "recovered after the acknowledgement"
    assert rig.metrics.value("swatch_delivery_errors_total", {"error": "_MSG_TIMED_OUT"}) == 2


@pytest.mark.parametrize("where", ["broker", "local"])
def test_a_refused_record_raises_for_the_dead_letter_path(where: str) -> None:
    rig = Rig()
    too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")

    async def main() -> None:
        poller = await rig.started()
        if where == "broker":
            rig.producer.errors.append(too_large)
        else:
            rig.producer.refuse_locally = too_large
        try:
            with pytest.raises(OutputRefusedError, match="Message size too large"):
                await rig.delivery.deliver(consumed(b"x"), _outputs([]))
        finally:
            poller.cancel()

    asyncio.run(main())


def test_fatal_and_unknown_errors_stop_the_worker() -> None:
    rig = Rig()

    async def main() -> None:
        poller = await rig.started()
        rig.producer.errors.append(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
        with pytest.raises(FatalError, match="fatal producer error"):
            await rig.delivery.deliver(consumed(b"x"), _outputs([])[:1])
        rig.producer.errors.append(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "not authorised"))
        with pytest.raises(FatalError, match="not authorised"):
            await rig.delivery.deliver(consumed(b"x"), _outputs([])[:1])
        poller.cancel()

    asyncio.run(main())


def test_commit_checks_every_partitions_error() -> None:
    rig = Rig()
    for partition in (0, 1):
        rig.tracker.start(("in", partition), 10)
        rig.tracker.finish(("in", partition), 10)
    rig.consumer.partition_errors[1] = KafkaError(KafkaError.REBALANCE_IN_PROGRESS, "rebalance in progress")

    async def answered() -> None:
        """librdkafka serves commit results inside consume(); the loop gets them right after."""
        await rig.clients.call(rig.consumer.consume, 10, 0)
        await asyncio.sleep(0.01)

    async def main() -> None:
        await rig.clients.start(lambda *a: None, lambda *a: None, lambda *a: None)
        await rig.delivery.commit()
        assert rig.tracker.committable() == {("in", 0): 11, ("in", 1): 11}, "nothing is marked before the answer"
        await rig.delivery.commit()
        assert len(rig.consumer.commits) == 1, "a commit on its way is not sent twice"
        await answered()
        assert rig.tracker.committable() == {("in", 1): 11}, "the failed partition is committed again next time"
        rig.consumer.partition_errors.clear()
        await rig.delivery.commit()
        await answered()
        assert rig.tracker.committable() == {}
        rig.tracker.start(("in", 0), 11)
        rig.tracker.finish(("in", 0), 11)
        rig.consumer.whole_error = KafkaError(KafkaError._TRANSPORT, "broker down")
        await rig.delivery.commit()
        assert rig.tracker.committable() == {("in", 0): 12}
        rig.consumer.whole_error = None
        await rig.delivery.commit(final=True)  # the last one, synchronous
        assert rig.tracker.committable() == {}
        await rig.clients.stop()

    asyncio.run(main())
    assert rig.metrics.value("swatch_offset_commit_failures_total", {"error": "REBALANCE_IN_PROGRESS"}) == 1
    assert rig.metrics.value("swatch_offset_commit_failures_total", {"error": "_TRANSPORT"}) == 1
