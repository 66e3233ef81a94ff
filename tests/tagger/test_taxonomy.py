"""Taxonomy loading, group mapping, merges, and errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tagger.taxonomy import NOT_VISIBLE, TaxonomyError, UnknownValueError, load_taxonomy

DEFAULT = load_taxonomy()


def test_default_covers_apparel_and_footwear() -> None:
    apparel, footwear = DEFAULT.groups["apparel"], DEFAULT.groups["footwear"]
    assert set(apparel.attributes) == {"type", "colour", "pattern", "sleeve_type", "neck_type", "length"}
    assert set(footwear.attributes) == {"type", "gender", "colour", "heel_height", "heel_style"}
    assert apparel.attributes["pattern"].multi_label
    assert NOT_VISIBLE in apparel.attributes["neck_type"].values
    assert NOT_VISIBLE not in apparel.attributes["colour"].values


@pytest.mark.parametrize(
    ("path", "group"),
    [
        ("women/clothing/dresses", "apparel"),
        ("Women / Clothing", "apparel"),
        (["men", "shoes", "boots"], "footwear"),
        ("footwear", "footwear"),
        ("toys/lego", None),
        ("", None),
    ],
)
def test_category_paths_map_to_groups(path: str, group: str | None) -> None:
    found = DEFAULT.group_for(path)
    assert (found.name if found else None) == group


def test_longest_prefix_wins(tmp_path: Path) -> None:
    data = DEFAULT.to_dict()
    data["groups"]["footwear"]["categories"].append("women/clothing/socks")
    taxonomy = load_taxonomy(_write(tmp_path, data))
    assert taxonomy.group_for("women/clothing/socks/ankle").name == "footwear"  # type: ignore[union-attr]
    assert taxonomy.group_for("women/clothing/dresses").name == "apparel"  # type: ignore[union-attr]


def test_merges_and_normalisation() -> None:
    neck = DEFAULT.groups["apparel"].attributes["neck_type"]
    assert neck.canonical("Scoop") == "round"
    assert neck.canonical("V-Neck") == "v_neck"
    assert neck.canonical("v neck") == "v_neck"
    assert neck.index("crew") == neck.values.index("round")
    with pytest.raises(UnknownValueError, match="turtleneck"):
        neck.canonical("turtleneck")


def test_heads_are_keyed_by_group_and_attribute() -> None:
    keys = [key for key, _, _ in DEFAULT.heads()]
    assert "apparel.colour" in keys and "footwear.colour" in keys
    assert len(keys) == len(set(keys)) == 11


def test_round_trip_and_fingerprint(tmp_path: Path) -> None:
    again = load_taxonomy(_write(tmp_path, DEFAULT.to_dict()))
    assert again == DEFAULT
    assert again.fingerprint() == DEFAULT.fingerprint()
    changed = DEFAULT.to_dict()
    changed["groups"]["apparel"]["attributes"]["colour"]["values"].append("gold")
    assert load_taxonomy(_write(tmp_path, changed)).fingerprint() != DEFAULT.fingerprint()


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "taxonomy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("groups"), "'groups' must be a non-empty mapping"),
        (lambda d: d.update(extra=1), "unknown key"),
        (lambda d: d["groups"]["apparel"].pop("categories"), r"groups\.apparel\.categories"),
        (lambda d: d["groups"]["apparel"]["attributes"]["colour"].update(values=["red"]), "at least two"),
        (lambda d: d["groups"]["apparel"]["attributes"]["colour"].update(values=["red", "Red"]), "duplicate"),
        (
            lambda d: d["groups"]["apparel"]["attributes"]["colour"].update(merges={"wine": "bordeaux"}),
            r"groups\.apparel\.attributes\.colour\.merges\.wine: target 'bordeaux'",
        ),
        (lambda d: d["groups"]["apparel"]["attributes"]["pattern"].update(multi_label="yes"), "true or false"),
        (lambda d: d["groups"]["apparel"]["attributes"]["colour"].update(colour_space="rgb"), "unknown key"),
        (lambda d: d["groups"]["footwear"]["categories"].append("apparel"), "maps to both"),
        (
            lambda d: d["groups"]["apparel"]["attributes"]["sleeve_type"].update(values=["long", "not_visible"]),
            "not_visible: true",
        ),
    ],
)
def test_malformed_taxonomies_say_where(tmp_path: Path, mutate: object, message: str) -> None:
    data = DEFAULT.to_dict()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(TaxonomyError, match=message):
        load_taxonomy(_write(tmp_path, data))


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups: [unclosed")
    with pytest.raises(TaxonomyError, match="not valid YAML"):
        load_taxonomy(bad)
    with pytest.raises(TaxonomyError, match="cannot read"):
        load_taxonomy(tmp_path / "missing.yaml")
