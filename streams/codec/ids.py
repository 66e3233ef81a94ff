"""Deterministic event ids: the same subject always gives the same id, so consumers can deduplicate.

Each id is the hex SHA-256 of a kind tag and the length-prefixed parts, so ids of different kinds
never collide and no choice of separators inside a part can make two subjects look alike.
"""

from __future__ import annotations

import hashlib


def _digest(kind: str, *parts: str | int) -> str:
    digest = hashlib.sha256(kind.encode())
    for part in parts:
        data = str(part).encode()
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return digest.hexdigest()


def listing_event_id(listing_id: str, listing_version: int) -> str:
    """Id of a listing event: one per listing version."""
    return _digest("swatch.listing", listing_id, listing_version)


def attribute_event_id(listing_id: str, listing_version: int, model_id: str, decision_id: str | None = None) -> str:
    """Id of an attribute event: per listing version and model, plus the decision's id for human ones.

    A model's event hashes three parts; an event made from a reviewer's decision hashes a fourth,
    the decision's ``event_id`` (no empty part is ever hashed, so the README's recipe reproduces it).
    """
    if decision_id is None:
        return _digest("swatch.attributes", listing_id, listing_version, model_id)
    return _digest("swatch.attributes", listing_id, listing_version, model_id, decision_id)


def review_request_id(listing_id: str, listing_version: int, model_id: str) -> str:
    """Id of a review request: per listing version and model."""
    return _digest("swatch.review", listing_id, listing_version, model_id)


def review_decision_id(review_event_id: str, reviewer: str, decided_at_ms: int) -> str:
    """Id of a reviewer's decision on one review request."""
    return _digest("swatch.decision", review_event_id, reviewer, decided_at_ms)


def dead_letter_id(topic: str, partition: int, offset: int) -> str:
    """Id of a dead letter: per input record, so a retried dead letter is recognisable."""
    return _digest("swatch.dlq", topic, partition, offset)
