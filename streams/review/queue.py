"""The queue as reviewers see it: pages of pending items, an item's details, leases, skips, the gauges."""

from __future__ import annotations

from typing import Any

from streams.codec import now_millis
from streams.config import Settings
from streams.review.items import REASONS, ReviewItem
from streams.review.metrics import ReviewMetrics
from streams.review.rules import PAGE_LIMIT, ReviewError, check_reviewer
from streams.review.store import QueueFilter, ReviewStore
from tagger.taxonomy import Taxonomy


class ReviewQueue:
    """Reading the queue and holding items (the deciding half is :class:`~streams.review.service.ReviewService`)."""

    def __init__(self, settings: Settings, store: ReviewStore, taxonomy: Taxonomy, metrics: ReviewMetrics) -> None:
        self.settings = settings
        self.store = store
        self.taxonomy = taxonomy
        self.metrics = metrics
        self._lease_ttl = settings.review.lease_ttl_s

    # -- reading -----------------------------------------------------------------------------------

    async def queue(
        self, flt: QueueFilter, reviewer: str | None = None, *, offset: int = 0, limit: int = 50
    ) -> dict[str, Any]:
        """A page of the queue in review order, with counts for the filters and who holds each item."""
        limit, offset = max(1, min(limit, PAGE_LIMIT)), max(0, offset)
        if flt == QueueFilter():  # the whole queue: a page straight from the sorted set, any depth
            total, items = await self.store.depth(), await self.store.get_many(await self.store.page(offset, limit))
        elif flt.min_confidence is None and flt.max_confidence is None:
            ids = await self.store.ordered(flt)
            total, items = len(ids), await self.store.get_many(ids[offset : offset + limit])
        else:
            matching = [i for i in await self.store.get_many(await self.store.ordered(flt)) if flt.admits(i)]
            total, items = len(matching), matching[offset : offset + limit]
        holders = await self.store.holders([i.listing_id for i in items])
        rows = [{**i.summary(), "leased_by": holders.get(i.listing_id)} for i in items]
        return {
            "total": total,
            "depth": await self.store.depth(),
            "offset": offset,
            "limit": limit,
            "items": rows,
            "counts": await self.store.counts(),
            "reviewer": reviewer,
        }

    async def item(self, listing_id: str) -> dict[str, Any]:
        """Everything the item page shows: the request, taxonomy values per attribute, lease, history."""
        item = await self._pending(listing_id)
        group = self.taxonomy.groups.get(item.group or "")
        attributes = []
        for u in item.uncertain:
            attribute = group.attributes.get(u["name"]) if group else None
            previous, confidence = item.previous(u["name"])
            attributes.append(
                {
                    **u,
                    "top": previous[0] if previous else None,
                    "top_confidence": confidence,
                    "values": list(attribute.values) if attribute else [c["value"] for c in u.get("candidates", [])],
                    "multi_label": bool(attribute and attribute.multi_label),
                    "conflict": u.get("reason") == "DECLARED_CONFLICT",
                }
            )
        same = []
        for content_hash in item.usable_hashes[:1]:
            same = [i for i in await self.store.sharing_image(content_hash) if i != listing_id]
        return {
            "item": item.summary(),
            "request": item.request,
            "attributes": attributes,
            "accepted": item.accepted,
            "images": item.images,
            "leased_by": await self.store.holder(listing_id),
            "history": await self.store.history(listing_id),
            "same_image": same,
        }

    async def history(self, listing_id: str) -> list[dict[str, Any]]:
        """The listing's decisions, newest first (kept after the item left the queue)."""
        return await self.store.history(listing_id)

    async def bulk_candidates(self, flt: QueueFilter, limit: int = 100) -> list[dict[str, Any]]:
        """Items that only need a confirmation: low-confidence only, every top candidate at least the bulk bar."""
        bar = self.settings.review.bulk_min_confidence
        flt = QueueFilter(reason="LOW_CONFIDENCE", attribute=flt.attribute, group=flt.group, min_confidence=bar)
        ids = await self.store.ordered(flt)
        out = []
        holders = await self.store.holders(ids[: limit * 4])
        for item in await self.store.get_many(ids[: limit * 4]):
            if item.reasons == ["LOW_CONFIDENCE"] and flt.admits(item):
                out.append({**item.summary(), "leased_by": holders.get(item.listing_id), "proposal": self._tops(item)})
            if len(out) >= limit:
                break
        return out

    @staticmethod
    def _tops(item: ReviewItem) -> dict[str, str | None]:
        return {u["name"]: (u["candidates"][0]["value"] if u.get("candidates") else None) for u in item.uncertain}

    async def _pending(self, listing_id: str) -> ReviewItem:
        item = await self.store.get(listing_id)
        if item is None:
            raise ReviewError(404, "not_pending", f"listing {listing_id!r} has no pending review")
        return item

    # -- leases ----------------------------------------------------------------------------------

    async def claim(self, listing_id: str, reviewer: str) -> dict[str, Any]:
        """Take (or renew: the item page's heartbeat) the lease on an item; 409 when another reviewer holds it."""
        reviewer = check_reviewer(reviewer)
        item = await self._pending(listing_id)
        holder = await self.store.lease(listing_id, reviewer, self._lease_ttl, now_millis())
        if holder != reviewer:
            raise ReviewError(409, "leased", f"{listing_id} is being reviewed by {holder}")
        return {"listing_id": listing_id, "version": item.version, "reviewer": reviewer, "ttl_s": self._lease_ttl}

    async def next(self, reviewer: str, flt: QueueFilter) -> dict[str, Any] | None:
        """Claim the first item in review order that nobody holds and the reviewer has not skipped."""
        reviewer = check_reviewer(reviewer)
        skipped = await self.store.skipped(reviewer)
        ids = await self.store.ordered(flt)
        for chunk_start in range(0, len(ids), 100):
            chunk = [i for i in ids[chunk_start : chunk_start + 100] if i not in skipped]
            holders = await self.store.holders(chunk)
            for item in await self.store.get_many(chunk):
                if holders.get(item.listing_id) not in (None, reviewer) or not flt.admits(item):
                    continue
                if await self.store.lease(item.listing_id, reviewer, self._lease_ttl, now_millis()) == reviewer:
                    return {"listing_id": item.listing_id, "version": item.version, "reviewer": reviewer}
        return None

    async def skip(self, listing_id: str, reviewer: str) -> dict[str, Any]:
        """Give the item back for someone else and remember not to offer it to this reviewer for an hour."""
        reviewer = check_reviewer(reviewer)
        await self.store.release(listing_id, reviewer)
        await self.store.skip(listing_id, reviewer)
        self.metrics.skips.inc()
        return {"listing_id": listing_id, "skipped": True}

    async def release(self, listing_id: str, reviewer: str) -> dict[str, Any]:
        """Give the lease back without skipping (the reviewer closed the page)."""
        return {"listing_id": listing_id, "released": await self.store.release(listing_id, check_reviewer(reviewer))}

    async def sweep(self) -> int:
        """Count leases that expired (abandoned items); they are free for the next reviewer already."""
        expired = await self.store.sweep_expired(now_millis())
        if expired:
            self.metrics.lease_expiries.inc(expired)
        return expired

    async def refresh_depth(self) -> None:
        """Set the queue-depth gauges (by reason) from Redis."""
        counts = await self.store.counts()
        for reason in REASONS:
            self.metrics.depth.labels(reason).set(counts["reason"].get(reason, 0))
        self.metrics.pending.set(await self.store.depth())
