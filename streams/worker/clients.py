"""The Kafka clients and the one thread that runs every blocking call on them.

:class:`KafkaClients` builds the consumer and the producer from the settings with injectable
factories (a test hands in a client that fails on cue) and owns the "Kafka thread": every consumer
call (consume, pause, resume, commit, close) and every blocking producer call (the transactional
API, flush) runs there, so rebalance callbacks, which librdkafka runs inside ``consume``, also run
there and may wait for the event loop. Non-blocking ``produce`` and ``poll(0)`` are called from the
event loop (librdkafka's producer is thread-safe), so delivery reports arrive on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from streams.config import Settings
from streams.errors import SwatchError
from streams.kafka import consumer_config, producer_config
from streams.threads import named_pool

logger = logging.getLogger(__name__)

T = TypeVar("T")
ConsumerFactory = Callable[[dict[str, Any]], Consumer]
ProducerFactory = Callable[[dict[str, Any]], Producer]
RebalanceCallback = Callable[[Consumer, list[TopicPartition]], None]


class ClientsNotRunningError(SwatchError):
    """A Kafka client was used before :meth:`KafkaClients.start` or after :meth:`KafkaClients.stop`."""


class KafkaClients:
    """The worker's consumer and producer, and the thread their blocking calls run on."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str | None = None,
        *,
        consumer_factory: ConsumerFactory | None = None,
        producer_factory: ProducerFactory | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap or settings.kafka.bootstrap
        self.transactional_id = settings.worker.transactional_id
        self._consumer_factory: ConsumerFactory = consumer_factory or Consumer
        self._producer_factory: ProducerFactory = producer_factory or Producer
        self._thread = named_pool(1, "swatch-kafka")
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self.on_commit: Callable[[KafkaError | None, list[TopicPartition]], None] | None = None

    @property
    def transactional(self) -> bool:
        """Whether outputs and offsets commit in transactions."""
        return self.transactional_id is not None

    @property
    def consumer(self) -> Consumer:
        """The live consumer."""
        if self._consumer is None:
            raise ClientsNotRunningError("the consumer is not running")
        return self._consumer

    @property
    def producer(self) -> Producer:
        """The live producer."""
        if self._producer is None:
            raise ClientsNotRunningError("the producer is not running")
        return self._producer

    @property
    def producer_or_none(self) -> Producer | None:
        """The producer when there is one (the poller's view)."""
        return self._producer

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking client call on the Kafka thread (never from inside a rebalance callback)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    async def start(
        self, on_assign: RebalanceCallback, on_revoke: RebalanceCallback, on_lost: RebalanceCallback
    ) -> None:
        """Create the producer (initialising transactions when configured), then subscribe the consumer."""
        self._producer = await self.call(self._new_producer)
        self._consumer = await self.call(self._new_consumer, on_assign, on_revoke, on_lost)

    async def renew_producer(self) -> None:
        """Replace a producer that hit a fatal error (transactional mode), fencing the old one."""
        old, self._producer = self._producer, None
        if old is not None:
            await self.call(old.flush, 5)
        self._producer = await self.call(self._new_producer)

    def _new_producer(self) -> Producer:
        conf = producer_config(self.settings.kafka, self.bootstrap)
        if self.transactional_id is not None:
            conf["transactional.id"] = self.transactional_id
        producer = self._producer_factory(conf)
        if self.transactional_id is not None:
            producer.init_transactions(30)
        self._learn_output_topics(producer)
        return producer

    def _learn_output_topics(self, producer: Producer) -> None:
        """Fetch the output topics' metadata now, not with the first listing's outputs (a round trip each)."""
        topics = self.settings.topics
        for topic in (topics.attributes, topics.review, topics.dlq):
            try:
                producer.list_topics(topic, timeout=2)
            except Exception as exc:  # best effort: the first produce learns it anyway
                logger.debug("no metadata for %s yet: %s", topic, exc)

    def _new_consumer(
        self, on_assign: RebalanceCallback, on_revoke: RebalanceCallback, on_lost: RebalanceCallback
    ) -> Consumer:
        conf = consumer_config(self.settings.kafka, bootstrap=self.bootstrap)
        conf["on_commit"] = self._committed  # results of asynchronous commits, served inside consume()
        if self.settings.worker.instance_id:
            conf["group.instance.id"] = self.settings.worker.instance_id
        if self.transactional_id is not None:
            conf["isolation.level"] = "read_committed"
        consumer = self._consumer_factory(conf)
        consumer.subscribe([self.settings.topics.listings], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        return consumer

    def _committed(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if self.on_commit is not None:
            self.on_commit(err, partitions)

    async def flush(self, timeout_s: float) -> int:
        """Deliver what the producer still holds, for at most ``timeout_s``; returns what is left."""
        if self._producer is None:
            return 0
        return int(await self.call(self._producer.flush, max(0.0, timeout_s)))

    async def stop(self) -> None:
        """Close the consumer (leaving the group), drop the producer, end the Kafka thread."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await self.call(consumer.close)
            except Exception:  # closing must not hide the reason the worker stops
                logger.exception("closing the consumer failed")
        self._producer = None  # librdkafka's threads go with the last reference
        self._thread.shutdown(wait=True)
