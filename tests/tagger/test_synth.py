"""The synthetic catalog: deterministic, valid manifests and JPEGs, honest label corruption, long tails."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tagger.manifest import read_manifest
from tagger.synth import (
    GROUPS,
    SynthConfig,
    SynthError,
    check_taxonomy,
    corrupt_labels,
    generate_catalog,
    plan_item,
    render_item,
    sample_labels,
)
from tagger.synth_shapes import COLOURS, jitter_colour
from tagger.taxonomy import NOT_VISIBLE, Taxonomy, load_taxonomy

TAX = load_taxonomy()


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _draws(group: str, n: int, seed: int = 7) -> list[dict[str, tuple[str, ...]]]:
    return [sample_labels(np.random.default_rng([seed, i]), TAX, group) for i in range(n)]


def test_same_seed_same_bytes_other_seed_other_catalog(tmp_path: Path) -> None:
    config = SynthConfig(n=40, seed=3)
    generate_catalog(tmp_path / "a", config)
    generate_catalog(tmp_path / "b", config)
    generate_catalog(tmp_path / "c", SynthConfig(n=40, seed=4))
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 41 and a == b
    assert a["manifest.csv"] != c["manifest.csv"]
    assert sum(a[k] != c[k] for k in a if k.endswith(".jpg")) == 40


def test_items_do_not_depend_on_n_and_rates_do_not_change_pictures(tmp_path: Path) -> None:
    generate_catalog(tmp_path / "small", SynthConfig(n=8, seed=5))
    generate_catalog(tmp_path / "large", SynthConfig(n=12, seed=5, missing_rate=0.5, noise_rate=0.2))
    small, large = _files(tmp_path / "small"), _files(tmp_path / "large")
    assert all(small[k] == large[k] for k in small if k.endswith(".jpg"))
    rows = read_manifest(tmp_path / "small" / "manifest.csv")
    assert [(r.id, r.image, r.category, r.split) for r in rows] == [
        (r.id, r.image, r.category, r.split) for r in read_manifest(tmp_path / "large" / "manifest.csv")[:8]
    ]


def test_manifest_is_valid_for_the_taxonomy(tmp_path: Path) -> None:
    config = SynthConfig(n=60, seed=11, missing_rate=0.1, noise_rate=0.05, alias_rate=0.3)
    manifest = generate_catalog(tmp_path, config)
    assert manifest == tmp_path / "manifest.csv"
    header = manifest.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header == ["id", "image", "category", "split", *TAX.attribute_names()]
    items = read_manifest(manifest)
    assert [i.id for i in items] == [f"{k:06d}" for k in range(60)]
    groups: Counter[str] = Counter()
    for index, item in enumerate(items):
        group = TAX.group_for(item.category)
        assert group is not None and group.name == plan_item(config, TAX, index).group
        groups[group.name] += 1
        assert item.image == f"images/{item.id}.jpg" and (tmp_path / item.image).is_file()
        assert item.split in ("train", "val", "test")
        assert set(item.labels) <= set(group.attributes), "attributes outside the group are blank"
        for name, values in item.labels.items():
            canonical = [group.attributes[name].canonical(v) for v in values]
            assert "solid" not in canonical or len(canonical) == 1
    assert groups["apparel"] and groups["footwear"]


def test_without_missing_and_noise_the_labels_are_the_truth(tmp_path: Path) -> None:
    config = SynthConfig(n=40, seed=2, missing_rate=0.0, noise_rate=0.0, alias_rate=0.5)
    items = read_manifest(generate_catalog(tmp_path, config))
    aliases = 0
    for index, item in enumerate(items):
        plan = plan_item(config, TAX, index)
        group = TAX.groups[plan.group]
        assert set(item.labels) == set(group.attributes)
        for name, values in item.labels.items():
            assert tuple(group.attributes[name].canonical(v) for v in values) == plan.truth[name]
            aliases += any(v not in group.attributes[name].values for v in values)
    assert aliases > 5


def test_missing_noise_and_alias_rates_are_honoured() -> None:
    config = SynthConfig(n=300, seed=9, missing_rate=0.2, noise_rate=0.1, alias_rate=0.15)
    cells = missing = noisy = aliased = 0
    for index in range(config.n):
        plan = plan_item(config, TAX, index)
        group = TAX.groups[plan.group]
        for name, truth in plan.truth.items():
            cells += 1
            written = plan.labels.get(name)
            if written is None:
                missing += 1
                continue
            attribute = group.attributes[name]
            noisy += tuple(attribute.canonical(v) for v in written) != truth
            aliased += any(v not in attribute.values for v in written)
    assert cells > 1500
    assert missing / cells == pytest.approx(0.2, abs=0.03)
    assert noisy / cells == pytest.approx(0.1, abs=0.025)
    assert 0.02 < aliased / cells < 0.15  # only values with an alias get one


def test_corruption_never_writes_the_true_value_as_noise() -> None:
    truth = {"type": ("dress",), "pattern": ("striped", "dotted"), "colour": ("navy",)}
    rng = np.random.default_rng(0)
    for _ in range(200):
        written = corrupt_labels(rng, TAX, "apparel", truth, missing_rate=0.0, noise_rate=1.0, alias_rate=0.0)
        assert set(written) == set(truth)
        for name, values in written.items():
            assert len(values) == 1 and values[0] not in truth[name]
            assert values[0] in TAX.groups["apparel"].attributes[name].values


def test_images_are_jpegs_of_the_configured_size_range(tmp_path: Path) -> None:
    config = SynthConfig(n=40, seed=1, image_width=200, image_height=260)
    items = read_manifest(generate_catalog(tmp_path, config))
    sizes = set()
    for item in items:
        with Image.open(tmp_path / item.image) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            sizes.add(image.size)
            image.load()
    square = round((200 * 260) ** 0.5)
    assert sizes <= {(200, 260), (260, 200), (square, square)}
    assert (200, 260) in sizes and len(sizes) > 1


@pytest.mark.parametrize("group", GROUPS)
def test_render_item_draws_the_item_on_a_light_background(group: str) -> None:
    labels = sample_labels(np.random.default_rng(1), TAX, group)
    image = render_item(np.random.default_rng(2), group, labels, 180, 240)
    assert image.size == (180, 240) and image.mode == "RGB"
    pixels = np.asarray(image, dtype=np.float64)
    assert np.median(pixels[0]) > 150  # the top row is mostly background
    assert pixels.std() > 10  # and something is drawn on it


def test_render_rejects_an_unknown_group() -> None:
    with pytest.raises(SynthError, match="bags"):
        render_item(np.random.default_rng(0), "bags", {"colour": ("black",)}, 100, 100)


def test_workers_give_the_same_output(tmp_path: Path) -> None:
    config = SynthConfig(n=10, seed=6)
    seen: list[tuple[int, int]] = []
    generate_catalog(tmp_path / "one", config, progress=lambda done, total: seen.append((done, total)))
    generate_catalog(tmp_path / "two", config, workers=2)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert seen == [(k, 10) for k in range(1, 11)]


@pytest.mark.parametrize("group", GROUPS)
def test_every_value_appears_and_pattern_is_never_solid_with_another(group: str) -> None:
    draws = _draws(group, 3000)
    for name, attribute in TAX.groups[group].attributes.items():
        seen = Counter(v for d in draws for v in d[name])
        assert set(seen) == set(attribute.values), name
    if group == "apparel":
        assert all(len(d["pattern"]) == 1 for d in draws if "solid" in d["pattern"])
        assert sum(len(d["pattern"]) == 2 for d in draws) > 50


def test_distributions_are_long_tailed_but_every_value_shows_up_in_2000_items() -> None:
    config = SynthConfig(n=2000, seed=0, missing_rate=0.0, noise_rate=0.0, alias_rate=0.0)
    plans = [plan_item(config, TAX, i) for i in range(config.n)]
    counts: Counter[tuple[str, str, str]] = Counter(
        (p.group, name, v) for p in plans for name, values in p.truth.items() for v in values
    )
    for group in GROUPS:
        n_group = sum(p.group == group for p in plans)
        for name, attribute in TAX.groups[group].attributes.items():
            shares = {v: counts[group, name, v] / n_group for v in attribute.values}
            assert min(counts[group, name, v] for v in attribute.values) >= 5, (group, name, shares)
            if name in ("colour", "pattern", "length", "heel_style"):
                assert max(shares.values()) > 5 * min(shares.values()), (group, name, shares)
    apparel = [p for p in plans if p.group == "apparel"]
    for name, value in [("colour", "purple"), ("colour", "orange"), ("length", "maxi"), ("pattern", "checked")]:
        share = counts["apparel", name, value] / len(apparel)
        assert 0.015 < share < 0.07, (name, value, share)
    footwear = [p for p in plans if p.group == "footwear"]
    assert 0.015 < counts["footwear", "heel_style", "wedge"] / len(footwear) < 0.07
    assert 0.33 < len(footwear) / len(plans) < 0.47
    splits = Counter(p.split for p in plans)
    assert splits["train"] / 2000 == pytest.approx(0.8, abs=0.03)
    assert splits["val"] / 2000 == pytest.approx(0.1, abs=0.02)


def test_combinations_are_consistent() -> None:
    for labels in _draws("apparel", 1500):
        if labels["type"] == ("skirt",):
            assert labels["sleeve_type"] == labels["neck_type"] == (NOT_VISIBLE,)
            assert labels["length"] != ("cropped",)
        if labels["type"] == ("t_shirt",):
            assert labels["length"][0] in ("cropped", "regular")
    for labels in _draws("footwear", 1500):
        height, style = labels["heel_height"][0], labels["heel_style"][0]
        if style != NOT_VISIBLE:
            assert (height == "flat") == (style == "none")
        if labels["type"] == ("pump",):
            assert labels["gender"] == ("women",) and height != "flat"
        if labels["type"] == ("sneaker",):
            assert height in ("flat", "low")
        if labels["gender"] == ("men",):
            assert height in ("flat", "low")


def test_named_colours_stay_apart_under_jitter() -> None:
    rng = np.random.default_rng(0)
    samples = {name: np.array([jitter_colour(rng, name) for _ in range(300)], dtype=float) for name in COLOURS}
    for a, b in itertools.combinations(COLOURS, 2):
        gap = np.linalg.norm(samples[a][:, None, :] - samples[b][None, :, :], axis=2).min()
        assert gap > 20, (a, b, gap)


def test_split_option_and_config_validation(tmp_path: Path) -> None:
    items = read_manifest(generate_catalog(tmp_path, SynthConfig(n=5, split="test")))
    assert {i.split for i in items} == {"test"}
    with pytest.raises(SynthError, match="rates"):
        SynthConfig(missing_rate=1.2)
    with pytest.raises(SynthError, match="rates"):
        SynthConfig(missing_rate=0.6, noise_rate=0.3, alias_rate=0.2)
    with pytest.raises(SynthError, match="split"):
        SynthConfig(split="dev")
    with pytest.raises(SynthError, match="64 px"):
        SynthConfig(image_width=10)


def test_a_taxonomy_the_renderer_cannot_fill_is_refused() -> None:
    data = TAX.to_dict()
    data["groups"]["apparel"]["attributes"]["colour"]["values"].remove("purple")
    with pytest.raises(SynthError, match="purple"):
        check_taxonomy(Taxonomy.from_dict(data))
    data = TAX.to_dict()
    data["groups"]["apparel"]["attributes"]["fabric"] = {"values": ["cotton", "wool"]}
    with pytest.raises(SynthError, match="fabric"):
        check_taxonomy(Taxonomy.from_dict(data))
    data = TAX.to_dict()
    del data["groups"]["footwear"]
    with pytest.raises(SynthError, match="footwear"):
        check_taxonomy(Taxonomy.from_dict(data))
    check_taxonomy(Taxonomy.from_dict(data), ("apparel",))
