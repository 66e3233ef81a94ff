"""The five topics Swatch uses, and idempotent creation of them.

listing-attributes is compacted (the latest attribute event per listing is the state downstream
indexers rebuild from; deletes are tombstones); the others are plain retention topics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streams.config import TopicSettings
from streams.errors import KafkaAdminError, TopicNotFoundError

logger = logging.getLogger(__name__)

_DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partitions, replication factor (-1 = broker default), configs."""

    name: str
    partitions: int
    replication: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


@dataclass(frozen=True)
class TopicResult:
    """What `create_topics` did for one topic."""

    name: str
    created: bool
    partitions: int
    note: str = ""


def topic_specs(
    topics: TopicSettings, *, partitions: int | None = None, replication: int | None = None
) -> list[TopicSpec]:
    """The five topics with their configurations, sized by the settings unless overridden."""
    parts = partitions or topics.partitions
    repl = replication if replication is not None else topics.replication
    return [
        TopicSpec(topics.listings, parts, repl, {}, "listing events (input)"),
        TopicSpec(
            topics.attributes,
            parts,
            repl,
            {
                # The latest event per listing is the state; deletes become tombstones.
                "cleanup.policy": "compact",
                # Keep tombstones a day so consumers that lag still see the delete.
                "delete.retention.ms": str(_DAY_MS),
            },
            "attribute events, compacted, key = listing id",
        ),
        TopicSpec(topics.review, parts, repl, {}, "review requests"),
        TopicSpec(topics.decisions, parts, repl, {}, "reviewers' decisions"),
        # Dead letters are investigated and replayed by people: keep them a month.
        TopicSpec(topics.dlq, parts, repl, {"retention.ms": str(30 * _DAY_MS)}, "dead letters"),
    ]


def create_topics(admin_conf: dict[str, Any], specs: list[TopicSpec], timeout_s: float = 30.0) -> list[TopicResult]:
    """Create the topics that do not exist yet; report the ones that already did. Idempotent."""
    admin = AdminClient(admin_conf)
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise KafkaAdminError(f"cannot reach Kafka at {admin_conf.get('bootstrap.servers')}: {exc}") from exc
    results: dict[str, TopicResult] = {}
    missing = []
    for spec in specs:
        if spec.name in existing:
            results[spec.name] = _existing(spec, len(existing[spec.name].partitions))
        else:
            missing.append(spec)
    if missing:
        new = [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication, config=s.config)
            for s in missing
        ]
        futures = admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
        for spec in missing:
            try:
                futures[spec.name].result(timeout_s)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    results[spec.name] = _existing(spec, spec.partitions)  # created meanwhile by someone else
                    continue
                raise KafkaAdminError(f"cannot create topic {spec.name}: {exc}") from exc
            logger.info("created topic %s (%s partitions)", spec.name, spec.partitions)
            results[spec.name] = TopicResult(spec.name, True, spec.partitions)
    return [results[spec.name] for spec in specs]


def _existing(spec: TopicSpec, partitions: int) -> TopicResult:
    note = "already existed"
    if partitions != spec.partitions:
        note += f" with {partitions} partitions (asked for {spec.partitions}; left unchanged)"
    return TopicResult(spec.name, False, partitions, note)


def topic_partitions(client: Producer | Consumer, topic: str, servers: str, timeout_s: float = 15.0) -> list[int]:
    """The partition ids of an existing topic, asked through a producer or consumer.

    Use a client with ``allow.auto.create.topics=false`` (a consumer's default): an admin client's
    metadata request makes some brokers (Tansu among them) create the topic it asks about.
    Raises :class:`TopicNotFoundError` for a missing topic and :class:`KafkaAdminError` when the
    cluster does not answer.
    """
    try:
        metadata = client.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaAdminError(f"cannot reach Kafka at {servers}: {exc}") from exc
    found = metadata.topics.get(topic)
    error = found.error if found is not None else None
    if found is None or (error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
        raise TopicNotFoundError(
            f"topic {topic} does not exist on {servers}; create Swatch's topics with `swatch topics create`"
        )
    if error is not None:
        raise KafkaAdminError(f"cannot use topic {topic} on {servers}: {error.str()}")
    if not found.partitions:
        raise KafkaAdminError(f"topic {topic} on {servers} has no partitions (yet); try again")
    return sorted(found.partitions)
