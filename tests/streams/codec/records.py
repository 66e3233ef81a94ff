"""Valid records for every schema: realistic hand-written ones and seeded random ones."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from fastavro.utils import generate_many

from streams.codec import (
    SCHEMA_NAMES,
    attribute_event_id,
    dead_letter_id,
    listing_event_id,
    review_decision_id,
    review_request_id,
    to_millis,
)
from streams.codec.schemas import default_schemas

T0 = 1_795_771_541_655
MODEL = "efficientnet_b0-demo@1.0.0+3f2a9c1d"
IMAGE = {
    "url": "https://cdn.example.com/p/123/front.jpg",
    "content_hash": "9f" * 32,
    "outcome": "TAGGED",
    "reason": None,
}
FAILED_IMAGE = {
    "url": "http://10.0.0.5/x.jpg",
    "content_hash": None,
    "outcome": "BLOCKED_URL",
    "reason": "private address",
}
ACCEPTED = {
    "name": "colour",
    "value": "navy",
    "confidence": 0.97,
    "source": "MODEL",
    "declared_value": "blue",
    "conflicts_with_declared": True,
}

REALISTIC: dict[str, dict[str, Any]] = {
    "listing_event": {
        "schema_version": 1,
        "event_id": listing_event_id("L-1", 7),
        "listing_id": "L-1",
        "listing_version": 7,
        "merchant_id": "m-42",
        "operation": "UPSERT",
        "category_path": ["apparel", "dresses", "midi"],
        "title": "Robe fleurie à manches courtes \u2013 bleu marine \U0001f457",
        "image_urls": ["https://cdn.example.com/p/123/front.jpg", "https://cdn.example.com/p/123/back.jpg"],
        "declared_attributes": {"colour": ["blue"], "pattern": ["floral", "striped"]},
        "event_time": T0,
    },
    "attribute_event": {
        "schema_version": 1,
        "event_id": attribute_event_id("L-1", 7, MODEL),
        "listing_id": "L-1",
        "listing_version": 7,
        "model_id": MODEL,
        "category_group": "apparel",
        "attributes": [
            ACCEPTED,
            {
                **ACCEPTED,
                "name": "pattern",
                "value": "floral",
                "source": "CACHE",
                "declared_value": None,
                "conflicts_with_declared": False,
            },
        ],
        "images": [IMAGE, FAILED_IMAGE],
        "review_pending": True,
        "processing_latency_ms": 184,
        "source_event_time": T0,
        "event_time": T0 + 250,
    },
    "review_request": {
        "schema_version": 1,
        "event_id": review_request_id("L-1", 7, MODEL),
        "listing_id": "L-1",
        "listing_version": 7,
        "merchant_id": "m-42",
        "category_path": ["apparel", "dresses"],
        "category_group": "apparel",
        "title": None,
        "model_id": MODEL,
        "images": [IMAGE],
        "accepted": [ACCEPTED],
        "uncertain": [
            {
                "name": "sleeve_type",
                "candidates": [{"value": "short", "confidence": 0.51}, {"value": "cap", "confidence": 0.32}],
                "threshold": 0.8,
                "reason": "LOW_CONFIDENCE",
                "declared_value": None,
            }
        ],
        "source_event_time": T0,
        "event_time": T0 + 250,
    },
    "review_decision": {
        "schema_version": 2,
        "event_id": review_decision_id(review_request_id("L-1", 7, MODEL), "rev-9", T0 + 60_000),
        "review_event_id": review_request_id("L-1", 7, MODEL),
        "listing_id": "L-1",
        "listing_version": 7,
        "model_id": MODEL,
        "reviewer": "rev-9",
        "decided_at": T0 + 60_000,
        "decisions": [
            {
                "name": "sleeve_type",
                "values": ["cap"],
                "action": "CORRECTED",
                "previous_values": ["short"],
                "previous_confidence": 0.61,
            },
            {
                "name": "neck_type",
                "values": [],
                "action": "NOT_VISIBLE",
                "previous_values": [],
                "previous_confidence": None,
            },
        ],
        "comment": "model confused cap and short sleeves",
        "category_path": ["women", "clothing", "tops"],
        "category_group": "apparel",
        "images": [
            {"url": "https://img.example.com/L-1/0.jpg", "content_hash": "ab" * 32, "outcome": "TAGGED", "reason": None}
        ],
        "undoes": None,
        "applied_from": None,
    },
    "dead_letter": {
        "schema_version": 2,
        "event_id": dead_letter_id("listings", 3, 1042),
        "original_topic": "listings",
        "original_partition": 3,
        "original_offset": 1042,
        "original_timestamp": T0,
        "original_key": b"L-1",
        "original_value": b"\x00\xff not avro",
        "original_value_size": 11,
        "truncated": False,
        "original_headers": [{"key": "trace-id", "value": b"abc"}, {"key": "empty", "value": None}],
        "reason": "undecodable",
        "error_class": "streams.errors.DecodeError",
        "error_message": "not a Swatch event",
        "worker_id": "swatch-worker-7d9f-abcde",
        "event_time": T0 + 5,
    },
}


def random_records(name: str, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` random valid records for schema ``name``, the same for the same seed."""
    random.seed(f"{name}:{seed}")
    return list(generate_many(default_schemas().current(name).parsed, count))


def plain(value: Any) -> Any:
    """A record with timestamps as epoch milliseconds, for comparing what went in with what came out."""
    if isinstance(value, datetime):
        return to_millis(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


assert set(REALISTIC) == set(SCHEMA_NAMES)
