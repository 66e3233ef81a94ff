"""librdkafka client configurations built from the settings, one place for every Kafka property.

Each non-default property says why it is set. Security settings apply to every client; the pass-through
``extra`` properties are applied last, so an operator's explicit choice wins over ours.
"""

from __future__ import annotations

from typing import Any

from streams.config import KafkaSettings
from streams.errors import ConfigError


def common_config(kafka: KafkaSettings, bootstrap: str | None = None) -> dict[str, Any]:
    """Bootstrap, identity and security properties shared by every client."""
    servers = bootstrap or kafka.bootstrap
    if not servers:
        raise ConfigError("no Kafka cluster configured: set SWATCH_KAFKA_BOOTSTRAP (or run `swatch dev up`)")
    conf: dict[str, Any] = {
        "bootstrap.servers": servers,
        "client.id": kafka.client_id,
        "security.protocol": kafka.security_protocol,
    }
    optional = {
        "sasl.mechanism": kafka.sasl_mechanism,
        "sasl.username": kafka.sasl_username,
        "sasl.password": kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
        "ssl.ca.location": kafka.ssl_ca_location,
        "ssl.certificate.location": kafka.ssl_certificate_location,
        "ssl.key.location": kafka.ssl_key_location,
        "ssl.key.password": kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None,
    }
    conf.update({key: value for key, value in optional.items() if value is not None})
    return conf


def producer_config(kafka: KafkaSettings, bootstrap: str | None = None) -> dict[str, Any]:
    """An idempotent producer: retries never duplicate or reorder records within a partition."""
    conf = common_config(kafka, bootstrap)
    conf.update(
        {
            # acks=all and ordered, de-duplicated retries: "no listing is lost" starts here.
            "enable.idempotence": True,
            # A few ms of lingering turns per-listing produce calls into real batches.
            "linger.ms": 5,
            # A deleted output topic must not come back by itself with the broker's default partitions
            # and no compaction: outputs wait (retried) until `swatch topics create` restores it.
            "allow.auto.create.topics": False,
        }
    )
    conf.update(kafka.extra)  # an operator's explicit choice wins over ours
    return conf


def consumer_config(kafka: KafkaSettings, group_id: str | None = None, bootstrap: str | None = None) -> dict[str, Any]:
    """A group consumer that commits manually, only after its outputs are acknowledged."""
    conf = common_config(kafka, bootstrap)
    conf.update(
        {
            "group.id": group_id or kafka.group_id,
            # Offsets are committed by us once every output for them is acknowledged, never on a timer.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # A new group must tag the backlog, not skip it.
            "auto.offset.reset": "earliest",
            # Incremental rebalances: a joining worker does not stop the others' partitions.
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": kafka.session_timeout_ms,
            # Three heartbeats per session timeout, so one lost heartbeat does not evict the member.
            "heartbeat.interval.ms": max(100, kafka.session_timeout_ms // 3),
            "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
        }
    )
    conf.update(kafka.extra)
    return conf


DEFAULT_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes


def max_message_bytes(kafka: KafkaSettings) -> int:
    """The largest record the producer sends: ``message.max.bytes`` from the extra properties, else librdkafka's."""
    raw = kafka.extra.get("message.max.bytes")
    if raw is None:
        return DEFAULT_MESSAGE_MAX_BYTES
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"SWATCH_KAFKA_EXTRA: message.max.bytes={raw!r} is not a whole number of bytes") from None


def admin_config(kafka: KafkaSettings, bootstrap: str | None = None) -> dict[str, Any]:
    """An admin client for creating and describing topics."""
    return common_config(kafka, bootstrap) | kafka.extra
