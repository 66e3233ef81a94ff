"""`swatch produce` and `swatch tail`: listing events from a manifest, through a real broker and back."""

from __future__ import annotations

import base64
import csv
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from typer.testing import CliRunner

from streams.cli import app
from streams.codec import Codec, listing_event_id
from streams.config import KafkaSettings, Settings, TopicSettings
from streams.errors import ProduceError, TopicNotFoundError
from streams.produce import listing_records, plan_listings, publish_listings, publish_raw
from streams.tail import TailRecord, read_topic, resolve_topic
from tagger.taxonomy import NOT_VISIBLE, load_taxonomy

BASE = "http://images.test:8000/catalog/"
COLOURS = ("red", "navy", "black", "white", "green", "beige")
APPAREL = ("dress", "t_shirt", "skirt", "jacket", "shirt")


def write_manifest(folder: Path, rows: int = 40) -> Path:
    """Apparel and footwear rows with relative image paths (one with a space), one http image."""
    path = folder / "manifest.csv"
    header = ["id", "image", "category", "split", "type", "colour", "pattern", "sleeve_type", "heel_height"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(rows):
            colour = COLOURS[i % len(COLOURS)]
            if i % 3 == 2:
                row = [f"L{i:03d}", f"images/{i:03d}.jpg", "women/shoes/boots", "test", "boot", colour, "", "", "high"]
            else:
                kind = APPAREL[i % len(APPAREL)]
                pattern = "striped|floral" if i % 4 == 0 else "solid"
                row = [f"L{i:03d}", f"images/{i:03d}.jpg", "women/clothing/dresses", "", kind, colour, pattern, "", ""]
                row[7] = "not_visible" if i % 5 == 0 else "short"
            writer.writerow(row)
        writer.writerow(["L-space", "images/red dress #1.jpg", "apparel/dresses", "", "dress", "red", "", "", ""])
        writer.writerow(["L-http", "https://cdn.test/p/1.jpg", "apparel", "", "", "", "", "", ""])
    return path


def settings_for(bootstrap: str, listings: str = "listings") -> Settings:
    return Settings(kafka=KafkaSettings(bootstrap=bootstrap), topics=TopicSettings(listings=listings))


def without_times(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "event_time"} for r in records]


# -- building listing events (no broker) -------------------------------------------------------


def test_manifest_rows_become_listing_events(tmp_path: Path) -> None:
    records = listing_records(write_manifest(tmp_path), BASE)
    assert len(records) == 42
    by_id = {r["listing_id"]: r for r in records}
    first = by_id["L000"]
    assert first["event_id"] == listing_event_id("L000", 1)
    assert first["listing_version"] == 1 and first["merchant_id"] == "demo-merchant"
    assert first["operation"] == "UPSERT"
    assert first["category_path"] == ["women", "clothing", "dresses"]
    assert first["image_urls"] == ["http://images.test:8000/catalog/images/000.jpg"]
    assert first["title"] == "red dress"
    assert first["declared_attributes"] == {}
    assert abs(first["event_time"] - time.time() * 1000) < 60_000
    assert by_id["L-space"]["image_urls"] == ["http://images.test:8000/catalog/images/red%20dress%20%231.jpg"]
    assert by_id["L-http"]["image_urls"] == ["https://cdn.test/p/1.jpg"]
    assert by_id["L-http"]["title"] is None
    assert by_id["L002"]["category_path"] == ["women", "shoes", "boots"]

    codec = Codec()
    for record in records:  # every record is a valid listing event
        codec.encode("listing_event", record)

    other = listing_records(write_manifest(tmp_path), BASE, limit=3, version=4, merchant_id="m-7")
    assert [r["listing_id"] for r in other] == ["L000", "L001", "L002"]
    assert other[0]["event_id"] == listing_event_id("L000", 4) and other[0]["merchant_id"] == "m-7"


def test_declarations_follow_the_rates_deterministically(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, rows=120)
    taxonomy = load_taxonomy()

    def plan(seed: int, declared: float = 0.5, wrong: float = 0.3, limit: int | None = None) -> list[Any]:
        return plan_listings(manifest, BASE, declared_rate=declared, wrong_declared_rate=wrong, seed=seed, limit=limit)

    planned = plan(seed=7)
    again = plan(seed=7)
    assert without_times([p.record for p in planned]) == without_times([p.record for p in again])
    assert [p.wrong_declared for p in planned] == [p.wrong_declared for p in again]
    other_seed = plan(seed=8)
    assert without_times([p.record for p in planned]) != without_times([p.record for p in other_seed])
    # Each listing has its own random stream: a shorter run makes the same choices for its rows.
    assert without_times([p.record for p in plan(seed=7, limit=10)]) == without_times([p.record for p in planned[:10]])

    declaring = [p for p in planned if p.record["declared_attributes"]]
    assert 40 <= len(declaring) <= 80, len(declaring)  # half of 121 labelled rows, give or take
    declarations = wrong = 0
    for listing in declaring:
        group = taxonomy.group_for(listing.item.category)
        assert group is not None
        for name, values in listing.record["declared_attributes"].items():
            declarations += 1
            attribute = group.attributes[name]
            assert all(v in attribute.values and v != NOT_VISIBLE for v in values)
            labelled = {attribute.canonical(v) for v in listing.item.labels[name]}
            if name in listing.wrong_declared:
                wrong += 1
                assert set(listing.wrong_declared[name]) == labelled - {NOT_VISIBLE}
                assert not set(values) & labelled, (name, values, labelled)
            else:
                assert set(values) <= labelled
                assert NOT_VISIBLE not in values
    assert 0.15 <= wrong / declarations <= 0.45, (wrong, declarations)

    # A higher rate only adds declaring listings; rates 0 and 1 are none and every labelled row.
    more = {p.item.id for p in plan(seed=7, declared=0.8) if p.record["declared_attributes"]}
    assert {p.item.id for p in declaring} <= more
    assert not any(p.record["declared_attributes"] for p in plan(seed=7, declared=0.0))
    everything = plan(seed=7, declared=1.0, wrong=0.0)
    assert all(p.record["declared_attributes"] for p in everything if p.item.labels)
    assert not any(p.wrong_declared for p in everything)


def test_local_images_need_a_base_url_inside_the_manifest_folder(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, rows=2)
    with pytest.raises(ProduceError, match="--base-url"):
        listing_records(manifest, None)
    with pytest.raises(ProduceError, match="http"):
        listing_records(manifest, "ftp://images/")
    outside = tmp_path / "outside.csv"
    outside.write_text("id,image,category\nX1,../elsewhere/a.jpg,apparel\n")
    with pytest.raises(ProduceError, match="outside the manifest's folder"):
        listing_records(outside, BASE)
    absolute = tmp_path / "absolute.csv"
    absolute.write_text(f"id,image,category\nX2,{tmp_path / 'images' / 'b c.jpg'},apparel\n")
    assert listing_records(absolute, "http://h:1")[0]["image_urls"] == ["http://h:1/images/b%20c.jpg"]
    duplicate = tmp_path / "duplicate.csv"
    duplicate.write_text("id,image,category\nD,a.jpg,apparel\nD,b.jpg,apparel\n")
    with pytest.raises(ProduceError, match="more than once"):
        listing_records(duplicate, BASE)


def test_topic_names_resolve_to_their_events() -> None:
    topics = TopicSettings(listings="in-x", dlq="dead-x")
    assert resolve_topic(topics, "listings") == ("in-x", "listing_event")
    assert resolve_topic(topics, "in-x") == ("in-x", "listing_event")
    assert resolve_topic(topics, "dead-x") == ("dead-x", "dead_letter")
    assert resolve_topic(topics, "attributes") == ("listing-attributes", "attribute_event")
    assert resolve_topic(topics, "review-decisions") == ("review-decisions", "review_decision")
    with pytest.raises(TopicNotFoundError, match="--schema"):
        resolve_topic(topics, "somewhere-else")


# -- through the broker ------------------------------------------------------------------------


@pytest.mark.integration
def test_published_listings_read_back_intact(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = make_topic(partitions=3)
    settings = settings_for(kafka_bootstrap, listings=topic)
    records = listing_records(write_manifest(tmp_path, rows=20), BASE, declared_rate=0.5, wrong_declared_rate=0.5)
    report = publish_listings(settings, records)
    assert (report.topic, report.sent, report.failed) == (topic, 22, 0)

    read = list(read_topic(settings, "listings", max_records=22, idle_timeout_s=15))
    assert len(read) == 22
    assert {r.partition for r in read} <= {0, 1, 2}
    assert all(r.error is None and r.value is not None and r.topic == topic for r in read)
    expected = {r["listing_id"]: r for r in records}
    for got in read:
        assert got.value is not None and got.key is not None
        sent = expected[got.key]
        assert got.value["listing_id"] == got.key
        assert got.value["event_id"] == sent["event_id"]
        assert got.value["image_urls"] == sent["image_urls"]
        assert got.value["category_path"] == sent["category_path"]
        assert got.value["declared_attributes"] == sent["declared_attributes"]
        assert got.timestamp_ms is not None
        assert got.to_json()["value"]["event_time"] == sent["event_time"]


@pytest.mark.integration
def test_malformed_records_and_tombstones_do_not_stop_the_reader(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=1)
    settings = settings_for(kafka_bootstrap)
    codec = Codec()
    good = {
        "event_id": listing_event_id("G1", 1),
        "listing_id": "G1",
        "listing_version": 1,
        "merchant_id": "m",
        "operation": "UPSERT",
        "event_time": 1_700_000_000_000,
    }
    report = publish_raw(
        settings,
        topic,
        [
            (b"BAD", b"\xc3\x01abc"),
            (b"G1", codec.encode("listing_event", good)),
            (b"G1", None),
        ],
    )
    assert report.sent == 3
    bad, decoded, tombstone = read_topic(settings, topic, schema="listing_event", max_records=3, idle_timeout_s=15)
    assert bad.key == "BAD" and bad.value is None and bad.error is not None and not bad.tombstone
    assert bad.error.startswith("undecodable: truncated single-object header")
    assert decoded.error is None and decoded.value is not None and decoded.value["listing_id"] == "G1"
    assert decoded.to_json()["value"]["event_time"] == 1_700_000_000_000
    assert tombstone.tombstone and tombstone.key == "G1" and tombstone.to_json()["tombstone"] is True
    assert [bad.offset, decoded.offset, tombstone.offset] == [0, 1, 2]


@pytest.mark.integration
def test_dead_letter_bytes_print_as_base64_or_short_hex(
    kafka_bootstrap: str, make_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = make_topic(partitions=1)
    original = bytes(range(40))
    letter = {
        "event_id": "d1",
        "original_topic": "listings",
        "original_partition": 0,
        "original_offset": 5,
        "original_value": original,
        "reason": "undecodable",
        "error_class": "streams.errors.DecodeError",
        "error_message": "bad",
        "event_time": 1_700_000_000_000,
    }
    publish_raw(settings_for(kafka_bootstrap), topic, [(b"k", Codec().encode("dead_letter", letter))])
    monkeypatch.setenv("SWATCH_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SWATCH_TOPICS_DLQ", topic)
    as_json = CliRunner().invoke(app, ["tail", "dlq", "--max", "1", "--timeout", "15", "--json"])
    assert as_json.exit_code == 0, as_json.output
    (line,) = as_json.stdout.splitlines()
    assert base64.b64decode(json.loads(line)["value"]["original_value"]) == original
    pretty = CliRunner().invoke(app, ["tail", "dlq", "--max", "1", "--timeout", "15"])
    assert pretty.exit_code == 0, pretty.output
    assert "<40 bytes: 000102030405060708090a0b0c0d0e0f...>" in pretty.stdout


@pytest.mark.integration
def test_tail_starts_at_a_groups_committed_offsets_without_committing(
    kafka_bootstrap: str, make_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = make_topic(partitions=1)
    settings = settings_for(kafka_bootstrap)
    publish_raw(settings, topic, [(f"k{i}".encode(), None) for i in range(5)])
    group = unique_name("g")
    committer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        committer.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
    finally:
        committer.close()
    backlog = list(read_topic(settings, topic, schema="listing_event", group=group, idle_timeout_s=1))
    assert [r.key for r in backlog] == ["k3", "k4"]
    again = list(read_topic(settings, topic, schema="listing_event", group=group, idle_timeout_s=1))
    assert [r.key for r in again] == ["k3", "k4"]  # the first read committed nothing


@pytest.mark.integration
def test_latest_shows_only_what_arrives_after_the_start(kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic(partitions=1)
    settings = settings_for(kafka_bootstrap)
    # One publish per record: Tansu 0.6 reports the end of a partition as the last batch's first
    # offset + 1, so a multi-record last batch would reappear at "latest" on the embedded broker.
    for i in range(3):
        publish_raw(settings, topic, [(f"old-{i}".encode(), None)])
    assert list(read_topic(settings, topic, schema="listing_event", from_beginning=False, idle_timeout_s=1)) == []

    seen: list[TailRecord] = []
    reader = read_topic(settings, topic, schema="listing_event", from_beginning=False, max_records=1, idle_timeout_s=20)
    thread = threading.Thread(target=lambda: seen.extend(reader), daemon=True)
    thread.start()
    for i in range(40):  # keep publishing until the reader, whenever it has started, sees one
        publish_raw(settings, topic, [(f"new-{i}".encode(), None)])
        thread.join(0.5)
        if not thread.is_alive():
            break
    assert len(seen) == 1 and seen[0].key is not None and seen[0].key.startswith("new-"), seen


@pytest.mark.integration
def test_missing_topics_are_reported_not_created(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    settings = settings_for(kafka_bootstrap)
    missing = unique_name("missing")
    with pytest.raises(TopicNotFoundError, match="swatch topics create"):
        publish_raw(settings, missing, [(b"k", b"v")])
    with pytest.raises(TopicNotFoundError, match="does not exist"):
        list(read_topic(settings, missing, schema="listing_event"))
    with pytest.raises(TopicNotFoundError):  # still not there: neither call created it
        list(read_topic(settings, missing, schema="listing_event"))


# -- the commands ------------------------------------------------------------------------------


@pytest.fixture
def cli_env(
    clean_swatch_env: None, kafka_bootstrap: str, make_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> str:
    """A clean SWATCH_* environment pointing at the broker, with a fresh listings topic."""
    topic = make_topic(partitions=2)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("SWATCH_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SWATCH_TOPICS_LISTINGS", topic)
    return topic


@pytest.mark.integration
def test_cli_produce_then_tail(cli_env: str, tmp_path: Path) -> None:
    runner = CliRunner()
    manifest = write_manifest(tmp_path, rows=10)
    produced = runner.invoke(
        app, ["produce", "--from", str(manifest), "--base-url", BASE, "--declared-rate", "1", "--seed", "3"]
    )
    assert produced.exit_code == 0, produced.output
    assert f"published 12 listing events to {cli_env} in" in produced.stdout
    assert "declare attributes" in produced.stdout

    pretty = runner.invoke(app, ["tail", "listings", "--max", "12", "--timeout", "15"])
    assert pretty.exit_code == 0, pretty.output
    assert pretty.stdout.count(f"{cli_env} [") == 12
    assert "key L000" in pretty.stdout and '"listing_id": "L000"' in pretty.stdout
    assert "http://images.test:8000/catalog/images/000.jpg" in pretty.stdout
    assert "12 record(s): 0 undecodable, 0 tombstone(s)" in pretty.stderr

    as_json = runner.invoke(app, ["tail", cli_env, "--max", "12", "--timeout", "15", "--json"])
    assert as_json.exit_code == 0, as_json.output
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(lines) == 12
    assert {line["key"] for line in lines} == {f"L{i:03d}" for i in range(10)} | {"L-space", "L-http"}
    assert all(isinstance(line["value"]["event_time"], int) and line["error"] is None for line in lines)
    assert sum(1 for line in lines if line["value"]["declared_attributes"]) >= 10


@pytest.mark.integration
def test_cli_reports_what_is_wrong(cli_env: str, tmp_path: Path, unique_name: Callable[[str], str]) -> None:
    runner = CliRunner()
    manifest = write_manifest(tmp_path, rows=2)
    no_url = runner.invoke(app, ["produce", "--from", str(manifest)])
    assert no_url.exit_code == 1 and "--base-url" in no_url.output
    missing = unique_name("missing")
    no_topic = runner.invoke(app, ["produce", "--from", str(manifest), "--base-url", BASE, "--topic", missing])
    assert no_topic.exit_code == 1 and "does not exist" in no_topic.output
    unknown = runner.invoke(app, ["tail", missing])
    assert unknown.exit_code == 1 and "not one of Swatch's topics" in unknown.output


@pytest.mark.integration
def test_cli_produce_fails_loudly_when_records_are_refused(
    cli_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWATCH_KAFKA_EXTRA", "message.max.bytes=1000")
    manifest = write_manifest(tmp_path, rows=3)
    long_base = "http://images.test/" + "x" * 1000 + "/"
    result = CliRunner().invoke(app, ["produce", "--from", str(manifest), "--base-url", long_base, "--limit", "3"])
    assert result.exit_code == 1, result.output
    assert "3 of 3 records to" in result.output and "MSG_SIZE_TOO_LARGE" in result.output


def test_publish_failures_name_count_and_reason(tmp_path: Path) -> None:
    from streams.produce import PublishReport

    report = PublishReport("t", sent=7, failed=3, seconds=1.0, errors={"_MSG_TIMED_OUT: Local: Message timed out": 3})
    assert report.describe_failures() == (
        "3 of 10 records to t were not acknowledged: _MSG_TIMED_OUT: Local: Message timed out (3)"
    )


def test_tail_record_json_shape() -> None:
    record = TailRecord("t", 0, 1, None, None, None, None)
    assert record.tombstone
    assert record.to_json() == {
        "topic": "t",
        "partition": 0,
        "offset": 1,
        "timestamp_ms": None,
        "key": None,
        "tombstone": True,
        "error": None,
        "value": None,
    }
