"""A decision published halfway is retried with the same event ids (real Redis, a publisher failing on cue)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from streams.config import Settings
from streams.review.items import ReviewItem
from streams.review.metrics import ReviewMetrics
from streams.review.publish import PublishError
from streams.review.service import ReviewService
from streams.review.store import ReviewStore
from tagger.taxonomy import load_taxonomy
from tests.review.harness import request_record

pytestmark = pytest.mark.integration


class HalfFailingPublisher:
    """Sends the first record of a call, then fails, ``failures`` times; records everything sent."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send_all(self, records: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        for index, (topic, _schema, _key, record) in enumerate(records):
            if index == 1 and self.failures:
                self.failures -= 1
                raise PublishError(f"{topic}: broker went away")
            self.sent.append((topic, record))


def test_a_retry_after_a_half_published_decision_repeats_the_same_event_ids(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.from_url(redis_url)
        prefix = f"retry-{uuid.uuid4().hex[:8]}:"
        settings = Settings(topics={"decisions": "d", "attributes": "a"})
        store = ReviewStore(client, prefix, prefix + "published:")
        publisher = HalfFailingPublisher(failures=1)
        service = ReviewService(settings, store, publisher, load_taxonomy(), ReviewMetrics())  # type: ignore[arg-type]
        assert await store.upsert(ReviewItem.of(request_record("R-1")))
        body = {
            "decision_id": "r-1",
            "version": 1,
            "attributes": [{"name": "colour", "action": "CORRECTED", "values": ["red"]}],
        }
        with pytest.raises(PublishError):
            await service.decide("R-1", "alice", body)
        assert [topic for topic, _ in publisher.sent] == ["d"], "the decision went out, the attribute event did not"
        assert await store.get("R-1") is not None, "nothing counts as decided until both are acknowledged"
        answer = await service.decide("R-1", "alice", body)
        first, second = publisher.sent[0][1], publisher.sent[1][1]
        assert first["event_id"] == second["event_id"] == answer["decision_event_id"], "consumers can drop the repeat"
        assert publisher.sent[2][0] == "a" and answer["attribute_event_id"] == publisher.sent[2][1]["event_id"]
        assert (await service.decide("R-1", "alice", body))["repeated"] is True
        await client.aclose()

    asyncio.run(scenario())
