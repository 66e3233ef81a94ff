"""What reviewers can do, independent of how they ask (the HTML pages and the JSON API both call this).

A decision is checked (the reviewer holds or can take the lease, the version is the pending one,
every uncertain attribute is answered with values from the taxonomy), then published: a
``review_decision`` event (the audit trail and training data) and, unless a newer version of the
listing has been published meanwhile, an ``attribute_event`` with ``source=HUMAN`` for search.
Only after the broker acknowledged both is the item removed and the decision id's answer stored;
a repeated submission with the same decision id gets that answer and publishes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from streams.cache import MAX_VERSION_SCRIPT, version_key_prefix
from streams.codec import now_millis
from streams.config import Settings
from streams.events import human_attribute_event, review_decision
from streams.review.items import ReviewItem, top_confidence
from streams.review.metrics import ReviewMetrics
from streams.review.publish import Publisher
from streams.review.queue import ReviewQueue
from streams.review.rules import (
    MAX_COMMENT,
    PAGE_LIMIT,
    ReviewError,
    attributes_after,
    check_reviewer,
    checked_choices,
    decision_id_of,
    listing_ids_of,
)
from streams.review.store import ReviewStore
from tagger.taxonomy import Taxonomy

logger = logging.getLogger(__name__)


class VersionLookup:
    """The worker's record of each listing's last published version, read and kept at its maximum.

    Same keys and script as the worker's cache (:mod:`streams.cache`), without its fail-open: a
    decision waits for Redis rather than publish past a version it could not check.
    """

    def __init__(self, store: ReviewStore, settings: Settings) -> None:
        self._client = store.client
        self._prefix = version_key_prefix(settings.redis.version_prefix, settings.topics.attributes)

    async def last(self, listing_id: str) -> int | None:
        """The highest version any worker or reviewer published."""
        raw = await self._client.get(self._prefix + listing_id)
        return None if raw is None else int(raw)

    async def record(self, listing_id: str, version: int, ttl_s: int) -> None:
        """Keep the maximum, as the worker does."""
        await self._client.eval(MAX_VERSION_SCRIPT, 1, self._prefix + listing_id, version, ttl_s)


class ReviewService(ReviewQueue):
    """The reviewer's operations: the queue's (reading, leases) and deciding, over the publisher."""

    def __init__(
        self,
        settings: Settings,
        store: ReviewStore,
        publisher: Publisher,
        taxonomy: Taxonomy,
        metrics: ReviewMetrics,
    ) -> None:
        super().__init__(settings, store, taxonomy, metrics)
        self.publisher = publisher
        self.versions = VersionLookup(store, settings)

    # -- deciding --------------------------------------------------------------------------------

    async def accept(self, listing_id: str, reviewer: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Confirm the model's top candidate for every uncertain attribute."""
        item = await self._pending(listing_id)
        choices = []
        for u in item.uncertain:
            if not u.get("candidates"):
                raise ReviewError(422, "no_candidate", f"{u['name']} has no candidate to accept: correct it instead")
            choices.append({"name": u["name"], "action": "CONFIRMED", "values": [u["candidates"][0]["value"]]})
        return await self.decide(listing_id, reviewer, {**body, "attributes": choices})

    async def bulk_accept(self, reviewer: str, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Accept many items at once (each entry: listing_id, version, decision_id); one answer per entry."""
        results = []
        for entry in entries[:PAGE_LIMIT]:
            listing_id = str(entry.get("listing_id", ""))
            try:
                results.append(await self.accept(listing_id, reviewer, entry))
            except ReviewError as exc:
                results.append(_refused(listing_id, exc))
        return results

    async def decide(self, listing_id: str, reviewer: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a decision (see the module docstring); ``body["apply_to"]`` lists listings sharing the image."""
        reviewer = check_reviewer(reviewer)
        decision_id = decision_id_of(body)
        decided_at, known = await self._claim(decision_id)
        if known is not None:
            return known
        result = await self._attempt(decision_id, decided_at, listing_id, reviewer, body, applied_from=None)
        await self.store.finish_token(decision_id, result, self.settings.review.decision_memory_s)
        also = []
        for other in listing_ids_of(body.get("apply_to")):
            if other == listing_id:
                continue
            also.append(await self._apply_to(other, reviewer, body, decision_id, listing_id))
        if also:
            result = {**result, "applied_to": also}
            await self.store.finish_token(decision_id, result, self.settings.review.decision_memory_s)
        return result

    async def _claim(self, token: str) -> tuple[int, dict[str, Any] | None]:
        """Claim a decision id: its time (kept from a failed try) and, for a finished one, its answer."""
        known = await self.store.claim_token(token)
        if known is None:
            return now_millis(), None
        if known.get("status") == "in_progress":
            raise ReviewError(409, "in_progress", f"decision {token} is being applied; retry shortly")
        if known.get("status") == "retry":
            return int(known["decided_at"]), None
        return int(known.get("decided_at", 0)), {**known, "repeated": True}

    async def _attempt(
        self,
        token: str,
        decided_at: int,
        listing_id: str,
        reviewer: str,
        body: Mapping[str, Any],
        *,
        applied_from: str | None,
    ) -> dict[str, Any]:
        """One try of a decision under a claimed token.

        A refusal forgets the token (nothing was published). Any other failure (the broker or the
        registry) may have published part of it, so the token keeps ``decided_at``: the retry
        builds the same events with the same ids, and consumers drop the duplicates.
        """
        try:
            return await self._decide(listing_id, reviewer, body, token, decided_at, applied_from=applied_from)
        except ReviewError:
            await self.store.drop_token(token)
            raise
        except BaseException:
            await self.store.retry_token(token, decided_at)
            raise

    async def _apply_to(
        self, other: str, reviewer: str, body: Mapping[str, Any], decision_id: str, reviewed: str
    ) -> dict[str, Any]:
        """The same answers for another pending listing with the same image (its own decision and events)."""
        token = f"{decision_id}:{other}"[:128]
        try:
            decided_at, known = await self._claim(token)
        except ReviewError as exc:  # being applied by a concurrent request
            return _refused(other, exc)
        if known is not None:
            return known
        try:
            item = await self._pending(other)
            result = await self._attempt(
                token, decided_at, other, reviewer, {**body, "version": item.version}, applied_from=reviewed
            )
        except ReviewError as exc:
            await self.store.drop_token(token)  # nothing was published for this listing
            return _refused(other, exc)
        await self.store.finish_token(token, result, self.settings.review.decision_memory_s)
        return result

    async def _decide(
        self,
        listing_id: str,
        reviewer: str,
        body: Mapping[str, Any],
        token: str,
        decided_at: int,
        *,
        applied_from: str | None,
    ) -> dict[str, Any]:
        item = await self._pending(listing_id)
        version = body.get("version")
        if version is not None and int(version) != item.version:
            raise ReviewError(
                409, "version_changed", f"{listing_id} is now version {item.version}, not {version}: reload it"
            )
        holder = await self.store.lease(listing_id, reviewer, self._lease_ttl, now_millis())
        if holder != reviewer:
            raise ReviewError(409, "leased", f"{listing_id} is being reviewed by {holder}")
        choices = checked_choices(self.taxonomy, item, body.get("attributes"))
        decisions = []
        for choice in choices:
            previous, confidence = item.previous(choice.name)
            action = choice.action
            if action in ("CONFIRMED", "CORRECTED"):
                action = "CONFIRMED" if sorted(choice.values) == sorted(previous) else "CORRECTED"
            decisions.append(
                {
                    "name": choice.name,
                    "values": list(choice.values),
                    "action": action,
                    "previous_values": previous,
                    "previous_confidence": confidence,
                }
            )
        comment = body.get("comment")
        comment = str(comment)[:MAX_COMMENT] if comment else None
        record = review_decision(
            item.request, reviewer, decisions, decided_at=decided_at, comment=comment, applied_from=applied_from
        )
        last = await self.versions.last(listing_id)
        stale = last is not None and last > item.version
        topics = self.settings.topics
        outputs = [(topics.decisions, "review_decision", listing_id, record)]
        attribute_event_id = None
        if not stale:
            event = human_attribute_event(
                item.request, record, attributes_after(self.taxonomy, item, decisions), event_id_from=record["event_id"]
            )
            outputs.append((topics.attributes, "attribute_event", listing_id, event))
            attribute_event_id = event["event_id"]
        await self.publisher.send_all(outputs)
        if not stale:
            await self.versions.record(listing_id, item.version, self.settings.redis.ttl_s)
        else:
            self.metrics.stale_decisions.inc()
            logger.info("decision on %s v%d not published to search: v%s is newer", listing_id, item.version, last)
        await self.store.remove(listing_id, item.version)
        await self.store.release(listing_id, reviewer)
        self._count(item, decisions)
        result = {
            "status": "decided",
            "listing_id": listing_id,
            "version": item.version,
            "decision_id": token,
            "decision_event_id": record["event_id"],
            "attribute_event_id": attribute_event_id,
            "published_to_search": not stale,
            "stale_reason": f"version {last} is newer" if stale else None,
            "decisions": decisions,
            "reviewer": reviewer,
            "decided_at": decided_at,
        }
        await self.store.add_history(
            listing_id,
            {
                "kind": "decision",
                "reviewer": reviewer,
                "decided_at": decided_at,
                "version": item.version,
                "decision_event_id": record["event_id"],
                "decisions": decisions,
                "comment": comment,
                "applied_from": applied_from,
                "published_to_search": not stale,
            },
        )
        await self.store.push_undo(
            reviewer,
            {
                "listing_id": listing_id,
                "decision_event_id": record["event_id"],
                "published": not stale,
                "request": item.request,
            },
        )
        return result

    def _count(self, item: ReviewItem, decisions: Sequence[Mapping[str, Any]]) -> None:
        self.metrics.decisions.inc()
        for d in decisions:
            agreement = {"CONFIRMED": "agree", "CORRECTED": "disagree"}.get(d["action"], d["action"].lower())
            self.metrics.agreement.labels(d["name"], agreement).inc()
        for u in item.uncertain:
            self.metrics.decided_confidence.observe(top_confidence(u))

    # -- undo ----------------------------------------------------------------------------------

    async def undo(self, reviewer: str) -> dict[str, Any]:
        """Withdraw the reviewer's last decision: an undo event, search restored, the item back in the queue.

        The undo is a ``review_decision`` with ``undoes`` set (training exports drop the withdrawn
        decision); search gets the model's attributes back with ``review_pending`` (unless a newer
        version was published since); the item returns to the queue, leased to the reviewer.
        """
        reviewer = check_reviewer(reviewer)
        entry = await self.store.pop_undo(reviewer)
        if entry is None:
            raise ReviewError(404, "nothing_to_undo", "no decision of yours to undo")
        try:
            return await self._undo(reviewer, entry)
        except BaseException:
            await self.store.restore_undo(reviewer, entry)
            raise

    async def _undo(self, reviewer: str, entry: dict[str, Any]) -> dict[str, Any]:
        item = ReviewItem(entry["request"])
        listing_id = item.listing_id
        now = entry.setdefault("undo_at", now_millis())  # a retried undo builds the same events, same ids
        record = review_decision(item.request, reviewer, [], decided_at=now, undoes=entry["decision_event_id"])
        topics = self.settings.topics
        outputs = [(topics.decisions, "review_decision", listing_id, record)]
        last = await self.versions.last(listing_id)
        restored = entry.get("published") and (last is None or last <= item.version)
        if restored:
            event = human_attribute_event(
                item.request, None, item.accepted, event_id_from=record["event_id"], review_pending=True
            )
            outputs.append((topics.attributes, "attribute_event", listing_id, event))
        await self.publisher.send_all(outputs)
        requeued = await self.store.upsert(item)
        if requeued:
            await self.store.lease(listing_id, reviewer, self._lease_ttl, now)
        await self.store.add_history(
            listing_id,
            {
                "kind": "undo",
                "reviewer": reviewer,
                "decided_at": now,
                "version": item.version,
                "decision_event_id": record["event_id"],
                "undoes": entry["decision_event_id"],
            },
        )
        self.metrics.undos.inc()
        return {
            "status": "undone",
            "listing_id": listing_id,
            "version": item.version,
            "undo_event_id": record["event_id"],
            "undoes": entry["decision_event_id"],
            "search_restored": bool(restored),
            "requeued": requeued,
        }


def _refused(listing_id: str, exc: ReviewError) -> dict[str, Any]:
    """One listing's refusal inside a bulk or same-image answer."""
    return {"listing_id": listing_id, "status": "refused", "code": exc.code, "error": str(exc)}


__all__ = ["ReviewError", "ReviewService", "check_reviewer"]
