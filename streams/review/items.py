"""A pending review item: one listing version's review request, with what the queue sorts and filters by."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streams.codec import to_millis

REASONS = ("DECLARED_CONFLICT", "LOW_CONFIDENCE", "NO_USABLE_IMAGE")
USABLE = ("TAGGED", "CACHE_HIT")
# Queue order: merchant-declared conflicts first, then oldest listing first.
_CONFLICT_RANK = 0
_OTHER_RANK = 1
_RANK_SPAN = 10**13  # more milliseconds than any event time Swatch will see


def plain_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A decoded record as JSON-ready data (timestamps as UTC milliseconds)."""
    return {key: _plain(value) for key, value in record.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return to_millis(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ReviewItem:
    """A review request waiting for a reviewer (``request`` is the decoded record as plain data)."""

    request: dict[str, Any]

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> ReviewItem:
        """The item of a decoded review request."""
        return cls(plain_record(record))

    @classmethod
    def loads(cls, raw: str | bytes) -> ReviewItem:
        """The item stored as JSON."""
        return cls(json.loads(raw))

    def dumps(self) -> str:
        """JSON for Redis."""
        return json.dumps(self.request, separators=(",", ":"), sort_keys=True)

    @property
    def listing_id(self) -> str:
        """The listing under review."""
        return str(self.request["listing_id"])

    @property
    def version(self) -> int:
        """The listing version the predictions were made for."""
        return int(self.request["listing_version"])

    @property
    def model_id(self) -> str:
        """The model whose predictions are reviewed."""
        return str(self.request["model_id"])

    @property
    def group(self) -> str | None:
        """The taxonomy group, when the category mapped to one."""
        group = self.request.get("category_group")
        return str(group) if group else None

    @property
    def uncertain(self) -> list[dict[str, Any]]:
        """The attributes to decide, each with candidates, threshold, reason and declared value."""
        return list(self.request.get("uncertain") or [])

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """The model's accepted attribute values (context, and kept in the human attribute event)."""
        return list(self.request.get("accepted") or [])

    @property
    def images(self) -> list[dict[str, Any]]:
        """The listing's images with content hash and outcome."""
        return list(self.request.get("images") or [])

    @property
    def usable_hashes(self) -> list[str]:
        """Content hashes of the images the model could use, in listing order."""
        return [i["content_hash"] for i in self.images if i.get("content_hash") and i.get("outcome") in USABLE]

    @property
    def reasons(self) -> list[str]:
        """The review reasons of the uncertain attributes (each once, in :data:`REASONS` order)."""
        present = {u.get("reason") for u in self.uncertain}
        return [r for r in REASONS if r in present]

    @property
    def attributes(self) -> list[str]:
        """Names of the attributes to decide."""
        return [str(u["name"]) for u in self.uncertain]

    @property
    def conflict(self) -> bool:
        """Whether an attribute contradicts the merchant's declared value."""
        return "DECLARED_CONFLICT" in self.reasons

    @property
    def min_confidence(self) -> float:
        """The lowest top-candidate confidence over the uncertain attributes (0 without candidates)."""
        tops = [top_confidence(u) for u in self.uncertain]
        return min(tops) if tops else 0.0

    @property
    def priority(self) -> float:
        """Queue score: lower is reviewed first (conflicts, then the oldest listing)."""
        rank = _CONFLICT_RANK if self.conflict else _OTHER_RANK
        return float(rank * _RANK_SPAN + int(self.request.get("source_event_time") or 0))

    def index_names(self) -> list[str]:
        """The filter indexes this item belongs to (``reason:X``, ``attr:Y``, ``group:Z``)."""
        names = [f"reason:{r}" for r in self.reasons] + [f"attr:{a}" for a in self.attributes]
        names.append(f"group:{self.group or '-'}")
        return names

    def summary(self) -> dict[str, Any]:
        """What the queue page and the API list show for one item."""
        return {
            "listing_id": self.listing_id,
            "version": self.version,
            "title": self.request.get("title"),
            "merchant_id": self.request.get("merchant_id"),
            "category_group": self.group,
            "reasons": self.reasons,
            "attributes": self.attributes,
            "min_confidence": round(self.min_confidence, 4),
            "conflict": self.conflict,
            "image_count": len(self.images),
            "source_event_time": self.request.get("source_event_time"),
            "model_id": self.model_id,
        }

    def previous(self, name: str) -> tuple[list[str], float | None]:
        """What the listing had for attribute ``name`` before review: accepted values, or the top candidate."""
        accepted = [a for a in self.accepted if a["name"] == name]
        if accepted:
            return [str(a["value"]) for a in accepted], float(max(a["confidence"] for a in accepted))
        for u in self.uncertain:
            if u["name"] == name and u.get("candidates"):
                top = u["candidates"][0]
                return [str(top["value"])], float(top["confidence"])
        return [], None

    def declared(self, name: str) -> str | None:
        """The merchant's declared value of ``name``, when the request carries one."""
        for entry in [*self.uncertain, *self.accepted]:
            if entry["name"] == name and entry.get("declared_value"):
                return str(entry["declared_value"])
        return None


def top_confidence(uncertain: Mapping[str, Any]) -> float:
    """The top candidate's confidence of an uncertain attribute (0 without candidates)."""
    candidates: Sequence[Mapping[str, Any]] = uncertain.get("candidates") or []
    return float(candidates[0]["confidence"]) if candidates else 0.0
