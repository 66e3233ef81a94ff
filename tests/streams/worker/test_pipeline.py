"""The per-listing pipeline with fake images, cache and model: every input ends in a defined outcome."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest

from streams.codec import attribute_event_id, now_millis
from streams.codec.wire import SINGLE_OBJECT_MAGIC
from streams.events import listing_event
from streams.images import FetchOutcome
from streams.text import MAX_REASON_CHARS, MAX_TITLE_CHARS
from streams.worker.letters import DeadLetters
from streams.worker.records import Outcome
from streams.worker.sequencer import Ticket
from streams.worker.tagging import ModelError
from tests.streams.worker.fakes import BAD, MODEL, Parts, consumed, failed, make_pipeline, ok

DRESS = ["women", "clothing", "dresses"]


def _listing(listing_id: str = "L1", version: int = 1, **changes: Any) -> dict[str, Any]:
    record = listing_event(
        listing_id, version, merchant_id="m-1", category_path=DRESS, image_urls=["https://cdn/a.jpg"], title="dress"
    )
    record.update(changes)
    return record


async def _process(parts: Parts, value: bytes | None, **kwargs: Any) -> Outcome:
    tickets: list[Ticket] = []
    try:
        return await parts.pipeline.process(consumed(value, **kwargs), tickets)
    finally:
        for ticket in tickets:
            ticket.release()


def _decode(parts: Parts, outcome: Outcome, kind: str) -> dict[str, Any]:
    schema = {"attributes": "attribute_event", "review": "review_request", "dlq": "dead_letter"}[kind]
    (output,) = [o for o in outcome.outputs if o.kind == kind]
    assert output.value is not None
    return parts.codec.decode(schema, output.value)


def test_a_listing_becomes_an_attribute_event() -> None:
    parts = make_pipeline()
    before = now_millis()
    outcome = asyncio.run(_process(parts, parts.codec.encode("listing_event", _listing(event_time=1_000))))
    assert outcome.result == "tagged" and [o.kind for o in outcome.outputs] == ["attributes"]
    event = _decode(parts, outcome, "attributes")
    assert event["event_id"] == attribute_event_id("L1", 1, MODEL)
    assert event["images"][0]["outcome"] == "TAGGED" and event["attributes"]
    # processing_latency_ms is measured from when the worker consumed the record (received_ms), as documented
    received = consumed(None).received_ms
    assert before - received <= event["processing_latency_ms"] <= now_millis() - received


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"garbage", "undecodable"),
        (b"", "undecodable"),
        (None, "undecodable"),
        (SINGLE_OBJECT_MAGIC + b"\x01" * 8 + b"\x02", "unknown_schema"),
    ],
    ids=["garbage", "empty", "null", "unknown-fingerprint"],
)
def test_bad_bytes_become_dead_letters_with_a_reason(value: bytes | None, reason: str) -> None:
    parts = make_pipeline()
    outcome = asyncio.run(_process(parts, value, key=None))
    assert outcome.result == "dead_letter" and outcome.reason == reason
    (output,) = outcome.outputs
    assert output.key is None, "a null input key stays null on the dead-letter topic"
    letter = _decode(parts, outcome, "dlq")
    assert letter["reason"] == reason and letter["original_key"] is None
    assert letter["original_value"] == value and letter["truncated"] is False
    assert letter["error_class"].startswith("streams.errors.")
    assert letter["original_headers"] == [{"key": "trace", "value": b"t-1"}]


def test_truncated_avro_is_undecodable() -> None:
    parts = make_pipeline()
    whole = parts.codec.encode("listing_event", _listing())
    outcome = asyncio.run(_process(parts, whole[:-5]))
    assert outcome.reason == "undecodable"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"listing_id": " "}, "listing_id is empty"),
        ({"listing_id": "x" * 300}, "the limit is 256"),
        ({"operation": "UNKNOWN"}, "neither UPSERT nor DELETE"),
        ({"listing_version": -1}, "is negative"),
    ],
    ids=["blank-id", "huge-id", "unknown-operation", "negative-version"],
)
def test_events_breaking_rules_are_invalid(changes: dict[str, Any], message: str) -> None:
    parts = make_pipeline()
    outcome = asyncio.run(_process(parts, parts.codec.encode("listing_event", _listing(**changes))))
    letter = _decode(parts, outcome, "dlq")
    assert letter["reason"] == "invalid_event" and message in letter["error_message"]
    assert letter["error_class"] == "streams.worker.pipeline.InvalidEventError"


def test_echoed_text_is_clipped() -> None:
    parts = make_pipeline()
    parts.batcher.probabilities = {k: [1 / len(v)] * len(v) for k, v in parts.batcher.probabilities.items()}
    parts.images.results["https://cdn/a.jpg"] = failed("https://cdn/a.jpg", FetchOutcome.FETCH_FAILED, "x" * 50_000)
    listing = _listing(title="t" * 200_000, image_urls=["https://cdn/a.jpg", "https://cdn/b.jpg"])
    outcome = asyncio.run(_process(parts, parts.codec.encode("listing_event", listing)))
    assert outcome.result == "review"
    request = _decode(parts, outcome, "review")
    assert len(request["title"]) == MAX_TITLE_CHARS and request["title"].endswith("...")
    event = _decode(parts, outcome, "attributes")
    assert len(event["images"][0]["reason"]) <= MAX_REASON_CHARS
    assert event["review_pending"] is True
    assert [o.kind for o in outcome.outputs] == ["review", "attributes"], "the review request goes out first"


def test_an_output_over_the_limit_is_a_dead_letter_that_fits() -> None:
    limit = 200_000
    parts = make_pipeline(max_message_bytes=limit)
    urls: list[str] = []
    value = b""
    while len(value) < limit - 520:  # an input that nearly fills the limit by itself
        urls.append(f"https://cdn.example.com/p/{len(urls):06d}/{'x' * 40}.jpg")
        value = parts.codec.encode("listing_event", _listing(image_urls=urls))
    assert len(value) < limit
    outcome = asyncio.run(_process(parts, value))
    assert outcome.reason == "output_too_large"
    letter = _decode(parts, outcome, "dlq")
    (output,) = outcome.outputs
    assert output.size <= DeadLetters("dlq", "w", limit).budget
    assert letter["truncated"] is True and letter["original_value_size"] == len(value)
    assert value.startswith(letter["original_value"]) and len(letter["original_value"]) < len(value)
    assert "limit" in letter["error_message"]


def test_stale_versions_are_skipped_and_deletes_are_tombstones() -> None:
    parts = make_pipeline()
    parts.store.versions["L1"] = 5
    stale = asyncio.run(_process(parts, parts.codec.encode("listing_event", _listing(version=4))))
    assert stale.result == "stale" and stale.outputs == []
    assert parts.metrics.value("swatch_version_gate_total", {"result": "stale"}) == 1
    delete = asyncio.run(_process(parts, parts.codec.encode("listing_event", _listing(version=6, operation="DELETE"))))
    assert delete.result == "deleted"
    (tombstone,) = delete.outputs
    assert tombstone.value is None and tombstone.key == b"L1"
    assert not parts.images.fetched, "neither a stale version nor a delete fetches images"


def test_image_failures_are_outcomes_and_model_failures_raise() -> None:
    parts = make_pipeline()
    parts.images.results["https://cdn/bad.jpg"] = ok("https://cdn/bad.jpg", BAD)
    listing = _listing(image_urls=["https://cdn/bad.jpg"])
    outcome = asyncio.run(_process(parts, parts.codec.encode("listing_event", listing)))
    event = _decode(parts, outcome, "attributes")
    assert event["images"][0]["outcome"] == "DECODE_FAILED" and outcome.result == "no_usable_image"
    parts.batcher.fail = 1
    with pytest.raises(ModelError, match="illegal memory access"):
        asyncio.run(_process(parts, parts.codec.encode("listing_event", _listing(image_urls=["https://cdn/new.jpg"]))))


def test_identical_images_are_inferred_once_and_cached() -> None:
    parts = make_pipeline()

    async def both() -> list[Outcome]:
        return await asyncio.gather(
            _process(parts, parts.codec.encode("listing_event", _listing("L1")), offset=0),
            _process(parts, parts.codec.encode("listing_event", _listing("L2")), offset=1, key=b"L2"),
        )

    first, second = asyncio.run(both())
    assert parts.batcher.calls == 1
    assert first.result == second.result == "tagged"
    again = asyncio.run(_process(parts, parts.codec.encode("listing_event", _listing("L3")), key=b"L3"))
    assert _decode(parts, again, "attributes")["images"][0]["outcome"] == "CACHE_HIT"
    assert parts.batcher.calls == 1
    assert hashlib.sha256(b"\xff\xd8\xff" + b"good image").hexdigest() in parts.store.predictions


def test_versions_of_a_listing_publish_in_consumed_order() -> None:
    parts = make_pipeline()
    order: list[int] = []

    async def run() -> None:
        slow = _listing(version=1, image_urls=["https://cdn/slow.jpg"])
        fast = _listing(version=2, image_urls=[])
        t1: list[Ticket] = []
        t2: list[Ticket] = []

        async def one(value: bytes, tickets: list[Ticket], offset: int) -> None:
            outcome = await parts.pipeline.process(consumed(value, offset=offset), tickets)
            order.append(offset)
            await asyncio.sleep(0.05)  # delivery takes a while; the next version must still wait
            for ticket in tickets:
                ticket.release()
            assert outcome.outputs

        parts.images.delay_s = 0.2
        first = asyncio.create_task(one(parts.codec.encode("listing_event", slow), t1, 0))
        await asyncio.sleep(0.01)
        parts.images.delay_s = 0.0
        second = asyncio.create_task(one(parts.codec.encode("listing_event", fast), t2, 1))
        await asyncio.gather(first, second)

    started = time.monotonic()
    asyncio.run(run())
    assert order == [0, 1] and time.monotonic() - started >= 0.2


def _raw_listing(parts: Parts, mutate: Any) -> bytes:
    """A listing encoded with its schema, then changed at the byte level by ``mutate``."""
    return bytes(mutate(parts.codec.encode("listing_event", _listing(title="TITLE"))))


def test_invalid_utf8_in_a_string_is_undecodable() -> None:
    parts = make_pipeline()
    value = _raw_listing(parts, lambda b: b.replace(b"TITLE", b"TI\xff\xfeE"))
    outcome = asyncio.run(_process(parts, value))
    assert outcome.reason == "undecodable"
    assert _decode(parts, outcome, "dlq")["original_value"] == value


def test_a_record_missing_fields_is_undecodable() -> None:
    parts = make_pipeline()
    whole = parts.codec.encode("listing_event", _listing())
    for cut in (11, len(whole) // 2, len(whole) - 1):  # the header, then half the fields, then all but the last
        outcome = asyncio.run(_process(parts, whole[:cut]))
        assert outcome.reason == "undecodable", cut


def test_an_empty_image_list_goes_to_review_as_no_usable_image() -> None:
    parts = make_pipeline()
    outcome = asyncio.run(_process(parts, parts.codec.encode("listing_event", _listing(image_urls=[]))))
    assert outcome.result == "no_usable_image"
    request = _decode(parts, outcome, "review")
    assert {u["reason"] for u in request["uncertain"]} == {"NO_USABLE_IMAGE"}
    assert _decode(parts, outcome, "attributes")["images"] == []


def test_huge_strings_are_clipped_or_refused() -> None:
    parts = make_pipeline()
    huge_merchant = _listing(merchant_id="m" * 10_000)
    outcome = asyncio.run(_process(parts, parts.codec.encode("listing_event", huge_merchant)))
    assert outcome.reason == "invalid_event"
    declared = _listing(declared_attributes={"colour": ["blue" * 5_000]})
    outcome = asyncio.run(_process(parts, parts.codec.encode("listing_event", declared)))
    event = _decode(parts, outcome, "attributes")
    echoed = [a["declared_value"] for a in event["attributes"] if a["declared_value"]]
    assert echoed and all(len(v) <= MAX_REASON_CHARS for v in echoed)


def test_images_beyond_the_limit_are_listed_not_fetched() -> None:
    parts = make_pipeline()
    urls = [f"https://cdn/{i}.jpg" for i in range(10)]
    outcome = asyncio.run(_process(parts, parts.codec.encode("listing_event", _listing(image_urls=urls))))
    images = _decode(parts, outcome, "attributes")["images"]
    assert [i["url"] for i in images] == urls and len(parts.images.fetched) == 4
    assert {i["reason"] for i in images[4:]} == {"not fetched: more than 4 images in the listing"}


def test_a_redelivered_listing_gets_the_same_event() -> None:
    # The promise downstream relies on: a repeat has the same event_id and the same content. Fresh
    # probabilities are rounded as the cache keeps them, and an image is TAGGED only for the listing
    # version whose inference produced it, so the second time (a cache hit) reads like the first.
    parts = make_pipeline()
    parts.batcher.probabilities = {  # more decimals than the cache keeps
        k: [0.9123456789] + [0.0876543211 / (len(v) - 1)] * (len(v) - 1) for k, v in parts.batcher.probabilities.items()
    }

    def event(listing_id: str) -> dict[str, Any]:
        record = _listing(listing_id, event_time=1_000)  # the same record, redelivered
        outcome = asyncio.run(_process(parts, parts.codec.encode("listing_event", record)))
        body = dict(_decode(parts, outcome, "attributes"))
        del body["event_time"], body["processing_latency_ms"]
        return body

    first = event("L1")
    assert first["images"][0]["outcome"] == "TAGGED" and parts.batcher.calls == 1
    again = event("L1")
    assert parts.batcher.calls == 1, "the repeat was answered from the cache"
    assert again == first
    other = event("L2")  # the same image, computed for another listing: a cache hit for this one
    assert other["images"][0]["outcome"] == "CACHE_HIT"
    assert {a["source"] for a in other["attributes"]} == {"CACHE"}
    assert event("L2") == other
