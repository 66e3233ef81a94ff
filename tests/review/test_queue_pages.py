"""The whole queue pages past the candidate limit of filtered views (real Redis)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from streams.config import Settings
from streams.review import store as store_module
from streams.review.items import ReviewItem
from streams.review.metrics import ReviewMetrics
from streams.review.queue import ReviewQueue
from streams.review.store import QueueFilter, ReviewStore
from tagger.taxonomy import load_taxonomy
from tests.review.harness import request_record

pytestmark = pytest.mark.integration


def test_the_unfiltered_queue_pages_through_every_item(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "CANDIDATE_LIMIT", 10)

    async def scenario() -> None:
        client = aioredis.from_url(redis_url)
        store = ReviewStore(client, f"pages-{uuid.uuid4().hex[:8]}:")
        queue = ReviewQueue(Settings(), store, load_taxonomy(), ReviewMetrics())
        for n in range(30):
            assert await store.upsert(ReviewItem.of(request_record(f"P-{n:02d}")))
        page = await queue.queue(QueueFilter(), offset=20, limit=5)
        assert page["total"] == 30 and len(page["items"]) == 5
        seen = [row["listing_id"] for row in page["items"]]
        everything = [row["listing_id"] for row in (await queue.queue(QueueFilter(), limit=200))["items"]]
        assert seen == everything[20:25] and len(everything) == 30
        filtered = await queue.queue(QueueFilter(group="apparel"), limit=200)
        assert filtered["total"] == 10, "a filtered view considers CANDIDATE_LIMIT items (the README says so)"
        await client.aclose()

    asyncio.run(scenario())
