"""Registry mode end to end: the real worker in-process with an in-memory registry (mock://), listings
from a Confluent serializer, every output read back with confluent-kafka's AvroDeserializer as a
Confluent user would, and a registry that is unreachable for a while."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import MockSchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.codec import Codec
from streams.codec.schemas import default_schemas
from streams.config import Settings
from streams.worker import Worker
from tagger.predict import Predictor
from tests.streams.worker_harness import PARTITIONS, listing, make_settings, running

pytestmark = pytest.mark.integration


class FlakyRegistry(MockSchemaRegistryClient):
    """confluent-kafka's in-memory registry that records compatibility settings and fails on cue.

    Only the worker's calls fail: the test's own thread (which writes listings and reads the outputs
    back through the same registry) is never refused, so it cannot use up an outage meant for the
    worker, nor fail itself where the worker would have retried.
    """

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        self.compatibility: dict[str, str] = {}
        self.unavailable = 0  # the worker's next N calls answer 503
        self._test_thread = threading.get_ident()

    def _maybe_fail(self) -> None:
        if self.unavailable > 0 and threading.get_ident() != self._test_thread:
            self.unavailable -= 1
            raise SchemaRegistryError(503, 50301, "Service Unavailable")

    def set_config(self, subject_name: str | None = None, config: Any = None) -> Any:
        self._maybe_fail()
        self.compatibility[str(subject_name)] = config.compatibility.value
        return config

    def register_schema(self, subject_name: str, schema: Schema, normalize_schemas: bool = False) -> int:
        self._maybe_fail()
        return super().register_schema(subject_name, schema, normalize_schemas)

    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Schema:
        self._maybe_fail()
        return super().get_schema(schema_id, *args, **kwargs)


def _confluent_listing(registry: FlakyRegistry, topic: str, record: dict[str, Any]) -> bytes:
    serializer = AvroSerializer(registry, default_schemas().current("listing_event").text)
    return serializer(record, SerializationContext(topic, MessageField.VALUE))


def _read_all(
    settings: Settings, registry: FlakyRegistry, want: Callable[[dict[str, list[Any]]], bool]
) -> dict[str, list[Any]]:
    kinds = {settings.topics.attributes: "attributes", settings.topics.review: "review", settings.topics.dlq: "dlq"}
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "unused"})
    consumer.assign([TopicPartition(t, p, -2) for t in kinds for p in range(PARTITIONS)])
    deserializer = AvroDeserializer(registry)
    seen: dict[str, list[Any]] = {"attributes": [], "review": [], "dlq": []}
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and not want(seen):
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            assert message.value()[:1] == b"\x00", "registry mode writes the Confluent wire format"
            context = SerializationContext(message.topic(), MessageField.VALUE)
            seen[kinds[message.topic()]].append(deserializer(message.value(), context))
    finally:
        consumer.close()
    assert want(seen), f"timed out; saw {[(k, len(v)) for k, v in seen.items()]}"
    return seen


def _produce(settings: Settings, *pairs: tuple[bytes, bytes]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    for key, value in pairs:
        producer.produce(settings.topics.listings, key=key, value=value)
    assert producer.flush(15) == 0


def _readyz(port: int | None) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_registry_mode_end_to_end(
    kafka_bootstrap: str, redis_url: str, prefix: str, images: str, rows: list[dict[str, str]], predictor: Predictor
) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, prefix, registry={"url": f"mock://{prefix}"})
    registry = FlakyRegistry({"url": f"mock://{prefix}"})
    c1 = listing("C1", [images + rows[0]["image"]], category=rows[0]["category"])
    s1 = listing("S1", [images + rows[1]["image"]], category=rows[1]["category"])
    confluent = _confluent_listing(registry, settings.topics.listings, c1)
    single_object = Codec().encode("listing_event", s1)
    worker = Worker(settings, predictor=predictor, registry_factory=lambda conf: registry)
    with running(worker):
        _produce(settings, (b"C1", confluent), (b"S1", single_object), (b"G1", b"not avro"))
        seen = _read_all(settings, registry, lambda s: len(s["attributes"]) >= 2 and len(s["dlq"]) >= 1)
    assert {e["listing_id"] for e in seen["attributes"]} == {"C1", "S1"}
    (letter,) = seen["dlq"]
    assert letter["reason"] == "undecodable" and letter["original_value"] == b"not avro"
    for request in seen["review"]:
        assert request["listing_id"] in {"C1", "S1"}
    t = settings.topics
    for topic in (t.attributes, t.review, t.dlq):
        assert registry.compatibility[f"{topic}-value"] == "FULL_TRANSITIVE"
    assert worker.metrics.value("swatch_dead_letters_total", {"reason": "undecodable"}) == 1


def test_an_unreachable_registry_is_waited_for_and_loses_nothing(
    kafka_bootstrap: str, redis_url: str, prefix: str, images: str, rows: list[dict[str, str]], predictor: Predictor
) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, prefix, registry={"url": f"mock://{prefix}"})
    registry = FlakyRegistry({"url": f"mock://{prefix}"})
    record = listing("R1", [images + rows[0]["image"]], category=rows[0]["category"])
    first = _confluent_listing(registry, settings.topics.listings, record)
    registry.unavailable = 6  # start-up: the output subjects cannot be registered for a while
    worker = Worker(settings, predictor=predictor, registry_factory=lambda conf: registry)
    _produce(settings, (b"R1", first))
    statuses: list[int] = []
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while worker.metrics_port is None and time.monotonic() < deadline:
            time.sleep(0.02)
        status, body = _readyz(worker.metrics_port)
        statuses.append(status)
        seen = _read_all(settings, registry, lambda s: len(s["attributes"]) >= 1)
        assert statuses[0] == 503 and body["reason"] in ("starting", "waiting for the schema registry")
        # Mid-run: a listing written with a schema id the worker has not seen yet, while the registry
        # fails its first lookups: retried, never dead-lettered.
        evolved = json.loads(default_schemas().current("listing_event").text)
        evolved["doc"] = "a new registration of the same fields"
        evolved["fields"][0]["doc"] = "changed doc, new schema id"
        serializer = AvroSerializer(registry, json.dumps(evolved))
        record = listing("R2", [images + rows[1]["image"]], category=rows[1]["category"])
        value = serializer(record, SerializationContext(settings.topics.listings, MessageField.VALUE))
        registry.unavailable = 3
        _produce(settings, (b"R2", value))
        seen = _read_all(settings, registry, lambda s: {e["listing_id"] for e in s["attributes"]} >= {"R1", "R2"})
        assert not seen["dlq"], "an unreachable registry never turns valid input into dead letters"
        assert worker.metrics.value("swatch_listing_retries_total", {"cause": "registry"}) >= 1
        assert _readyz(worker.metrics_port)[0] == 200
    finally:
        worker.stop()
        thread.join(60)
    assert not thread.is_alive()

