"""From per-image probabilities to a listing's decision: accepted attributes, review candidates, conflicts.

The rule, per attribute that applies to the listing's category group:

- **Combining images.** Only images that gave predictions (outcome TAGGED or CACHE_HIT) count.
  A single-label attribute takes the mean of the images' probability vectors (a detail shot that
  cannot see the hem dilutes the vote instead of overruling it); a multi-label attribute (pattern)
  takes each value's maximum over the images (a pattern seen on any image is there).
- **Accepting.** Single-label: the top value is accepted when its combined probability reaches the
  attribute's threshold. Multi-label: every value at or above the threshold is accepted; when none
  is, the attribute is uncertain. Thresholds come from the model card, overridden by
  ``SWATCH_MODEL_THRESHOLDS`` (``colour=0.8`` for every group's colour, ``apparel.colour=0.8`` for one).
- **Review.** An uncertain attribute goes to review with its top three candidates
  (LOW_CONFIDENCE). An accepted attribute that differs from what the merchant declared (after the
  taxonomy's merges) is published flagged ``conflicts_with_declared`` and also sent to review
  (DECLARED_CONFLICT). When no image of a listing gave predictions, every applicable attribute goes
  to review as NO_USABLE_IMAGE and the attribute event carries only the image outcomes.
- **Source.** MODEL when any contributing image was inferred for this event, CACHE when all came
  from the cache.
- **Declared values** are echoed (joined with ``|``) clipped to :data:`streams.text.MAX_REASON_CHARS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.text import MAX_REASON_CHARS, clip
from tagger.taxonomy import Attribute, Taxonomy, UnknownValueError

USABLE = frozenset({"TAGGED", "CACHE_HIT"})
CANDIDATES = 3

Probabilities = Mapping[str, Sequence[float]]  # head key -> probability per value


@dataclass(frozen=True)
class ImageOutcome:
    """One listing image: what happened to it and, when usable, its probabilities."""

    url: str
    outcome: str
    content_hash: str | None = None
    reason: str | None = None
    probabilities: Probabilities | None = None

    def record(self) -> dict[str, Any]:
        """The ``ImageResult`` record of the Avro events."""
        return {"url": self.url, "content_hash": self.content_hash, "outcome": self.outcome, "reason": self.reason}


@dataclass
class Decision:
    """What to publish for one listing."""

    group: str | None
    attributes: list[dict[str, Any]] = field(default_factory=list)
    uncertain: list[dict[str, Any]] = field(default_factory=list)

    @property
    def review_pending(self) -> bool:
        """Whether a review request goes out with this listing."""
        return bool(self.uncertain)


def resolve_thresholds(
    taxonomy: Taxonomy, card_thresholds: Mapping[str, float], overrides: Mapping[str, float]
) -> dict[str, float]:
    """Threshold per head key: the card's, then ``attribute=x`` overrides, then ``group.attribute=x`` ones.

    Raises ValueError naming an override that matches no head, so a typo does not silently keep
    the card's value.
    """
    keys = {key: attribute.name for key, _, attribute in taxonomy.heads()}
    names = set(keys.values())
    unknown = [k for k in overrides if k not in keys and k not in names]
    if unknown:
        raise ValueError(
            f"threshold override(s) {', '.join(sorted(unknown))} match no attribute; heads: {sorted(keys)}"
        )
    resolved = {key: float(card_thresholds.get(key, 0.5)) for key in keys}
    for key, name in keys.items():
        if name in overrides:
            resolved[key] = float(overrides[name])
        if key in overrides:
            resolved[key] = float(overrides[key])
    return resolved


def decide(
    taxonomy: Taxonomy,
    category_path: Sequence[str],
    images: Sequence[ImageOutcome],
    thresholds: Mapping[str, float],
    declared: Mapping[str, Sequence[str]],
    *,
    fresh: bool,
) -> Decision:
    """Apply the module's rule to one listing; ``fresh`` is True when any usable image was inferred now."""
    group = taxonomy.group_for(category_path)
    if group is None:
        return Decision(None)
    decision = Decision(group.name)
    usable = [image.probabilities for image in images if image.outcome in USABLE and image.probabilities]
    source = "MODEL" if fresh else "CACHE"
    for attribute in group.attributes.values():
        key = f"{group.name}.{attribute.name}"
        threshold = thresholds[key]
        declared_raw = declared.get(attribute.name)
        declared_text = clip("|".join(declared_raw), MAX_REASON_CHARS) if declared_raw else None
        if not usable:
            decision.uncertain.append(_uncertain(attribute.name, [], threshold, "NO_USABLE_IMAGE", declared_text))
            continue
        probs = _combine([list(p[key]) for p in usable], multi_label=attribute.multi_label)
        ranked = sorted(zip(attribute.values, probs, strict=True), key=lambda vp: -vp[1])
        accepted = [(v, p) for v, p in ranked if p >= threshold] if attribute.multi_label else ranked[:1]
        if not accepted or accepted[0][1] < threshold:
            decision.uncertain.append(_uncertain(attribute.name, ranked, threshold, "LOW_CONFIDENCE", declared_text))
            continue
        conflict = _conflicts(attribute, declared_raw, {v for v, _ in accepted})
        for value, p in accepted:
            decision.attributes.append(
                {
                    "name": attribute.name,
                    "value": value,
                    "confidence": float(p),
                    "source": source,
                    "declared_value": declared_text,
                    "conflicts_with_declared": conflict,
                }
            )
        if conflict:
            decision.uncertain.append(_uncertain(attribute.name, ranked, threshold, "DECLARED_CONFLICT", declared_text))
    return decision


def _combine(rows: list[list[float]], *, multi_label: bool) -> list[float]:
    columns = list(zip(*rows, strict=True))
    if multi_label:
        return [max(c) for c in columns]
    return [sum(c) / len(c) for c in columns]


def _conflicts(attribute: Attribute, declared: Sequence[str] | None, accepted: set[str]) -> bool:
    if not declared:
        return False
    try:
        canonical = {attribute.canonical(v) for v in declared}
    except UnknownValueError:
        return False  # a value outside the taxonomy cannot be compared; it is still reported as declared
    return canonical != accepted


def _uncertain(
    name: str, ranked: Sequence[tuple[str, float]], threshold: float, reason: str, declared: str | None
) -> dict[str, Any]:
    return {
        "name": name,
        "candidates": [{"value": v, "confidence": float(p)} for v, p in ranked[:CANDIDATES]],
        "threshold": float(threshold),
        "reason": reason,
        "declared_value": declared,
    }
