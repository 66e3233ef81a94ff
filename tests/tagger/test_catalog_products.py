"""The real-catalog taxonomy, its converter and its benchmark, on hand-written rows (no real photos needed)."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

import tagger
from tagger.manifest import read_manifest
from tagger.taxonomy import load_taxonomy

ROOT = Path(__file__).resolve().parents[2]
TAXONOMY_FILE = Path(tagger.__file__).parent / "data" / "catalog-products.yaml"
TAXONOMY = load_taxonomy(TAXONOMY_FILE)
COLUMNS = ("id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


convert = _script("fashion_products_manifest")


def row(
    id_: str, gender: str, master: str, sub: str, article: str, colour: str, usage: str = "Casual"
) -> dict[str, str]:
    return dict(zip(COLUMNS, (id_, gender, master, sub, article, colour, "Fall", usage), strict=True))


def test_taxonomy_loads_with_three_groups_of_four_attributes() -> None:
    assert set(TAXONOMY.groups) == {"apparel", "footwear", "accessories"}
    for group in TAXONOMY.groups.values():
        assert set(group.attributes) == {"article_type", "base_colour", "gender", "usage"}
        assert not any(a.multi_label or a.not_visible for a in group.attributes.values())
    # one colour vocabulary everywhere (a YAML anchor), type vocabularies per group
    colours = {g.attributes["base_colour"].values for g in TAXONOMY.groups.values()}
    assert len(colours) == 1
    assert "other" in TAXONOMY.groups["apparel"].attributes["article_type"].values
    assert "sports_shoes" in TAXONOMY.groups["footwear"].attributes["article_type"].values


@pytest.mark.parametrize(
    ("catalog_row", "category", "group", "expected"),
    [
        (
            row("1", "Men", "Apparel", "Topwear", "Tshirts", "Navy Blue", "Sports"),
            "men/apparel/topwear",
            "apparel",
            {"article_type": "tshirts", "base_colour": "navy_blue", "gender": "men", "usage": "sports"},
        ),
        (
            row("2", "Women", "Apparel", "Topwear", "Kurtis", "Off White", "Ethnic"),
            "women/apparel/topwear",
            "apparel",
            {"article_type": "kurtas", "base_colour": "white", "gender": "women", "usage": "ethnic"},
        ),
        (
            row("3", "Boys", "Apparel", "Dress", "Dresses", "Charcoal"),
            "boys/apparel/dress",
            "apparel",
            {"article_type": "other", "base_colour": "grey", "gender": "men", "usage": "casual"},
        ),
        (
            row("4", "Girls", "Footwear", "Sandal", "Sports Sandals", "Tan", "Smart Casual"),
            "girls/footwear/sandal",
            "footwear",
            {"article_type": "sandals", "base_colour": "brown", "gender": "women", "usage": "casual"},
        ),
        (
            row("5", "Unisex", "Footwear", "Flip Flops", "Flip Flops", "Black"),
            "unisex/footwear/flip_flops",
            "footwear",
            {"article_type": "flip_flops", "base_colour": "black", "gender": "unisex", "usage": "casual"},
        ),
        (
            row("6", "Men", "Accessories", "Watches", "Watches", "Steel", "Formal"),
            "men/accessories/watches",
            "accessories",
            {"article_type": "watches", "base_colour": "silver", "gender": "men", "usage": "formal"},
        ),
        (
            row("7", "Women", "Accessories", "Bags", "Clutches", "Copper"),
            "women/accessories/bags",
            "accessories",
            {"article_type": "handbags", "base_colour": "gold", "gender": "women", "usage": "casual"},
        ),
    ],
)
def test_catalog_rows_map_to_taxonomy_values(
    catalog_row: dict[str, str], category: str, group: str, expected: dict[str, str]
) -> None:
    assert convert.category_path(catalog_row) == category
    found = TAXONOMY.group_for(category)
    assert found is not None and found.name == group
    labels = convert.labels(catalog_row)
    assert {name: convert.canonical(TAXONOMY, category, name, value[0]) for name, value in labels.items()} == expected


def test_rows_without_group_are_dropped_and_unknown_labels_counted(tmp_path: Path) -> None:
    rows = [
        row("1", "Unisex", "Personal Care", "Fragrance", "Perfume and Body Mist", "Black"),
        row("2", "Men", "Free Items", "Free Gifts", "Free Gifts", "Blue"),
        row("3", "Men", "Apparel", "Topwear", "Shirts", "Multi"),
    ]
    result = convert.convert_rows(rows, TAXONOMY, tmp_path, check_images=False)
    assert [item.id for item in result.items] == ["3"]
    assert result.no_group == {"Personal Care": 1, "Free Items": 1}
    assert result.unknown_labels == {"base_colour=Multi": 1}


def test_split_is_stratified_by_article_type_and_seeded(tmp_path: Path) -> None:
    rows = [row(str(i), "Men", "Apparel", "Topwear", "Tshirts", "Black") for i in range(20)]
    rows += [row(str(100 + i), "Women", "Footwear", "Shoes", "Heels", "Red") for i in range(20)]
    result = convert.convert_rows(rows, TAXONOMY, tmp_path, seed=3, check_images=False)
    for article in ("Tshirts", "Heels"):
        splits = [i.split for i in result.items if i.labels["article_type"] == (article,)]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (14, 3, 3)
    again = convert.convert_rows(list(reversed(rows)), TAXONOMY, tmp_path, seed=3, check_images=False)
    assert {i.id: i.split for i in again.items} == {i.id: i.split for i in result.items}
    other = convert.convert_rows(rows, TAXONOMY, tmp_path, seed=4, check_images=False)
    assert {i.id: i.split for i in other.items} != {i.id: i.split for i in result.items}


@pytest.mark.parametrize("relative", [False, True])
def test_script_writes_a_manifest_the_project_reads(tmp_path: Path, relative: bool) -> None:
    src = tmp_path / "catalog"
    (src / "images").mkdir(parents=True)
    rows = [
        row("10", "Men", "Apparel", "Topwear", "Shirts", "White", "Formal"),
        row("11", "Women", "Footwear", "Shoes", "Heels", "Red"),
        row("12", "Men", "Accessories", "Eyewear", "Sunglasses", "Black"),
        row("13", "Men", "Apparel", "Topwear", "Shirts", "Blue"),  # its photo is missing
    ]
    with (src / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    for id_ in ("10", "11", "12"):
        Image.new("RGB", (8, 8), "white").save(src / "images" / f"{id_}.jpg")
    out = tmp_path / "out"
    argv = [str(src), str(out), "--seed", "0", *(["--relative"] if relative else [])]
    assert convert.main(argv) == 0
    items = read_manifest(out / "manifest.csv")
    assert [i.id for i in items] == ["10", "11", "12"]
    assert items[0].category == "men/apparel/topwear"
    assert items[0].labels == {
        "article_type": ("Shirts",),
        "base_colour": ("White",),
        "gender": ("Men",),
        "usage": ("Formal",),
    }
    assert all(i.split in {"train", "val", "test"} for i in items)
    assert all(Path(i.image).is_absolute() != relative for i in items)
    assert all(Path(i.image_location(out)).resolve() == (src / "images" / f"{i.id}.jpg").resolve() for i in items)
    assert (out / "train.yaml").read_text().strip() == f"taxonomy: {TAXONOMY_FILE.resolve()}"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "train.yaml"]  # nothing copied


def test_benchmark_skips_without_the_catalog(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FASHION_PRODUCTS_DIR": str(tmp_path / "no-such-catalog"),
        "RUN_DIR": str(tmp_path / "run"),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "real_catalog.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stdout and str(tmp_path / "no-such-catalog") in done.stdout
    assert not (tmp_path / "run").exists()
