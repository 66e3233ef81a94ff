"""The worker against a real broker, a real Redis and the demo model, with images over local HTTP."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.codec import attribute_event_id
from streams.config import Settings
from streams.embedded import EmbeddedStack
from streams.worker import Worker
from tagger.predict import Predictor
from tests.streams.worker_harness import (
    OutputReader,
    listing,
    make_settings,
    publish,
    running,
    sha256_file,
    start_subprocess_worker,
)

pytestmark = pytest.mark.integration


def _url(images: str, row: dict[str, str]) -> str:
    return images + row["image"]


def _dresses(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r["category"].startswith("women/clothing/dresses")]


def test_listing_in_attribute_event_out(
    reader_for: Callable[[Settings], OutputReader],
    kafka_bootstrap: str,
    redis_url: str,
    prefix: str,
    images: str,
    rows: list[dict[str, str]],
    catalog: Path,
    predictor: Predictor,
) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, prefix)
    row = rows[0]
    reader = reader_for(settings)
    with running(Worker(settings, predictor=predictor)) as worker:
        publish(settings, listing("L1", [_url(images, row)], category=row["category"], version=3))
        reader.wait_for(lambda seen: bool(reader.attribute_events("L1")))
        inferred = worker.metrics.value("swatch_images_inferred_total")
    event = reader.attribute_events("L1")[0]
    group = predictor.taxonomy.group_for(row["category"])
    assert group is not None
    assert event["event_id"] == attribute_event_id("L1", 3, predictor.model_id)
    assert (event["listing_id"], event["listing_version"], event["model_id"]) == ("L1", 3, predictor.model_id)
    assert event["category_group"] == group.name
    assert event["images"] == [
        {
            "url": _url(images, row),
            "content_hash": sha256_file(catalog.parent / row["image"]),
            "outcome": "TAGGED",
            "reason": None,
        }
    ]
    names = {a["name"] for a in event["attributes"]}
    assert names <= set(group.attributes) and names, "only the group's attributes, and some of them"
    for attribute in event["attributes"]:
        values = group.attributes[attribute["name"]].values
        assert attribute["value"] in values and 0.5 <= attribute["confidence"] <= 1.0
        assert attribute["source"] == "MODEL" and attribute["conflicts_with_declared"] is False
    assert event["processing_latency_ms"] >= 0 and event["event_time"] >= event["source_event_time"]
    assert event["review_pending"] == bool(reader.of("review", "L1"))
    assert inferred == 1.0


def test_review_routing_cache_dead_letters_tombstones_and_stale_versions(
    reader_for: Callable[[Settings], OutputReader],
    kafka_bootstrap: str,
    redis_url: str,
    prefix: str,
    images: str,
    rows: list[dict[str, str]],
    predictor: Predictor,
) -> None:
    # colour can never reach 1.0: every listing goes to review for colour
    settings = make_settings(kafka_bootstrap, redis_url, prefix, model={"thresholds": {"colour": 1.0}})
    dress = _dresses(rows)[0]
    url = _url(images, dress)
    reader = reader_for(settings)
    with running(Worker(settings, predictor=predictor)) as worker:
        publish(settings, listing("R1", [url], declared={"type": ["skirt"]}))
        reader.wait_for(lambda seen: bool(reader.of("review", "R1")) and bool(reader.attribute_events("R1")))
        inferred = worker.metrics.value("swatch_images_inferred_total")

        # the same image again: served from the cache, no inference
        publish(settings, listing("R2", [url]))
        reader.wait_for(lambda seen: bool(reader.attribute_events("R2")))
        assert worker.metrics.value("swatch_images_inferred_total") == inferred
        assert worker.metrics.value("swatch_cache_lookups_total", {"result": "hit"}) >= 1

        # garbage, then a good listing: a dead letter, and the stream goes on
        publish(settings, (b"junk", b"not avro at all"), listing("R3", [url]))
        reader.wait_for(lambda seen: bool(reader.of("dlq", "junk")) and bool(reader.attribute_events("R3")))

        # delete: a tombstone; then an older version: not published again
        publish(settings, listing("R1", [], version=2, operation="DELETE"), listing("R1", [url], version=1))
        reader.wait_for(lambda seen: any(o.value is None for o in reader.of("attributes", "R1")))
        time.sleep(1.5)
        reader.poll(0.5)
        assert worker.metrics.value("swatch_listings_total", {"result": "stale"}) == 1

    review = reader.of("review", "R1")[0].value
    assert review is not None
    colour = next(u for u in review["uncertain"] if u["name"] == "colour")
    assert colour["reason"] == "LOW_CONFIDENCE" and colour["threshold"] == 1.0 and colour["candidates"]
    assert [c["confidence"] for c in colour["candidates"]] == sorted(
        (c["confidence"] for c in colour["candidates"]), reverse=True
    )
    first = reader.attribute_events("R1")[0]
    assert "colour" not in {a["name"] for a in first["attributes"]}
    assert first["review_pending"] is True
    type_value = next(a for a in first["attributes"] if a["name"] == "type")
    if type_value["value"] != "skirt":
        assert type_value["conflicts_with_declared"] and type_value["declared_value"] == "skirt"
        assert any(u["reason"] == "DECLARED_CONFLICT" for u in review["uncertain"])

    cached = reader.attribute_events("R2")[0]
    assert cached["images"][0]["outcome"] == "CACHE_HIT"
    assert {a["source"] for a in cached["attributes"]} == {"CACHE"}
    assert cached["attributes"] == [{**a, "source": "CACHE"} for a in first["attributes"]] or cached["attributes"]

    dead = reader.of("dlq", "junk")[0].value
    assert dead is not None
    assert dead["reason"] == "undecodable" and dead["original_value"] == b"not avro at all"
    assert dead["original_topic"] == settings.topics.listings and dead["error_class"] == "streams.errors.DecodeError"
    assert "not Avro" in dead["error_message"] or dead["error_message"]

    tombstones = [o for o in reader.of("attributes", "R1") if o.value is None]
    assert len(tombstones) == 1
    assert len(reader.attribute_events("R1")) == 1, "version 1 after version 2 was deleted is stale"


def test_broken_and_blocked_images_still_give_an_event(
    reader_for: Callable[[Settings], OutputReader],
    kafka_bootstrap: str,
    redis_url: str,
    prefix: str,
    images: str,
    rows: list[dict[str, str]],
    predictor: Predictor,
) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, prefix, fetch={"allow_networks": []})
    reader = reader_for(settings)
    with running(Worker(settings, predictor=predictor)):
        publish(settings, listing("B1", [_url(images, rows[0]), "ftp://example.com/a.jpg"]))
        reader.wait_for(lambda seen: bool(reader.attribute_events("B1")) and bool(reader.of("review", "B1")))
    event = reader.attribute_events("B1")[0]
    assert [i["outcome"] for i in event["images"]] == ["BLOCKED_URL", "BLOCKED_URL"]
    assert "loopback" in (event["images"][0]["reason"] or ""), "the SSRF guard refuses 127.0.0.1 unless allowed"
    assert event["attributes"] == []
    review = reader.of("review", "B1")[0].value
    assert review is not None and {u["reason"] for u in review["uncertain"]} == {"NO_USABLE_IMAGE"}

    allowed = make_settings(kafka_bootstrap, redis_url, prefix + "-ok")
    reader2 = reader_for(allowed)
    with running(Worker(allowed, predictor=predictor)):
        publish(allowed, listing("B2", [_url(images, rows[1]), images + "no-such-file.jpg"]))
        reader2.wait_for(lambda seen: bool(reader2.attribute_events("B2")))
    event = reader2.attribute_events("B2")[0]
    assert [i["outcome"] for i in event["images"]] == ["TAGGED", "FETCH_FAILED"]
    assert "404" in (event["images"][1]["reason"] or "")
    assert event["attributes"], "one good image is enough"


def test_redis_down_fails_open(
    reader_for: Callable[[Settings], OutputReader],
    kafka_bootstrap: str,
    prefix: str,
    images: str,
    rows: list[dict[str, str]],
    predictor: Predictor,
    tmp_path: Path,
) -> None:
    with EmbeddedStack(kafka=False, redis=True, workdir=tmp_path / "redis") as stack:
        redis_url = stack.redis_url
    # the server is stopped now: every Redis call fails
    settings = make_settings(kafka_bootstrap, redis_url, prefix)
    reader = reader_for(settings)
    with running(Worker(settings, predictor=predictor)) as worker:
        publish(settings, *(listing(f"D{i}", [_url(images, rows[i])]) for i in range(3)))
        reader.wait_for(lambda seen: all(reader.attribute_events(f"D{i}") for i in range(3)))
        ops = ("get", "set", "version_get", "version_set")
        errors = sum(worker.metrics.value("swatch_cache_errors_total", {"op": op}) for op in ops)
    assert errors >= 1, "the cache-error metric must show the outage"
    assert all(reader.attribute_events(f"D{i}")[0]["attributes"] for i in range(3))


def test_two_workers_share_the_partitions(
    reader_for: Callable[[Settings], OutputReader],
    kafka_bootstrap: str,
    redis_url: str,
    prefix: str,
    images: str,
    rows: list[dict[str, str]],
    predictor: Predictor,
) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, prefix)
    reader = reader_for(settings)
    ids = [f"S{i}" for i in range(16)]
    with (
        running(Worker(settings, predictor=predictor)) as first,
        running(Worker(settings, predictor=predictor)) as second,
    ):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            first.metrics.value("swatch_assigned_partitions") == 1 == second.metrics.value("swatch_assigned_partitions")
        ):
            time.sleep(0.1)
        assert first.metrics.value("swatch_assigned_partitions") == 1, "each worker owns one of the two partitions"
        publish(settings, *(listing(lid, [_url(images, rows[i])]) for i, lid in enumerate(ids)))
        reader.wait_for(lambda seen: all(reader.attribute_events(lid) for lid in ids))
        counts = [
            w.metrics.value("swatch_events_consumed_total", {"topic": settings.topics.listings})
            for w in (first, second)
        ]
    assert sum(counts) == len(ids) and min(counts) > 0, f"both workers took a share: {counts}"


@pytest.mark.slow
def test_sigkill_loses_nothing_and_sigterm_drains(
    reader_for: Callable[[Settings], OutputReader],
    kafka_bootstrap: str,
    redis_url: str,
    prefix: str,
    images: str,
    rows: list[dict[str, str]],
    tmp_path: Path,
) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, prefix)
    reader = reader_for(settings)
    ids = [f"K{i}" for i in range(300)]
    publish(settings, *(listing(lid, [_url(images, rows[i % len(rows)])]) for i, lid in enumerate(ids)))
    log = tmp_path / "worker.log"
    # one listing at a time, so the kill is sure to land mid-stream however fast the machine is
    victim = start_subprocess_worker(settings, log, {"SWATCH_BATCH_MAX_IN_FLIGHT": "1"})
    try:
        reader.wait_for(lambda seen: any(o.kind == "attributes" for o in seen), timeout=60)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    done_before = len({o.key for o in reader.seen if o.kind == "attributes"})
    survivor = start_subprocess_worker(settings, log)
    try:
        reader.wait_for(lambda seen: all(reader.attribute_events(lid) for lid in ids), timeout=90)
        deadline = time.monotonic() + 60  # SIGTERM before start-up would just kill it: wait until it runs
        while f"-{survivor.pid} consuming" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if survivor.poll() is None:
            survivor.kill()
    for lid in ids:
        event_ids = {e["event_id"] for e in reader.attribute_events(lid)}
        assert len(event_ids) == 1, f"a repeated attribute event of {lid} must carry the same event_id"
    assert done_before < len(ids), "the kill happened mid-stream"
    assert "stopped (exit 0)" in log.read_text()


def test_backpressure_pauses_and_resumes_without_losing_listings(
    reader_for: Callable[[Settings], OutputReader],
    kafka_bootstrap: str,
    redis_url: str,
    prefix: str,
    images: str,
    rows: list[dict[str, str]],
    predictor: Predictor,
) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, prefix, batch={"max_in_flight": 2})
    reader = reader_for(settings)
    ids = [f"P{i}" for i in range(20)]
    with running(Worker(settings, predictor=predictor)) as worker:
        publish(settings, *(listing(lid, [_url(images, rows[i])]) for i, lid in enumerate(ids)))
        reader.wait_for(lambda seen: all(reader.attribute_events(lid) for lid in ids))
        assert worker.metrics.value("swatch_backpressure_pauses_total") >= 1
        assert worker.metrics.value("swatch_in_flight_listings") == 0


def test_transactional_mode_publishes_and_commits(
    reader_for: Callable[[Settings], OutputReader],
    kafka_bootstrap: str,
    redis_url: str,
    prefix: str,
    images: str,
    rows: list[dict[str, str]],
    predictor: Predictor,
) -> None:
    # Tansu does not hide aborted records, so this shows the loop works, not exactly-once isolation.
    settings = make_settings(
        kafka_bootstrap, redis_url, prefix, worker={"transactional_id": f"{prefix}-tx", "transaction_interval_ms": 200}
    )
    reader = reader_for(settings)
    ids = [f"T{i}" for i in range(6)]
    with running(Worker(settings, predictor=predictor)) as worker:
        publish(settings, *(listing(lid, [_url(images, rows[i])]) for i, lid in enumerate(ids)), (b"bad", b"junk"))
        reader.wait_for(lambda seen: all(reader.attribute_events(lid) for lid in ids) and bool(reader.of("dlq", "bad")))
        assert worker.metrics.value("swatch_offset_commits_total") >= 1
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": settings.kafka.group_id})
    try:
        committed = consumer.committed([TopicPartition(settings.topics.listings, p) for p in range(2)], timeout=10)
    finally:
        consumer.close()
    assert sum(max(0, tp.offset) for tp in committed) == len(ids) + 1, "offsets went with the transactions"
