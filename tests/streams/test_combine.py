"""The decision rule: combining images, thresholds, review reasons and declared conflicts."""

from __future__ import annotations

import pytest

from streams.combine import ImageOutcome, decide, resolve_thresholds
from tagger.taxonomy import Taxonomy, load_taxonomy

DRESS = ["women", "clothing", "dresses"]


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


def _probs(taxonomy: Taxonomy, **tops: tuple[str, float]) -> dict[str, list[float]]:
    """Probabilities for every apparel head: the named value gets p, the rest share 1 - p."""
    out = {}
    for key, group, attribute in taxonomy.heads():
        name = attribute.name
        value, p = tops.get(name, (attribute.values[0], 0.95))
        if group.name != "apparel":
            value, p = attribute.values[0], 0.9
        rest = (1 - p) / (attribute.size - 1)
        out[key] = [p if v == value else (0.0 if attribute.multi_label else rest) for v in attribute.values]
    return out


def _thresholds(taxonomy: Taxonomy, **overrides: float) -> dict[str, float]:
    return resolve_thresholds(taxonomy, {}, overrides)


def test_single_label_heads_average_images_and_multi_label_heads_take_the_max(taxonomy: Taxonomy) -> None:
    a = ImageOutcome("u1", "TAGGED", "h1", None, _probs(taxonomy, colour=("red", 0.9), pattern=("striped", 0.8)))
    b = ImageOutcome("u2", "CACHE_HIT", "h2", None, _probs(taxonomy, colour=("red", 0.5), pattern=("floral", 0.7)))
    decision = decide(taxonomy, DRESS, [a, b], _thresholds(taxonomy, colour=0.6), {}, fresh=True)
    colour = next(x for x in decision.attributes if x["name"] == "colour")
    assert colour["value"] == "red" and colour["confidence"] == pytest.approx(0.7)
    assert colour["source"] == "MODEL"
    patterns = {x["value"] for x in decision.attributes if x["name"] == "pattern"}
    assert patterns == {"striped", "floral"}, "a pattern seen on any image counts"
    assert {x["name"] for x in decision.attributes} <= set(taxonomy.groups["apparel"].attributes)


def test_below_threshold_goes_to_review_with_ranked_candidates(taxonomy: Taxonomy) -> None:
    image = ImageOutcome("u", "TAGGED", "h", None, _probs(taxonomy, length=("maxi", 0.55)))
    decision = decide(taxonomy, DRESS, [image], _thresholds(taxonomy, length=0.8), {}, fresh=False)
    assert "length" not in {x["name"] for x in decision.attributes}
    (uncertain,) = decision.uncertain
    assert uncertain["name"] == "length" and uncertain["reason"] == "LOW_CONFIDENCE" and uncertain["threshold"] == 0.8
    assert uncertain["candidates"][0] == {"value": "maxi", "confidence": pytest.approx(0.55)}
    assert len(uncertain["candidates"]) == 3 and decision.review_pending
    assert {x["source"] for x in decision.attributes} == {"CACHE"}


def test_declared_values_are_merged_before_comparing(taxonomy: Taxonomy) -> None:
    image = ImageOutcome("u", "TAGGED", "h", None, _probs(taxonomy, neck_type=("round", 0.97), colour=("red", 0.97)))
    declared = {"neck_type": ["Scoop"], "colour": ["blue"], "length": ["not-a-length"]}
    decision = decide(taxonomy, DRESS, [image], _thresholds(taxonomy), declared, fresh=True)
    by_name = {x["name"]: x for x in decision.attributes}
    assert not by_name["neck_type"]["conflicts_with_declared"], "scoop is merged into round"
    assert by_name["colour"]["conflicts_with_declared"] and by_name["colour"]["declared_value"] == "blue"
    assert not by_name["length"]["conflicts_with_declared"], "an unknown declared value cannot be compared"
    assert [u["name"] for u in decision.uncertain if u["reason"] == "DECLARED_CONFLICT"] == ["colour"]


def test_no_usable_image_sends_every_attribute_to_review(taxonomy: Taxonomy) -> None:
    images = [ImageOutcome("u", "FETCH_FAILED", None, "HTTP 404"), ImageOutcome("v", "DECODE_FAILED", "h", "bad")]
    decision = decide(taxonomy, DRESS, images, _thresholds(taxonomy), {}, fresh=False)
    assert decision.attributes == []
    assert {u["reason"] for u in decision.uncertain} == {"NO_USABLE_IMAGE"}
    assert len(decision.uncertain) == len(taxonomy.groups["apparel"].attributes)


def test_unknown_category_has_no_group_and_no_review(taxonomy: Taxonomy) -> None:
    image = ImageOutcome("u", "TAGGED", "h", None, _probs(taxonomy))
    decision = decide(taxonomy, ["garden", "tools"], [image], _thresholds(taxonomy), {}, fresh=True)
    assert (decision.group, decision.attributes, decision.review_pending) == (None, [], False)


def test_threshold_overrides_by_attribute_then_by_head(taxonomy: Taxonomy) -> None:
    resolved = resolve_thresholds(taxonomy, {"apparel.colour": 0.7}, {"colour": 0.8, "footwear.colour": 0.9})
    assert resolved["apparel.colour"] == 0.8 and resolved["footwear.colour"] == 0.9
    assert resolved["apparel.length"] == 0.5, "the card's default where nothing is set"
    with pytest.raises(ValueError, match="colur"):
        resolve_thresholds(taxonomy, {}, {"colur": 0.8})
