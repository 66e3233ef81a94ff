"""Publishing decisions: an idempotent confluent-kafka producer awaited from the event loop.

Faust's own producer (aiokafka) is not used for outputs: the worker's producer settings (acks=all,
idempotence, SASL/TLS, no auto-created topics) and the Avro codec apply unchanged this way, and a
decision is answered only after the broker acknowledged its events.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.codec import Codec
from streams.config import Settings
from streams.errors import CodecError, SwatchError
from streams.kafka import producer_config

ACK_TIMEOUT_S = 15.0


class PublishError(SwatchError):
    """The broker did not acknowledge an event; nothing was decided, the reviewer may retry."""


class Publisher:
    """Encodes records with the codec and produces them, one polling thread per publisher."""

    def __init__(self, settings: Settings, codec: Codec, bootstrap: str | None = None) -> None:
        conf = producer_config(settings.kafka, bootstrap)
        conf["client.id"] = f"{settings.kafka.client_id}-review"
        self._producer = Producer(conf)
        self._codec = codec
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="swatch-review-producer", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    async def send(self, topic: str, schema: str, key: str, record: dict[str, Any]) -> None:
        """Encode ``record`` as ``schema`` and produce it to ``topic``; returns once acknowledged."""
        await self.send_all([(topic, schema, key, record)])

    async def send_all(self, records: Sequence[tuple[str, str, str, dict[str, Any]]]) -> None:
        """Encode every ``(topic, schema, key, record)`` first, then produce them and await every ack.

        Encoding first means a registry that cannot be reached (or refuses a schema) fails the whole
        call before anything is produced: a decision never goes out half.
        """
        encoded = []
        for topic, schema, key, record in records:
            try:
                value = await asyncio.to_thread(self._codec.encode, schema, record, topic=topic)
            except CodecError as exc:
                raise PublishError(f"{topic}: cannot encode {schema}: {exc}") from exc
            encoded.append((topic, key, value))
        await asyncio.gather(*(self.send_bytes(topic, key, value) for topic, key, value in encoded))

    async def send_bytes(self, topic: str, key: str | None, value: bytes) -> None:
        """Produce an encoded value; returns once acknowledged, raises :class:`PublishError` otherwise."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(err: KafkaError | None) -> None:
            if done.done():
                return
            if err is None:
                done.set_result(None)
            else:
                done.set_exception(PublishError(f"{topic}: {err.str()}"))

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            loop.call_soon_threadsafe(settle, err)

        try:
            self._producer.produce(topic, key=None if key is None else key.encode(), value=value, on_delivery=delivered)
        except (BufferError, KafkaException) as exc:
            raise PublishError(f"{topic}: {exc}") from exc
        try:
            await asyncio.wait_for(done, ACK_TIMEOUT_S)
        except TimeoutError as exc:
            raise PublishError(f"{topic}: no acknowledgement within {ACK_TIMEOUT_S:.0f} s") from exc

    def close(self) -> None:
        """Deliver what is queued (up to 10 s) and stop the polling thread."""
        self._producer.flush(10)
        self._stop.set()
        self._thread.join(5)
