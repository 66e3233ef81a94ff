"""One builder per event schema: the only place where Swatch's event records are assembled.

Each builder returns the plain record that :class:`streams.codec.Codec` encodes. ``schema_version``
comes from the schema set (the default of that field in the current ``.avsc``), event ids from
:mod:`streams.codec.ids`, times are UTC milliseconds. Text echoed from untrusted input (titles,
image URLs, failure reasons, exception messages) is clipped to the limits of :mod:`streams.text`,
so an output cannot grow without bound with its input. The worker, the producer tools and the
review service build their events here.
"""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.codec import (
    attribute_event_id,
    dead_letter_id,
    listing_event_id,
    now_millis,
    review_decision_id,
    review_request_id,
    to_millis,
)
from streams.codec.schemas import default_schemas
from streams.combine import Decision, ImageOutcome
from streams.text import (
    MAX_ERROR_MESSAGE_CHARS,
    MAX_REASON_CHARS,
    MAX_TITLE_CHARS,
    MAX_URL_CHARS,
    clip,
    clip_optional,
)

Record = dict[str, Any]


def schema_version(name: str) -> int:
    """The ``schema_version`` that records of event ``name`` carry today."""
    return default_schemas().current(name).version


def listing_event(
    listing_id: str,
    version: int,
    *,
    merchant_id: str,
    category_path: Sequence[str],
    image_urls: Sequence[str],
    title: str | None = None,
    declared: Mapping[str, Sequence[str]] | None = None,
    operation: str = "UPSERT",
    event_time: int | None = None,
) -> Record:
    """A listing event (what merchants' systems publish; the producer tools and tests build them here)."""
    return {
        "schema_version": schema_version("listing_event"),
        "event_id": listing_event_id(listing_id, version),
        "listing_id": listing_id,
        "listing_version": version,
        "merchant_id": merchant_id,
        "operation": operation,
        "category_path": list(category_path),
        "title": title,
        "image_urls": list(image_urls),
        "declared_attributes": {k: list(v) for k, v in (declared or {}).items()},
        "event_time": now_millis() if event_time is None else event_time,
    }


def image_results(images: Sequence[ImageOutcome]) -> list[Record]:
    """The ``ImageResult`` records of the events, URLs and reasons clipped."""
    return [
        {
            "url": clip(image.url, MAX_URL_CHARS),
            "content_hash": image.content_hash,
            "outcome": image.outcome,
            "reason": clip_optional(image.reason, MAX_REASON_CHARS),
        }
        for image in images
    ]


@dataclass(frozen=True)
class ListingContext:
    """What an attribute event and a review request say about the listing they answer."""

    listing_id: str
    version: int
    merchant_id: str
    category_path: Sequence[str]
    title: str | None
    source_event_time: int
    received_ms: int  # when the worker consumed the listing event

    @classmethod
    def of(cls, listing: Mapping[str, Any], received_ms: int) -> ListingContext:
        """The context of a decoded listing event consumed at ``received_ms``."""
        return cls(
            listing_id=listing["listing_id"],
            version=int(listing["listing_version"]),
            merchant_id=listing["merchant_id"],
            category_path=list(listing["category_path"]),
            title=listing.get("title"),
            source_event_time=_millis(listing["event_time"]),
            received_ms=received_ms,
        )


def attribute_event(
    context: ListingContext,
    model_id: str,
    decision: Decision,
    images: Sequence[ImageOutcome],
    *,
    review_pending: bool,
    now: int | None = None,
) -> Record:
    """The model's attribute event for one listing version."""
    now = now_millis() if now is None else now
    return {
        "schema_version": schema_version("attribute_event"),
        "event_id": attribute_event_id(context.listing_id, context.version, model_id),
        "listing_id": context.listing_id,
        "listing_version": context.version,
        "model_id": model_id,
        "category_group": decision.group,
        "attributes": decision.attributes,
        "images": image_results(images),
        "review_pending": review_pending,
        "processing_latency_ms": max(0, now - context.received_ms),
        "source_event_time": context.source_event_time,
        "event_time": now,
    }


def review_request(
    context: ListingContext,
    model_id: str,
    decision: Decision,
    images: Sequence[ImageOutcome],
    *,
    now: int | None = None,
) -> Record:
    """The review request for a listing version with uncertain or contradicted attributes."""
    return {
        "schema_version": schema_version("review_request"),
        "event_id": review_request_id(context.listing_id, context.version, model_id),
        "listing_id": context.listing_id,
        "listing_version": context.version,
        "merchant_id": context.merchant_id,
        "category_path": list(context.category_path),
        "category_group": decision.group,
        "title": clip_optional(context.title, MAX_TITLE_CHARS),
        "model_id": model_id,
        "images": image_results(images),
        "accepted": decision.attributes,
        "uncertain": decision.uncertain,
        "source_event_time": context.source_event_time,
        "event_time": now_millis() if now is None else now,
    }


def human_attribute_event(
    review: Mapping[str, Any],
    decision: Mapping[str, Any] | None,
    attributes: Sequence[Mapping[str, Any]],
    *,
    event_id_from: str,
    review_pending: bool = False,
    now: int | None = None,
) -> Record:
    """The attribute event a reviewer's decision (or its undo, ``decision`` None) publishes.

    ``review`` is the decoded review request; ``attributes`` the listing's whole attribute set after
    the decision (kept model values and the decided ones, ``source=HUMAN``), since the topic is
    compacted and its latest event per listing is what search reads. The id hashes the listing
    version, the model and ``event_id_from`` (the decision's or the undo's event id).
    """
    now = now_millis() if now is None else now
    source_time = _millis(review.get("source_event_time") or now)
    return {
        "schema_version": schema_version("attribute_event"),
        "event_id": attribute_event_id(
            review["listing_id"], int(review["listing_version"]), review["model_id"], event_id_from
        ),
        "listing_id": review["listing_id"],
        "listing_version": int(review["listing_version"]),
        "model_id": review["model_id"],
        "category_group": review.get("category_group"),
        "attributes": [dict(a) for a in attributes],
        "images": [dict(image) for image in review.get("images", ())],
        "review_pending": review_pending,
        "processing_latency_ms": max(0, now - _millis(decision["decided_at"]) if decision else 0),
        "source_event_time": source_time,
        "event_time": now,
    }


def review_decision(
    review: Mapping[str, Any],
    reviewer: str,
    decisions: Sequence[Mapping[str, Any]],
    *,
    decided_at: int | None = None,
    comment: str | None = None,
    undoes: str | None = None,
    applied_from: str | None = None,
) -> Record:
    """A reviewer's decision on one review request.

    ``review`` is the decoded review request; ``decisions`` hold name, values and action per
    attribute, and may carry ``previous_values`` / ``previous_confidence`` (what the model said).
    The listing's category and images are copied from the request, so a decision is training data
    on its own. ``undoes`` names an earlier decision this one withdraws (and then ``decisions`` is
    empty); ``applied_from`` names the listing actually reviewed when the decision is applied to a
    listing that shares its image.
    """
    decided_at = now_millis() if decided_at is None else decided_at
    return {
        "schema_version": schema_version("review_decision"),
        "event_id": review_decision_id(review["event_id"], reviewer, decided_at),
        "review_event_id": review["event_id"],
        "listing_id": review["listing_id"],
        "listing_version": int(review["listing_version"]),
        "model_id": review["model_id"],
        "reviewer": clip(reviewer, MAX_REASON_CHARS),
        "decided_at": decided_at,
        "decisions": [
            {
                "name": d["name"],
                "values": list(d["values"]),
                "action": d["action"],
                "previous_values": list(d.get("previous_values", ())),
                "previous_confidence": d.get("previous_confidence"),
            }
            for d in decisions
        ],
        "comment": clip_optional(comment, MAX_ERROR_MESSAGE_CHARS),
        "category_path": list(review.get("category_path", ())),
        "category_group": review.get("category_group"),
        "images": [dict(image) for image in review.get("images", ())],
        "undoes": undoes,
        "applied_from": applied_from,
    }


@dataclass(frozen=True)
class Original:
    """The input record a dead letter carries back: where it was read and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()
    timestamp: int | None = None


def dead_letter(
    original: Original,
    reason: str,
    error_class: str,
    error_message: str,
    *,
    worker_id: str | None,
    value_limit: int | None = None,
    now: int | None = None,
) -> Record:
    """A dead letter for ``original``; with ``value_limit``, the original value is cut to that many bytes.

    A dead letter must fit the broker's message size even when its input nearly filled it: the
    caller passes the room left and the record says ``truncated`` with the original size.
    """
    value = original.value
    truncated = value is not None and value_limit is not None and len(value) > value_limit
    kept = value[: max(0, value_limit or 0)] if truncated and value is not None else value
    headers = [{"key": clip(k, MAX_REASON_CHARS), "value": v} for k, v in original.headers]
    return {
        "schema_version": schema_version("dead_letter"),
        "event_id": dead_letter_id(original.topic, original.partition, original.offset),
        "original_topic": original.topic,
        "original_partition": original.partition,
        "original_offset": original.offset,
        "original_timestamp": original.timestamp,
        "original_key": original.key,
        "original_value": kept,
        "original_value_size": None if value is None else len(value),
        "original_headers": [] if truncated else headers,
        "truncated": truncated,
        "reason": reason,
        "error_class": error_class,
        "error_message": clip(error_message, MAX_ERROR_MESSAGE_CHARS),
        "worker_id": worker_id,
        "event_time": now_millis() if now is None else now,
    }


def qualified_name(exc: BaseException) -> str:
    """An exception's class as ``module.QualName`` (``streams.errors.DecodeError``), as dead letters carry it."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def error_text(exc: BaseException, *, with_traceback: bool = False) -> str:
    """An exception's message for a dead letter; with a traceback digest for unexpected errors.

    The digest is the innermost three frames (file:line in function) and a short hash of the
    whole traceback, so identical bugs group together without shipping stack traces downstream.
    """
    message = clip(str(exc) or qualified_name(exc), MAX_ERROR_MESSAGE_CHARS // 2)
    if not with_traceback or exc.__traceback__ is None:
        return message
    frames = traceback.extract_tb(exc.__traceback__)
    full = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    digest = hashlib.sha256(full.encode(errors="replace")).hexdigest()[:12]
    innermost = frames[-3:][::-1]
    where = " < ".join(f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}" for frame in innermost)
    return f"{message} [at {where}; traceback {digest}]"


def _millis(value: Any) -> int:
    return int(value) if isinstance(value, int) else to_millis(value)
