"""Kafka client settings, and events through a real broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from streams.codec import Codec
from streams.config import KafkaSettings
from streams.errors import ConfigError
from streams.kafka import admin_config, consumer_config, producer_config
from tests.streams.codec.records import REALISTIC, plain


def test_security_settings_reach_every_client() -> None:
    kafka = KafkaSettings(
        bootstrap="k:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="swatch",
        sasl_password="pw",  # type: ignore[arg-type]
        ssl_ca_location="/etc/ssl/ca.pem",
    )
    for conf in (producer_config(kafka), consumer_config(kafka), admin_config(kafka)):
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.password"] == "pw"
        assert conf["ssl.ca.location"] == "/etc/ssl/ca.pem"
        assert "ssl.key.password" not in conf


def test_delivery_settings() -> None:
    kafka = KafkaSettings(bootstrap="k:9092", session_timeout_ms=6000)
    assert producer_config(kafka)["enable.idempotence"] is True
    consumer = consumer_config(kafka, "g")
    assert consumer["enable.auto.commit"] is False
    assert consumer["partition.assignment.strategy"] == "cooperative-sticky"
    assert consumer["heartbeat.interval.ms"] == 2000


def test_operator_extras_win() -> None:
    kafka = KafkaSettings(bootstrap="k:9092", extra={"linger.ms": "50", "client.rack": "az1"})
    assert producer_config(kafka)["linger.ms"] == "50"
    assert consumer_config(kafka)["client.rack"] == "az1"
    assert admin_config(kafka)["client.rack"] == "az1"


def test_no_bootstrap_says_how_to_fix() -> None:
    with pytest.raises(ConfigError, match="SWATCH_KAFKA_BOOTSTRAP"):
        producer_config(KafkaSettings())


@pytest.mark.integration
def test_listing_event_through_the_broker_is_decoded_intact(
    kafka_bootstrap: str, make_topic: Callable[..., str], consumer_conf: Callable[..., dict[str, Any]]
) -> None:
    topic = make_topic(partitions=2)
    codec = Codec()
    record = REALISTIC["listing_event"]
    producer = Producer(producer_config(KafkaSettings(bootstrap=kafka_bootstrap)))
    acks: list[Any] = []
    producer.produce(
        topic, key=b"L-1", value=codec.encode("listing_event", record), on_delivery=lambda err, msg: acks.append(err)
    )
    assert producer.flush(15) == 0 and acks == [None]

    consumer = Consumer(consumer_conf())
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        msg = None
        while msg is None and time.monotonic() < deadline:
            polled = consumer.poll(0.5)
            if polled is not None and not polled.error():
                msg = polled
        assert msg is not None, "the listing event never arrived"
        assert msg.key() == b"L-1"
        assert plain(codec.decode("listing_event", msg.value())) == plain(record)
    finally:
        consumer.close()


@pytest.mark.integration
def test_two_members_of_a_group_share_four_partitions(
    kafka_bootstrap: str, make_topic: Callable[..., str], consumer_conf: Callable[..., dict[str, Any]]
) -> None:
    topic = make_topic(partitions=4)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition in range(4):
        for i in range(10):
            producer.produce(topic, key=f"k{i}".encode(), value=f"{partition}:{i}".encode(), partition=partition)
    assert producer.flush(15) == 0

    conf = consumer_conf(**{"partition.assignment.strategy": "cooperative-sticky"})
    members = [Consumer(conf), Consumer(conf)]
    received: list[set[bytes]] = [set(), set()]
    try:
        for member in members:
            member.subscribe([topic])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for member, seen in zip(members, received, strict=True):
                msg = member.poll(0.1)
                if msg is not None and not msg.error():
                    seen.add(msg.value() or b"")
            assignments = [{tp.partition for tp in m.assignment()} for m in members]
            if all(len(a) == 2 for a in assignments) and sum(len(s) for s in received) >= 40:
                break
        assignments = [{tp.partition for tp in m.assignment()} for m in members]
        assert all(len(a) == 2 for a in assignments), f"unfair assignment: {assignments}"
        assert assignments[0].isdisjoint(assignments[1])
        assert assignments[0] | assignments[1] == {0, 1, 2, 3}
        assert len(received[0] | received[1]) == 40
        assert all(received), "each member should have consumed its own partitions"
    finally:
        for member in members:
            member.close()
