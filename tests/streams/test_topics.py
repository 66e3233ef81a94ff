"""Creating the five topics against a real broker, twice."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from typer.testing import CliRunner

from streams.cli import app
from streams.config import TopicSettings
from streams.topics import create_topics, topic_specs

pytestmark = pytest.mark.integration

FIELDS = ("listings", "attributes", "review", "decisions", "dlq")


def _topic_settings(unique_name: Callable[[str], str], partitions: int = 3) -> TopicSettings:
    return TopicSettings(**{field: unique_name(field) for field in FIELDS}, partitions=partitions)  # type: ignore[arg-type]


def test_specs_describe_the_contract() -> None:
    specs = {s.name: s for s in topic_specs(TopicSettings())}
    assert set(specs) == {
        "listings",
        "listing-attributes",
        "listing-attributes-review",
        "review-decisions",
        "listings-dlq",
    }
    assert specs["listing-attributes"].config["cleanup.policy"] == "compact"
    assert "cleanup.policy" not in specs["listings"].config


def test_create_twice_is_harmless(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    topics = _topic_settings(unique_name)
    conf = {"bootstrap.servers": kafka_bootstrap}
    first = create_topics(conf, topic_specs(topics, replication=1))
    assert [r.created for r in first] == [True] * 5
    second = create_topics(conf, topic_specs(topics, replication=1))
    assert [r.created for r in second] == [False] * 5
    assert all(r.note == "already existed" and r.partitions == 3 for r in second)

    admin = AdminClient(conf)
    metadata = admin.list_topics(timeout=10).topics
    assert all(len(metadata[getattr(topics, f)].partitions) == 3 for f in FIELDS)
    described = admin.describe_configs([ConfigResource("topic", topics.attributes)])
    configs = next(iter(described.values())).result(10)
    assert configs["cleanup.policy"].value == "compact"


def test_existing_topic_with_other_partition_count_is_reported(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topics = _topic_settings(unique_name, partitions=2)
    conf = {"bootstrap.servers": kafka_bootstrap}
    create_topics(conf, topic_specs(topics, replication=1))
    again = create_topics(conf, topic_specs(topics, partitions=4, replication=1))
    assert "with 2 partitions (asked for 4; left unchanged)" in again[0].note


def test_cli_topics_create_twice(
    kafka_bootstrap: str, unique_name: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = {f"SWATCH_TOPICS_{field.upper()}": unique_name(field) for field in FIELDS}
    monkeypatch.setenv("COLUMNS", "250")
    for name, value in {**names, "SWATCH_KAFKA_BOOTSTRAP": kafka_bootstrap}.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    first = runner.invoke(app, ["topics", "create", "--partitions", "2", "--replication", "1"])
    assert first.exit_code == 0, first.output
    assert first.output.count("created") == 5
    second = runner.invoke(app, ["topics", "create", "--partitions", "2", "--replication", "1"])
    assert second.exit_code == 0, second.output
    assert second.output.count("already existed") == 5
    for topic in names.values():
        assert topic in second.output


def test_cli_topics_create_without_a_cluster_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWATCH_KAFKA_BOOTSTRAP", raising=False)
    result = CliRunner().invoke(app, ["topics", "create"])
    assert result.exit_code == 2
    assert "SWATCH_KAFKA_BOOTSTRAP" in result.output
