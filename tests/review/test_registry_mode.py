"""The review service in registry mode end to end: `swatch review` as a subprocess against a real HTTP
schema registry (tests/review/registry_server.py), the real broker and Redis.

Review requests and listing events arrive in the Confluent wire format; the decision's records are
read back as a downstream Confluent user would, with confluent-kafka's AvroDeserializer pointed at
the same registry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.codec import Codec
from streams.codec.schemas import default_schemas
from streams.config import Settings
from streams.events import listing_event
from tests.review.harness import Api, request_record, review_settings, running_review, wait_for
from tests.review.registry_server import RegistryServer, registry_server
from tests.streams.worker_harness import PARTITIONS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def registry() -> Iterator[RegistryServer]:
    with registry_server() as server:
        yield server


@pytest.fixture
def settings(kafka_bootstrap: str, redis_url: str, registry: RegistryServer) -> Settings:
    prefix = f"rr{os.getpid()}x{int(time.time() * 1000) % 100000}"
    return review_settings(kafka_bootstrap, redis_url, prefix, registry={"url": registry.url})


def produce_confluent(settings: Settings, topic: str, schema: str, *records: dict[str, Any]) -> list[bytes]:
    """Encode records in the Confluent wire format (registering under ``<topic>-value``) and send them."""
    codec = Codec.from_settings(settings.registry)
    assert codec.wire_format == "confluent"
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "enable.idempotence": True})
    values = []
    for record in records:
        value = codec.encode(schema, record, topic=topic)
        producer.produce(topic, key=record["listing_id"].encode(), value=value)
        values.append(value)
    assert producer.flush(15) == 0
    return values


def read_confluent(
    settings: Settings, registry: RegistryServer, topic: str, listing_id: str, *, expect: int, timeout_s: float = 20
) -> list[tuple[bytes, dict[str, Any]]]:
    """(raw value, decoded record) of one listing's records on ``topic``, decoded by AvroDeserializer."""
    client = SchemaRegistryClient({"url": registry.url})
    deserializer = AvroDeserializer(client)
    context = SerializationContext(topic, MessageField.VALUE)
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "unused"})
    consumer.assign([TopicPartition(topic, p, -2) for p in range(PARTITIONS)])
    mine: list[tuple[bytes, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout_s
    settle: float | None = None  # once ``expect`` arrived, a moment more: a duplicate would show up then
    try:
        while time.monotonic() < (deadline if settle is None else settle):
            message = consumer.poll(0.2)
            if message is not None and not message.error() and message.key() == listing_id.encode():
                raw = message.value()
                assert raw is not None, f"a tombstone on {topic}"
                mine.append((raw, deserializer(raw, context)))
            if settle is None and len(mine) >= expect:
                settle = time.monotonic() + 1.0
    finally:
        consumer.close()
        client.close()
    return mine


def pending(api: Api, listing_id: str) -> dict[str, Any] | None:
    """The queued item, or None while it is not (or no longer) queued."""
    status, body = api.call("GET", f"/api/items/{listing_id}")
    return dict(body["item"]) if status == 200 else None


def framed_id(registry: RegistryServer, raw: bytes, subject: str) -> int:
    """The schema id of a Confluent-framed value, checked against what the registry holds for ``subject``."""
    assert raw[:1] == b"\x00", f"not the Confluent wire format: starts with {raw[:2].hex()}"
    schema_id = int.from_bytes(raw[1:5], "big")
    assert schema_id in registry.ids(subject), (schema_id, subject, registry.ids(subject))
    return schema_id


def test_review_in_registry_mode_decodes_confluent_requests_and_publishes_confluent_records(
    settings: Settings, registry: RegistryServer, tmp_path: Any
) -> None:
    topics = settings.topics
    record = request_record("RG-1", 3)
    doomed = request_record("RG-2", 1)
    [request_value, _] = produce_confluent(settings, topics.review, "review_request", record, doomed)
    framed_id(registry, request_value, f"{topics.review}-value")

    with running_review(settings, tmp_path) as service:
        api = service.api
        item = wait_for(lambda: pending(api, "RG-1"), what="RG-1 queued")
        assert item["version"] == 3
        wait_for(lambda: api.call("GET", "/api/items/RG-2")[0] == 200, what="RG-2 queued")

        # A listing event in the Confluent format takes RG-2 out: the listings agent decodes by id too.
        delete = listing_event("RG-2", 1, merchant_id="m", category_path=["women"], image_urls=[], operation="DELETE")
        produce_confluent(settings, topics.listings, "listing_event", delete)
        wait_for(lambda: api.call("GET", "/api/items/RG-2")[0] == 404, what="the Confluent-framed delete")

        status, answer = api.post(
            "/api/items/RG-1/decision",
            {
                "decision_id": "rg-1-first",
                "version": 3,
                "attributes": [{"name": "colour", "action": "CORRECTED", "values": ["black"]}],
            },
        )
        assert status == 200, (answer, service.log_tail())
        assert api.call("GET", "/api/items/RG-1")[0] == 404

    [(decision_raw, decision)] = read_confluent(settings, registry, topics.decisions, "RG-1", expect=1)
    [(attributes_raw, attributes)] = read_confluent(settings, registry, topics.attributes, "RG-1", expect=1)

    decision_id = framed_id(registry, decision_raw, f"{topics.decisions}-value")
    attributes_id = framed_id(registry, attributes_raw, f"{topics.attributes}-value")
    schemas = default_schemas()
    assert registry.schema_text(decision_id) == schemas.current("review_decision").text
    assert registry.schema_text(attributes_id) == schemas.current("attribute_event").text
    for topic in (topics.decisions, topics.attributes):
        assert registry.state.config.get(f"{topic}-value") == "FULL_TRANSITIVE", registry.state.config

    assert decision["event_id"] == answer["decision_event_id"] and decision["reviewer"] == "alice"
    assert decision["review_event_id"] == record["event_id"] and decision["listing_version"] == 3
    [colour] = decision["decisions"]
    assert (colour["name"], colour["action"], colour["values"], colour["previous_values"]) == (
        "colour",
        "CORRECTED",
        ["black"],
        ["navy"],
    )
    assert attributes["event_id"] == answer["attribute_event_id"] and attributes["review_pending"] is False
    assert [(a["name"], a["value"], a["source"]) for a in attributes["attributes"]] == [("colour", "black", "HUMAN")]
    assert registry.state.unknown == [], f"the registry was asked for paths it does not serve: {registry.state.unknown}"


CORRECT_COLOUR = {"attributes": [{"name": "colour", "action": "CORRECTED", "values": ["black"]}]}


@pytest.mark.parametrize("failing", ["every subject", "the attributes subject"])
def test_a_registry_outage_fails_the_decision_cleanly_and_a_retry_succeeds(
    settings: Settings, registry: RegistryServer, tmp_path: Any, failing: str
) -> None:
    topics = settings.topics
    record = request_record("RO-1")
    produce_confluent(settings, topics.review, "review_request", record)
    body = {"decision_id": "ro-1", "version": 1, **CORRECT_COLOUR}
    with running_review(settings, tmp_path) as service:
        api = service.api
        wait_for(lambda: pending(api, "RO-1"), what="RO-1 queued")
        # The service registers its output schemas on its first decision: the registry fails then.
        registry.outage(only=f"{topics.attributes}-value" if failing == "the attributes subject" else None)
        status, answer = api.post("/api/items/RO-1/decision", body)
        registry.recover()
        assert registry.state.refused > 0
        outcome = (status, answer.get("code") if isinstance(answer, dict) else answer)
        assert pending(api, "RO-1") is not None, "nothing was decided: the item is still pending"
        status_again, again = api.post("/api/items/RO-1/decision", body)
        assert status_again == 200 and again["status"] == "decided", (status_again, again)
        assert outcome == (503, "publish_failed"), outcome
    decisions = read_confluent(settings, registry, topics.decisions, "RO-1", expect=1, timeout_s=10)
    attributes = read_confluent(settings, registry, topics.attributes, "RO-1", expect=1, timeout_s=10)
    assert [d["event_id"] for _, d in decisions] == [again["decision_event_id"]], "exactly one decision"
    assert [a["event_id"] for _, a in attributes] == [again["attribute_event_id"]]


def test_a_review_request_arriving_during_a_registry_outage_is_queued_once_it_is_back(
    settings: Settings, registry: RegistryServer, tmp_path: Any
) -> None:
    topics = settings.topics
    produce_confluent(settings, topics.review, "review_request", request_record("RO-2"))
    registry.outage()  # before the service first looks the request's schema id up
    with running_review(settings, tmp_path) as service:
        wait_for(lambda: registry.state.refused >= 4, what="the service's lookups to fail")  # 1 try + 3 retries
        time.sleep(1.0)
        registry.recover()
        wait_for(lambda: pending(service.api, "RO-2"), timeout_s=15, what="RO-2 queued after the outage")
