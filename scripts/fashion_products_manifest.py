"""Turn the real product-photo catalog (``labels.csv`` + ``images/<id>.jpg``) into a Swatch manifest.

    python scripts/fashion_products_manifest.py SRC_DIR OUT_DIR [--seed 0] [--val 0.15] [--test 0.15]
        [--taxonomy tagger/data/catalog-products.yaml] [--relative]

SRC_DIR holds ``labels.csv`` (``id,gender,masterCategory,subCategory,articleType,baseColour,season,usage``)
and ``images/``. Writes only into OUT_DIR:

- ``manifest.csv``: one row per photo whose category maps to a group of the taxonomy, with
  ``category = gender/masterCategory/subCategory`` lower-cased (``men/apparel/topwear``), the
  catalog's own labels in ``article_type``, ``base_colour``, ``gender`` and ``usage`` (the taxonomy's
  merges map them at training time), and a fixed ``split``: train/val/test stratified by group and
  article type (after merges), seeded. Image paths are absolute, or relative to OUT_DIR with
  ``--relative``. Photos are never copied.
- ``train.yaml``: ``taxonomy: <the taxonomy file>``, for ``swatch train --config``.

It prints what it kept and dropped (rows without a group, missing images, labels the taxonomy does not
know: those stay in the manifest and are masked out by training and evaluation).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from tagger.errors import TaggerError
from tagger.manifest import CatalogItem, write_manifest
from tagger.taxonomy import Taxonomy, UnknownValueError, load_taxonomy

DEFAULT_TAXONOMY = Path(__file__).resolve().parent.parent / "tagger" / "data" / "catalog-products.yaml"
ATTRIBUTES = ("article_type", "base_colour", "gender", "usage")
SOURCE_COLUMNS = {"article_type": "articleType", "base_colour": "baseColour", "gender": "gender", "usage": "usage"}
REQUIRED_COLUMNS = ("id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "usage")


class ConvertError(Exception):
    """The source folder is not a readable catalog."""


def slug(text: str) -> str:
    """One category-path part: lower case, words joined by '_' ('Flip Flops' -> 'flip_flops')."""
    return "_".join(text.strip().lower().replace("/", " ").split())


def category_path(row: dict[str, str]) -> str:
    """``gender/masterCategory/subCategory``, lower-cased: ``Men, Apparel, Topwear`` -> ``men/apparel/topwear``."""
    return "/".join(slug(row[c]) for c in ("gender", "masterCategory", "subCategory"))


def labels(row: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """The manifest's label cells for a catalog row: the catalog's own values (blank cells left out)."""
    return {name: (row[column].strip(),) for name, column in SOURCE_COLUMNS.items() if row.get(column, "").strip()}


def canonical(taxonomy: Taxonomy, category: str, attribute: str, label: str) -> str | None:
    """The taxonomy's value for a label in a category's group (after merges), or None when unknown."""
    group = taxonomy.group_for(category)
    if group is None or attribute not in group.attributes:
        return None
    try:
        return group.attributes[attribute].canonical(label)
    except UnknownValueError:
        return None


@dataclass
class Conversion:
    """The converted items and what was dropped or unknown on the way."""

    items: list[CatalogItem]
    read: int = 0
    no_group: Counter[str] = field(default_factory=Counter)  # by masterCategory
    missing_images: int = 0
    unknown_labels: Counter[str] = field(default_factory=Counter)  # "attribute=label"


def convert_rows(
    rows: Iterable[dict[str, str]],
    taxonomy: Taxonomy,
    image_dir: Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    image_root: Path | None = None,
    check_images: bool = True,
) -> Conversion:
    """Catalog rows -> manifest items with a stratified split.

    ``image_dir`` is where ``<id>.jpg`` lives; paths are written absolute, or relative to
    ``image_root`` when given. Rows whose category maps to no group are dropped (counted by
    masterCategory), and so are rows whose photo is missing when ``check_images`` is set.
    """
    result = Conversion(items=[])
    for row in rows:
        result.read += 1
        category = category_path(row)
        if taxonomy.group_for(category) is None:
            result.no_group[row.get("masterCategory", "").strip() or "(blank)"] += 1
            continue
        image = (image_dir / f"{row['id'].strip()}.jpg").resolve()
        if check_images and not image.is_file():
            result.missing_images += 1
            continue
        location = os.path.relpath(image, image_root) if image_root is not None else str(image)
        item_labels = labels(row)
        for attribute, (label,) in item_labels.items():
            if canonical(taxonomy, category, attribute, label) is None:
                result.unknown_labels[f"{attribute}={label}"] += 1
        result.items.append(CatalogItem(row["id"].strip(), location, category, None, item_labels))
    result.items = split(result.items, taxonomy, seed, val_fraction, test_fraction)
    return result


def stratum(item: CatalogItem, taxonomy: Taxonomy) -> tuple[str, str]:
    """(group, article type after merges; the raw label when the taxonomy does not know it)."""
    group = taxonomy.group_for(item.category)
    raw = item.labels.get("article_type", ("",))[0]
    value = canonical(taxonomy, item.category, "article_type", raw) if raw else ""
    return (group.name if group else "", value if value is not None else raw)


def split(
    items: Sequence[CatalogItem], taxonomy: Taxonomy, seed: int, val_fraction: float, test_fraction: float
) -> list[CatalogItem]:
    """Assign train/val/test per (group, article type) stratum: round(n * fraction) each to val and test.

    Deterministic for a seed whatever the row order: strata are visited in sorted order and items
    sorted by id before the seeded shuffle.
    """
    strata: dict[tuple[str, str], list[int]] = {}
    for index, item in enumerate(items):
        strata.setdefault(stratum(item, taxonomy), []).append(index)
    rng = np.random.default_rng(seed)
    out = list(items)
    for key in sorted(strata):
        members = sorted(strata[key], key=lambda i: (items[i].id.zfill(12), items[i].id))
        order = [members[int(k)] for k in rng.permutation(len(members))]
        n_val, n_test = round(len(order) * val_fraction), round(len(order) * test_fraction)
        for rank, index in enumerate(order):
            name = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            out[index] = replace(items[index], split=name)
    return out


def read_labels(path: Path) -> list[dict[str, str]]:
    """The rows of ``labels.csv``; a missing column is an error naming it."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ConvertError(f"{path}: missing column(s) {', '.join(missing)}")
            return list(reader)
    except OSError as exc:
        raise ConvertError(f"cannot read {path}: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="folder with labels.csv and images/")
    parser.add_argument("out", type=Path, help="folder for manifest.csv and train.yaml (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    parser.add_argument("--val", type=float, default=0.15, help="validation share per stratum")
    parser.add_argument("--test", type=float, default=0.15, help="test share per stratum")
    parser.add_argument("--taxonomy", type=Path, default=DEFAULT_TAXONOMY, help="taxonomy YAML")
    parser.add_argument("--relative", action="store_true", help="write image paths relative to OUT")
    args = parser.parse_args(argv)
    if not 0 <= args.val < 1 or not 0 <= args.test < 1 or args.val + args.test >= 1:
        parser.error("--val and --test must be shares in [0, 1) that leave some training data")
    try:
        taxonomy = load_taxonomy(args.taxonomy)
        rows = read_labels(args.src / "labels.csv")
    except (TaggerError, ConvertError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    result = convert_rows(
        rows,
        taxonomy,
        args.src / "images",
        seed=args.seed,
        val_fraction=args.val,
        test_fraction=args.test,
        image_root=out if args.relative else None,
    )
    if not result.items:
        print(f"error: no usable rows in {args.src / 'labels.csv'}", file=sys.stderr)
        return 1
    write_manifest(out / "manifest.csv", result.items, ATTRIBUTES)
    config = {"taxonomy": str(args.taxonomy.resolve())}
    (out / "train.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    _summary(result, taxonomy, out)
    return 0


def _summary(result: Conversion, taxonomy: Taxonomy, out: Path) -> None:
    splits = Counter(i.split for i in result.items)
    groups = Counter(g.name if (g := taxonomy.group_for(i.category)) else "" for i in result.items)
    print(f"read {result.read} rows; wrote {len(result.items)} to {out / 'manifest.csv'}")
    print("  groups: " + ", ".join(f"{k} {v}" for k, v in groups.most_common()))
    print("  splits: " + ", ".join(f"{k} {splits[k]}" for k in ("train", "val", "test")))
    if result.no_group:
        print("  dropped, no group: " + ", ".join(f"{k} {v}" for k, v in result.no_group.most_common()))
    if result.missing_images:
        print(f"  dropped, image missing: {result.missing_images}")
    if result.unknown_labels:
        unknown = ", ".join(f"{k} ({v})" for k, v in result.unknown_labels.most_common())
        print(f"  labels the taxonomy does not know (masked in training): {unknown}")
    print(f"  training config: {out / 'train.yaml'}")


if __name__ == "__main__":
    sys.exit(main())
