"""The review service end to end: `swatch review` against the real broker and Redis, driven through its API.

One service process serves the module (it joins its group once); each test uses its own listings.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from streams.codec import attribute_event_id
from streams.combine import ImageOutcome
from streams.config import Settings
from streams.embedded import free_port
from streams.events import listing_event
from tests.review.harness import (
    ReviewProcess,
    low,
    model_value,
    produce,
    produce_raw,
    read_for,
    request_record,
    review_env,
    review_settings,
    running_review,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE_TTL_S = 3.0


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, redis_url: str) -> Settings:
    prefix = f"rv{os.getpid()}x{int(time.time() * 1000) % 100000}"
    return review_settings(kafka_bootstrap, redis_url, prefix, review={"lease_ttl_s": LEASE_TTL_S})


@pytest.fixture(scope="module")
def service(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReviewProcess]:
    with running_review(settings, tmp_path_factory.mktemp("review")) as running:
        yield running


def queued(svc: ReviewProcess, listing_id: str, version: int | None = None) -> Callable[[], Any]:
    def check() -> Any:
        status, body = svc.api.call("GET", f"/api/items/{listing_id}")
        if status != 200:
            return None
        return body if version is None or body["item"]["version"] == version else None

    return check


def submit(settings: Settings, *records: dict[str, Any]) -> None:
    produce(settings, settings.topics.review, "review_request", *records)


def test_review_requests_appear_in_order_with_counts_and_filters(settings: Settings, service: ReviewProcess) -> None:
    submit(
        settings,
        request_record("Q-low", uncertain=[low("colour", [("navy", 0.55), ("black", 0.3)])]),
        request_record(
            "Q-conflict", uncertain=[low("colour", [("red", 0.97)], reason="DECLARED_CONFLICT", declared="blue")]
        ),
        request_record(
            "Q-noimage",
            uncertain=[low("pattern", [], reason="NO_USABLE_IMAGE")],
            images=[ImageOutcome("http://127.0.0.1:9/x.png", "FETCH_FAILED", reason="HTTP 404")],
            group="footwear",
            category="men/shoes/sneakers",
        ),
    )
    api = service.api
    for listing_id in ("Q-low", "Q-conflict", "Q-noimage"):
        wait_for(queued(service, listing_id), what=listing_id)
    page = api.get("/api/queue?limit=200")
    mine = [row["listing_id"] for row in page["items"] if row["listing_id"].startswith("Q-")]
    assert mine.index("Q-conflict") < mine.index("Q-low"), "merchant-declared conflicts come first"
    counts = page["counts"]
    assert counts["reason"]["DECLARED_CONFLICT"] >= 1 and counts["reason"]["NO_USABLE_IMAGE"] >= 1
    assert counts["group"]["footwear"] >= 1 and counts["attr"]["pattern"] >= 1

    def ids(query: str) -> set[str]:
        return {row["listing_id"] for row in api.get(f"/api/queue?limit=200&{query}")["items"]}

    assert "Q-conflict" in ids("reason=DECLARED_CONFLICT") and "Q-low" not in ids("reason=DECLARED_CONFLICT")
    assert ids("group=footwear") >= {"Q-noimage"} and "Q-low" not in ids("group=footwear")
    assert "Q-noimage" in ids("attribute=pattern") and "Q-low" not in ids("attribute=pattern")
    assert "Q-low" in ids("max_confidence=0.6") and "Q-conflict" not in ids("max_confidence=0.6")
    assert "Q-conflict" in ids("min_confidence=0.9")
    assert api.call("GET", "/api/queue?min_confidence=high")[0] == 400


def test_a_newer_version_replaces_the_older_item_and_a_late_old_one_is_ignored(
    settings: Settings, service: ReviewProcess
) -> None:
    submit(settings, request_record("V-1", 1), request_record("V-1", 2))
    wait_for(queued(service, "V-1", 2), what="version 2")
    submit(settings, request_record("V-1", 1), request_record("V-marker", 1))  # late v1, then a marker
    wait_for(queued(service, "V-marker"), what="the marker after the late v1")
    assert service.api.get("/api/items/V-1")["item"]["version"] == 2


def test_a_request_older_than_what_a_worker_published_is_refused(
    settings: Settings, service: ReviewProcess, redis_url: str
) -> None:
    redis.Redis.from_url(redis_url).set(f"{settings.redis.version_prefix}{settings.topics.attributes}:W-1", 4)
    submit(settings, request_record("W-1", 3), request_record("W-marker", 1))
    wait_for(queued(service, "W-marker"), what="the marker")
    assert service.api.call("GET", "/api/items/W-1")[0] == 404
    submit(settings, request_record("W-1", 4))
    wait_for(queued(service, "W-1", 4), what="the request for the published version")


def test_a_delete_or_a_newer_listing_takes_the_item_out(settings: Settings, service: ReviewProcess) -> None:
    submit(settings, request_record("D-1", 3), request_record("D-2", 1))
    wait_for(queued(service, "D-1"), what="D-1")
    wait_for(queued(service, "D-2"), what="D-2")

    def event(listing_id: str, version: int, operation: str) -> dict[str, Any]:
        return listing_event(
            listing_id, version, merchant_id="m", category_path=["women"], image_urls=[], operation=operation
        )

    produce(settings, settings.topics.listings, "listing_event", event("D-1", 3, "DELETE"), event("D-2", 2, "UPSERT"))
    wait_for(lambda: service.api.call("GET", "/api/items/D-1")[0] == 404, what="the delete")
    wait_for(lambda: service.api.call("GET", "/api/items/D-2")[0] == 404, what="the newer listing")
    submit(settings, request_record("D-1", 3), request_record("D-2", 2))  # a late request for the deleted version
    wait_for(queued(service, "D-2", 2), what="D-2 version 2 (newer than the listing event)")
    assert service.api.call("GET", "/api/items/D-1")[0] == 404


def test_a_decision_publishes_the_decision_and_a_human_attribute_event(
    settings: Settings, service: ReviewProcess
) -> None:
    record = request_record(
        "E-1",
        4,
        uncertain=[
            low("colour", [("navy", 0.55), ("black", 0.30)]),
            low("pattern", [("striped", 0.91)], reason="DECLARED_CONFLICT", declared="solid"),
        ],
        accepted=[model_value("length", "knee")],
    )
    submit(settings, record)
    wait_for(queued(service, "E-1"), what="E-1")
    status, answer = service.api.post(
        "/api/items/E-1/decision",
        {
            "decision_id": "e-1-first",
            "version": 4,
            "comment": "navy is black under this light",
            "attributes": [
                {"name": "colour", "action": "CORRECTED", "values": ["black"]},
                {"name": "pattern", "action": "CORRECTED", "values": ["striped"]},
            ],
        },
    )
    assert status == 200, answer
    [decision] = read_for(settings, settings.topics.decisions, "review_decision", "E-1", expect=1)
    [attributes] = read_for(settings, settings.topics.attributes, "attribute_event", "E-1", expect=1)
    assert decision["event_id"] == answer["decision_event_id"]
    assert decision["review_event_id"] == record["event_id"] and decision["reviewer"] == "alice"
    assert decision["listing_version"] == 4 and decision["model_id"] == record["model_id"]
    by_name = {d["name"]: d for d in decision["decisions"]}
    assert by_name["colour"]["action"] == "CORRECTED" and by_name["colour"]["previous_values"] == ["navy"]
    assert by_name["pattern"]["action"] == "CONFIRMED", "the top candidate chosen again is a confirmation"
    assert decision["images"] == record["images"] and decision["category_group"] == "apparel"
    assert attributes["event_id"] == attribute_event_id("E-1", 4, record["model_id"], decision["event_id"])
    assert attributes["review_pending"] is False
    values = {(a["name"], a["value"], a["source"], a["conflicts_with_declared"]) for a in attributes["attributes"]}
    assert values == {
        ("length", "knee", "MODEL", False),
        ("colour", "black", "HUMAN", False),
        ("pattern", "striped", "HUMAN", True),
    }
    assert service.api.call("GET", "/api/items/E-1")[0] == 404
    history = service.api.get("/api/items/E-1/history")["history"]
    assert history[0]["kind"] == "decision" and history[0]["reviewer"] == "alice"


def test_a_decision_needs_answers_from_the_taxonomy(settings: Settings, service: ReviewProcess) -> None:
    submit(settings, request_record("B-1"))
    wait_for(queued(service, "B-1"), what="B-1")
    api = service.api

    def refused(body: dict[str, Any]) -> str:
        status, answer = api.post("/api/items/B-1/decision", {"decision_id": "b-1", "version": 1, **body})
        assert status in (409, 422), answer
        return str(answer["code"])

    assert refused({"attributes": [{"name": "colour", "action": "CORRECTED", "values": ["plaid-ish"]}]}) == (
        "unknown_value"
    )
    assert refused({"attributes": []}) == "no_attributes"
    assert refused({"attributes": [{"name": "colour", "action": "SHRUG", "values": []}]}) == "bad_action"
    assert refused({"attributes": [{"name": "heel", "action": "NOT_VISIBLE", "values": []}]}) == "unknown_attribute"
    status, answer = api.post(
        "/api/items/B-1/decision",
        {"decision_id": "b-2", "version": 9, "attributes": [{"name": "colour", "action": "NOT_VISIBLE"}]},
    )
    assert (status, answer["code"]) == (409, "version_changed")
    assert api.as_(None).post("/api/items/B-1/claim")[0] == 401
    assert api.call("GET", "/api/items/B-1")[0] == 200, "refusals leave the item pending"


def test_a_lease_prevents_double_assignment_and_expires(settings: Settings, service: ReviewProcess) -> None:
    submit(settings, request_record("LS-1"))
    wait_for(queued(service, "LS-1"), what="LS-1")
    alice, bob = service.api, service.api.as_("bob")
    assert alice.post("/api/items/LS-1/claim")[0] == 200
    status, answer = bob.post("/api/items/LS-1/claim")
    assert (status, answer["code"]) == (409, "leased") and "alice" in answer["error"]
    status, answer = bob.post(
        "/api/items/LS-1/decision",
        {"decision_id": "ls-bob", "attributes": [{"name": "colour", "action": "NOT_VISIBLE"}]},
    )
    assert (status, answer["code"]) == (409, "leased")
    # Bob's next item is never the one Alice holds.
    for _ in range(3):
        status, claimed = bob.post("/api/next", {"attribute": "colour"})
        assert status in (200, 404) and (status == 404 or claimed["listing_id"] != "LS-1")
        if status == 200:
            bob.post(f"/api/items/{claimed['listing_id']}/release")
    # Alice's heartbeat renews the lease; abandoned, it expires and Bob can take the item.
    time.sleep(LEASE_TTL_S * 0.6)
    assert alice.post("/api/items/LS-1/heartbeat")[0] == 200
    time.sleep(LEASE_TTL_S * 0.6)
    assert bob.post("/api/items/LS-1/claim")[0] == 409, "the heartbeat kept Alice's lease"
    wait_for(lambda: bob.post("/api/items/LS-1/claim")[0] == 200, timeout_s=LEASE_TTL_S * 3, what="expiry")

    def expiries() -> float:
        text = service.api.get("/metrics").decode()
        lines = [ln for ln in text.splitlines() if ln.startswith("swatch_review_lease_expiries_total ")]
        return float(lines[0].split()[1]) if lines else 0.0

    wait_for(lambda: expiries() >= 1, timeout_s=15, what="the expiry counted")


def test_deciding_twice_is_harmless(settings: Settings, service: ReviewProcess) -> None:
    record = request_record("T-1", uncertain=[low("sleeve_type", [("short", 0.5)])])
    body = {"decision_id": "t-1-once", "version": 1, "attributes": [{"name": "sleeve_type", "action": "NOT_VISIBLE"}]}
    submit(settings, record)
    wait_for(queued(service, "T-1"), what="T-1")
    first = service.api.post("/api/items/T-1/decision", body)
    again = service.api.post("/api/items/T-1/decision", body)
    assert first[0] == again[0] == 200
    assert again[1]["repeated"] is True and again[1]["decision_event_id"] == first[1]["decision_event_id"]
    status, other = service.api.post("/api/items/T-1/decision", {**body, "decision_id": "t-1-other"})
    assert (status, other["code"]) == (404, "not_pending")
    time.sleep(2)
    assert len(read_for(settings, settings.topics.decisions, "review_decision", "T-1", expect=1)) == 1
    [event] = read_for(settings, settings.topics.attributes, "attribute_event", "T-1", expect=1)
    # Not visible is the taxonomy's own value where the attribute has one, as the model would say it.
    assert [(a["name"], a["value"], a["source"]) for a in event["attributes"]] == [
        ("sleeve_type", "not_visible", "HUMAN")
    ]


def test_a_decision_on_a_stale_version_does_not_overwrite_a_newer_listing(
    settings: Settings, service: ReviewProcess, redis_url: str
) -> None:
    submit(settings, request_record("S-1", 2))
    wait_for(queued(service, "S-1"), what="S-1")
    # A worker published version 5 meanwhile (the worker's version store, shared with the service).
    client = redis.Redis.from_url(redis_url)
    client.set(f"{settings.redis.version_prefix}{settings.topics.attributes}:S-1", 5)
    status, answer = service.api.post(
        "/api/items/S-1/decision",
        {
            "decision_id": "s-1",
            "version": 2,
            "attributes": [{"name": "colour", "action": "CORRECTED", "values": ["red"]}],
        },
    )
    assert status == 200 and answer["published_to_search"] is False and "5" in answer["stale_reason"]
    assert len(read_for(settings, settings.topics.decisions, "review_decision", "S-1", expect=1)) == 1
    assert read_for(settings, settings.topics.attributes, "attribute_event", "S-1", expect=1, timeout_s=3) == []


def test_undo_withdraws_the_last_decision(settings: Settings, service: ReviewProcess) -> None:
    record = request_record("U-1", accepted=[model_value("pattern", "solid")])
    submit(settings, record)
    wait_for(queued(service, "U-1"), what="U-1")
    carol = service.api.as_("carol")
    status, decided = carol.post(
        "/api/items/U-1/decision",
        {
            "decision_id": "u-1",
            "version": 1,
            "attributes": [{"name": "colour", "action": "CORRECTED", "values": ["red"]}],
        },
    )
    assert status == 200
    status, undone = carol.post("/api/undo")
    assert status == 200 and undone["undoes"] == decided["decision_event_id"] and undone["requeued"] is True
    decisions = read_for(settings, settings.topics.decisions, "review_decision", "U-1", expect=2)
    assert decisions[1]["undoes"] == decided["decision_event_id"] and decisions[1]["decisions"] == []
    events = read_for(settings, settings.topics.attributes, "attribute_event", "U-1", expect=2)
    assert events[1]["review_pending"] is True
    assert [(a["name"], a["source"]) for a in events[1]["attributes"]] == [("pattern", "MODEL")]
    item = carol.get("/api/items/U-1")
    assert item["leased_by"] == "carol" and item["history"][0]["kind"] == "undo"
    assert carol.post("/api/undo")[0] == 404


def test_one_decision_can_be_applied_to_listings_that_share_the_image(
    settings: Settings, service: ReviewProcess
) -> None:
    shared = [ImageOutcome("http://127.0.0.1:9/same.png", "TAGGED", content_hash="c" * 64)]
    submit(settings, request_record("H-1", images=shared), request_record("H-2", 3, images=shared))
    wait_for(queued(service, "H-1"), what="H-1")
    wait_for(queued(service, "H-2"), what="H-2")
    item = service.api.get("/api/items/H-1")
    assert item["same_image"] == ["H-2"]
    status, answer = service.api.post(
        "/api/items/H-1/decision",
        {
            "decision_id": "h-1",
            "version": 1,
            "attributes": [{"name": "colour", "action": "CORRECTED", "values": ["green"]}],
            "apply_to": item["same_image"],
        },
    )
    assert status == 200 and answer["applied_to"][0]["listing_id"] == "H-2"
    [other] = read_for(settings, settings.topics.decisions, "review_decision", "H-2", expect=1)
    assert other["applied_from"] == "H-1" and other["listing_version"] == 3
    assert service.api.call("GET", "/api/items/H-2")[0] == 404


def test_bulk_accept_confirms_high_confidence_items(settings: Settings, service: ReviewProcess) -> None:
    submit(
        settings,
        request_record("K-1", uncertain=[low("colour", [("navy", 0.88)])]),
        request_record("K-2", uncertain=[low("colour", [("navy", 0.3)])]),
    )
    wait_for(queued(service, "K-1"), what="K-1")
    wait_for(queued(service, "K-2"), what="K-2")
    offered = {row["listing_id"] for row in service.api.get("/api/bulk")["items"]}
    assert "K-1" in offered and "K-2" not in offered
    status, answer = service.api.post(
        "/api/bulk/accept", {"items": [{"listing_id": "K-1", "version": 1, "decision_id": "k-1"}]}
    )
    assert status == 200 and answer["results"][0]["status"] == "decided"
    [decision] = read_for(settings, settings.topics.decisions, "review_decision", "K-1", expect=1)
    assert decision["decisions"][0]["action"] == "CONFIRMED"


def test_a_malformed_review_request_is_dead_lettered_and_the_agent_goes_on(
    settings: Settings, service: ReviewProcess
) -> None:
    produce_raw(settings, settings.topics.review, b"M-garbage", b"\x00not avro at all")
    submit(settings, request_record("M-after"))
    wait_for(queued(service, "M-after"), what="the request after the garbage")
    from streams.tail import read_topic

    def letters() -> list[dict[str, Any]]:
        return [r.value for r in read_topic(settings, settings.topics.dlq, idle_timeout_s=1.0)]

    [letter] = wait_for(letters, what="the dead letter")
    assert letter["original_topic"] == settings.topics.review and letter["original_key"] == b"M-garbage"
    assert letter["reason"] in ("undecodable", "unknown_schema")


def test_metrics_report_depth_decisions_and_agreement(settings: Settings, service: ReviewProcess) -> None:
    text = service.api.get("/metrics").decode()
    for name in ("swatch_review_queue_depth", "swatch_review_decisions_total", "swatch_review_agreement_total"):
        assert name in text
    assert 'swatch_review_agreement_total{agreement="disagree",attribute="colour"}' in text


def test_the_queue_survives_a_restart(settings: Settings, service: ReviewProcess, tmp_path: Path) -> None:
    # A second replica in the same group shares the Redis state: stopping one loses nothing.
    submit(settings, request_record("R-1"))
    wait_for(queued(service, "R-1"), what="R-1")
    before = service.api.get("/api/queue?limit=200")["total"]
    second = settings.model_copy(update={"review": settings.review.model_copy(update={"port": free_port()})})
    with running_review(second, tmp_path) as other:
        assert other.api.get("/api/queue?limit=200")["total"] == before
        assert other.api.get("/api/items/R-1")["item"]["listing_id"] == "R-1"
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [], "Faust's data folder is not in the cwd"


def test_it_refuses_a_public_address_without_a_proxy_in_front(settings: Settings) -> None:
    env = {**review_env(settings), "SWATCH_REVIEW_HOST": "0.0.0.0"}  # noqa: S104 - the address it must refuse
    done = subprocess.run(
        [sys.executable, "-m", "streams", "review"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "SWATCH_REVIEW_BEHIND_PROXY" in done.stderr


def test_behind_a_proxy_requests_without_the_reviewer_header_are_refused(settings: Settings, tmp_path: Path) -> None:
    proxied = settings.model_copy(
        update={
            "review": settings.review.model_copy(
                update={"port": free_port(), "behind_proxy": True, "group_id": settings.review.group_id + "-p"}
            )
        }
    )
    with running_review(proxied, tmp_path) as svc:
        status, answer = svc.api.as_(None).call("GET", "/api/queue")
        assert (status, answer["code"]) == (401, "no_reviewer")
        assert svc.api.call("GET", "/api/queue")[0] == 200


def test_the_item_page_shows_the_image_and_the_grad_cam_of_the_model_under_review(
    settings: Settings, service: ReviewProcess, tmp_path: Path
) -> None:
    import hashlib
    import io

    from PIL import Image

    from streams.images_server import ImageServer
    from tagger.card import default_model_dir, read_card

    Image.new("RGB", (96, 128), (200, 30, 40)).save(tmp_path / "dress.png")
    data = (tmp_path / "dress.png").read_bytes()
    demo_model = read_card(default_model_dir()).model_id
    with ImageServer(tmp_path) as server:
        url = server.base_url + "dress.png"
        images = [ImageOutcome(url, "TAGGED", content_hash=hashlib.sha256(data).hexdigest())]
        submit(
            settings,
            request_record("G-1", images=images, model_id=demo_model),
            request_record("G-2", images=images),  # reviewed model not loaded here
        )
        wait_for(queued(service, "G-1"), what="G-1")
        wait_for(queued(service, "G-2"), what="G-2")
        status, body = service.api.call("GET", "/api/items/G-1/images/0")
        assert status == 200 and body == data, "the image comes through the service's own fetcher"
        status, png = service.api.call("GET", "/api/items/G-1/gradcam/colour.png")
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
        assert min(Image.open(io.BytesIO(png)).size) > 0
        status, answer = service.api.call("GET", "/api/items/G-2/gradcam/colour.png")
        assert (status, answer["code"]) == (404, "model_not_loaded")
        assert service.api.call("GET", "/api/items/G-1/images/7")[0] == 404


def test_decisions_are_checked_against_the_served_models_taxonomy(settings: Settings, tmp_path: Path) -> None:
    # A deployment serving its own model (SWATCH_MODEL_DIR) with a colour the default taxonomy lacks
    import json
    import shutil

    from tagger.card import DEMO_MODEL_DIR

    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL_DIR, model)
    card = json.loads((model / "model_card.json").read_text())
    card["taxonomy"]["groups"]["apparel"]["attributes"]["colour"]["values"].append("chartreuse")
    (model / "model_card.json").write_text(json.dumps(card))
    own = settings.model_copy(
        update={
            "model": settings.model.model_copy(update={"dir": model}),
            "review": settings.review.model_copy(update={"port": free_port(), "group_id": "own-model-review"}),
        }
    )
    with running_review(own, tmp_path) as svc:
        submit(own, request_record("TX-1"))
        wait_for(queued(svc, "TX-1"), what="TX-1")
        status, answer = svc.api.post(
            "/api/items/TX-1/decision",
            {
                "decision_id": "tx-1",
                "version": 1,
                "attributes": [{"name": "colour", "action": "CORRECTED", "values": ["chartreuse"]}],
            },
        )
        assert status == 200, answer
