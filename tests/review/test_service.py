"""The review service end to end: `swatch review` against the real broker and Redis, driven through its API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.review.harness import (
    low,
    model_value,
    produce,
    read_all,
    request_record,
    review_settings,
    running_review,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_queue_decision_and_events(kafka_bootstrap: str, redis_url: str, unique_name: Any, tmp_path: Path) -> None:
    settings = review_settings(kafka_bootstrap, redis_url, unique_name("rv"))
    with running_review(settings, tmp_path) as svc:
        api = svc.api
        produce(settings, settings.topics.review, "review_request", request_record("L-1", accepted=[model_value("pattern", "solid")]))
        page = wait_for(lambda: (q := api.get("/api/queue"))["total"] == 1 and q, what="the item in the queue")
        assert page["items"][0]["listing_id"] == "L-1"
        status, body = api.post("/api/items/L-1/decision", {
            "decision_id": "d-1", "version": 1,
            "attributes": [{"name": "colour", "action": "CORRECTED", "values": ["black"]}],
        })
        assert status == 200, body
        print(body)
        decisions = read_all(settings, settings.topics.decisions, "review_decision", expect=1)
        attributes = read_all(settings, settings.topics.attributes, "attribute_event", expect=1)
        print(decisions, attributes)
        assert api.get("/api/queue")["total"] == 0
