"""Catalog curation: from a raw manifest to one that trains cleanly, with a report of every change.

:func:`curate` reads a manifest (see :mod:`tagger.manifest`) and writes a curated one:

1. **Unusable images are removed**, each with a reason: a missing or unreadable file
   (``missing_file``, ``unreadable``), or bytes that :func:`tagger.preprocess.decode_image` refuses
   with the configured :class:`~tagger.preprocess.PreprocessConfig` (its ``reason`` code:
   ``not_an_image``, ``unsupported_format``, ``decompression_bomb``, ``degenerate_image``,
   ``decode_failed``). "Valid" is exactly what training accepts.
2. **Exact duplicates are removed** (same SHA-256 of the file's bytes): the first row is kept; where
   a duplicate's labels (after merges) or category disagree with the kept row's, the conflict is
   reported, the kept row's labels stand.
3. **Labels are cleaned** with the taxonomy of each row's group: aliases become their canonical
   value (every rewrite is counted, ``scoop -> round``); a cell with a value that is no value nor
   alias of its attribute is blanked (missing) and the value counted; so is a cell with several
   values for a single-label attribute, and a label for an attribute the row's group does not
   have. Rows whose category maps to no group and columns that are not taxonomy attributes are
   left as they are (training ignores them) and listed.
4. **Rare values are dropped**: a value with fewer than ``min_examples`` examples in its head
   (``group.attribute``) makes its cells blank: the rows stay, with that label missing. A
   multi-label cell holding a rare value is blanked whole (keeping the other values would state
   that the rare one is absent). Blanking can make another value rare; this repeats until stable.
5. **Near-duplicates stay in one split**: images whose perceptual hashes (:mod:`tagger.image_hashes`:
   :func:`imagehash.phash`, 64 bits) are within ``phash_distance`` bits of each other are grouped
   (transitively; pigeonhole bucketing on hash chunks plus union-find, so 10k images take well
   under a second). A group whose rows have splits goes whole to its majority split (ties: the
   split of the first such row) and the rows that changed are reported; a group without any split
   (and every lone row without one) gets one from :func:`tagger.data.stratified_split`'s logic,
   applied once per group. Every output row has a split, so ``swatch train`` cannot split a group.

The curated manifest keeps the input's columns in order; relative image paths are rewritten
relative to the output manifest's folder. Next to it goes a JSON summary (``<name>.summary.json``,
:meth:`~tagger.curate_report.CurateReport.to_dict`); :func:`~tagger.curate_report.write_report_html`
draws a self-contained HTML report (label distributions before and after, removed items, near-duplicate
groups with thumbnails, dropped values).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tagger.curate_report import (
    CurateReport,
    Distribution,
    DroppedValue,
    LabelConflict,
    NearDuplicateGroup,
    RemovedItem,
)
from tagger.data import stratified_split
from tagger.errors import TaggerError
from tagger.image_hashes import HASH_BITS, ImageCheck, check_image, near_duplicate_groups
from tagger.manifest import REQUIRED, CatalogItem, read_manifest, write_manifest
from tagger.preprocess import PreprocessConfig
from tagger.taxonomy import Group, Taxonomy, UnknownValueError, load_taxonomy

logger = logging.getLogger(__name__)

NO_GROUP = "(no group)"
NO_SPLIT = "(none)"
_REMOTE = ("http://", "https://")


class CurateError(TaggerError):
    """Curation cannot run as configured."""


@dataclass(frozen=True)
class CurateConfig:
    """How strictly to curate; the defaults suit a catalog of a few thousand photos."""

    min_examples: int = 5
    phash_distance: int = 4
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    taxonomy: str | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    threads: int = 4

    def __post_init__(self) -> None:
        if self.min_examples < 0:
            raise CurateError(f"min_examples must be >= 0 (0 or 1 drops nothing), not {self.min_examples}")
        if not 0 <= self.phash_distance < HASH_BITS:
            raise CurateError(f"phash_distance must be in 0..{HASH_BITS - 1} bits, not {self.phash_distance}")
        if not (
            0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1
        ):
            raise CurateError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data, for the summary."""
        values = {k: v for k, v in asdict(self).items() if k != "preprocess"}
        values["preprocess"] = self.preprocess.to_dict()
        return values


# --- labels -------------------------------------------------------------------------------------


@dataclass
class _LabelLog:
    merged: dict[str, Counter[str]] = field(default_factory=dict)
    unknown: dict[str, Counter[str]] = field(default_factory=dict)
    several: Counter[str] = field(default_factory=Counter)
    inapplicable: Counter[str] = field(default_factory=Counter)


def _canonical_cell(
    group: Group, column: str, values: tuple[str, ...], log: _LabelLog | None
) -> tuple[str, ...] | None:
    """The cell's canonical values in head order, or None (blank) when it cannot be a label."""
    attribute = group.attributes[column]
    head = f"{group.name}.{attribute.name}"
    canonical: list[str] = []
    unknown = False
    for value in values:
        try:
            target = attribute.canonical(value)
        except UnknownValueError:
            unknown = True
            if log is not None:
                log.unknown.setdefault(head, Counter())[value] += 1
            continue
        if target != value and log is not None:
            log.merged.setdefault(head, Counter())[f"{value} -> {target}"] += 1
        canonical.append(target)
    if unknown:
        return None
    cell = tuple(sorted(set(canonical), key=attribute.values.index))
    if not attribute.multi_label and len(cell) > 1:
        if log is not None:
            log.several[head] += 1
        return None
    return cell


def _clean_labels(item: CatalogItem, group: Group | None, attributes: set[str], log: _LabelLog) -> CatalogItem:
    if group is None:
        return item
    labels: dict[str, tuple[str, ...]] = {}
    for column, values in item.labels.items():
        if column not in attributes:
            labels[column] = values  # not a taxonomy attribute: passed through untouched
        elif column not in group.attributes:
            log.inapplicable[f"{group.name}.{column}"] += 1
        else:
            cell = _canonical_cell(group, column, values, log)
            if cell:
                labels[column] = cell
    return replace(item, labels=labels)


def _conflicts(kept: CatalogItem, duplicate: CatalogItem, taxonomy: Taxonomy) -> list[LabelConflict]:
    """Labels (compared after merges) and categories on which two rows with the same bytes disagree."""
    conflicts = []
    if kept.category.strip().lower() != duplicate.category.strip().lower():
        conflicts.append(LabelConflict(kept.id, duplicate.id, "category", kept.category, duplicate.category))
    group = taxonomy.group_for(kept.category)

    def canonical(column: str, values: tuple[str, ...]) -> tuple[str, ...] | None:
        if group is not None and column in group.attributes:
            return _canonical_cell(group, column, values, None)
        return values

    for column in dict.fromkeys([*kept.labels, *duplicate.labels]):
        a, b = kept.labels.get(column), duplicate.labels.get(column)
        if a and b and canonical(column, a) != canonical(column, b):
            conflicts.append(LabelConflict(kept.id, duplicate.id, column, "|".join(a), "|".join(b)))
    return conflicts


def _heads_of(item: CatalogItem, group: Group | None) -> Iterable[tuple[str, str, tuple[str, ...]]]:
    if group is None:
        return
    for column, values in item.labels.items():
        if column in group.attributes:
            yield f"{group.name}.{column}", column, values


def _drop_rare(
    items: list[CatalogItem], groups: list[Group | None], min_examples: int
) -> tuple[list[CatalogItem], list[DroppedValue]]:
    """Blank every cell holding a value with fewer than min_examples examples in its head, until none is left."""
    dropped: list[DroppedValue] = []
    while True:
        counts: dict[str, Counter[str]] = {}
        for item, group in zip(items, groups, strict=True):
            for head, _, values in _heads_of(item, group):
                counts.setdefault(head, Counter()).update(values)
        rare = {(head, value): n for head, c in counts.items() for value, n in c.items() if n < min_examples}
        if not rare:
            return items, dropped
        blanked: Counter[tuple[str, str]] = Counter()
        for i, (item, group) in enumerate(zip(items, groups, strict=True)):
            drop = set()
            for head, column, values in _heads_of(item, group):
                hits = [v for v in values if (head, v) in rare]
                if hits:
                    drop.add(column)
                    blanked.update((head, v) for v in hits)
            if drop:
                items[i] = replace(item, labels={k: v for k, v in item.labels.items() if k not in drop})
        for (head, value), examples in sorted(rare.items()):
            dropped.append(DroppedValue(head, value, examples, blanked[(head, value)]))


def distribution(items: Iterable[CatalogItem], taxonomy: Taxonomy) -> Distribution:
    """Rows per group and split, and labels per head and value (values as written)."""
    result = Distribution()
    groups: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    values: dict[str, Counter[str]] = {key: Counter() for key, _, _ in taxonomy.heads()}
    for item in items:
        group = taxonomy.group_for(item.category)
        groups[group.name if group else NO_GROUP] += 1
        splits[item.split or NO_SPLIT] += 1
        for head, _, cell in _heads_of(item, group):
            values[head].update(cell)
    result.groups = dict(groups.most_common())
    result.splits = {s: splits[s] for s in ("train", "val", "test", NO_SPLIT) if splits[s]}
    result.values = {head: dict(c.most_common()) for head, c in values.items()}
    return result


# --- splits -------------------------------------------------------------------------------------


def _group_split(splits: Sequence[str | None]) -> str | None:
    """The majority of the given splits; a tie goes to the split of the first row among the tied ones."""
    counts = Counter(s for s in splits if s is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(s for s in splits if s is not None and counts[s] == top)


def _assign_splits(
    items: list[CatalogItem], components: list[list[int]], taxonomy: Taxonomy, config: CurateConfig
) -> tuple[list[str], int]:
    """The split of every component (its rows'), and how many rows had no split before."""
    chosen: list[str | None] = [_group_split([items[i].split for i in members]) for members in components]
    open_components = [c for c, split in enumerate(chosen) if split is None]
    representatives = [replace(items[components[c][0]], split=None) for c in open_components]
    assigned = stratified_split(representatives, taxonomy, config.seed, config.val_fraction, config.test_fraction)
    for c, rep in zip(open_components, assigned, strict=True):
        chosen[c] = rep.split
    missing = sum(items[i].split is None for members in components for i in members)
    return [s or "train" for s in chosen], missing


# --- paths and files ----------------------------------------------------------------------------


def relocate(image: str, source: Path, target: Path) -> str:
    """An image reference from a manifest in ``source`` rewritten for a manifest in ``target``."""
    if image.startswith(_REMOTE) or Path(image).is_absolute() or source == target:
        return image
    try:
        return Path(os.path.relpath(source / image, target)).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return str(source / image)


def label_columns(manifest: Path) -> list[str]:
    """The manifest's label columns, in the file's order."""
    with manifest.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return [c for c in header if c not in (*REQUIRED, "split", "id")]


def summary_path(out: Path) -> Path:
    """Where the JSON summary of a curated manifest goes: next to it, ``<name>.summary.json``."""
    return out.with_name(f"{out.stem}.summary.json")


# --- the pipeline -------------------------------------------------------------------------------


def curate(
    manifest: Path,
    out: Path,
    config: CurateConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CurateReport:
    """Curate a manifest into ``out`` (plus its JSON summary) and return what was changed."""
    config = config or CurateConfig()
    manifest, out = Path(manifest), Path(out)
    taxonomy = load_taxonomy(config.taxonomy)
    items = read_manifest(manifest)
    columns = label_columns(manifest)
    source = manifest.parent.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    report = CurateReport(str(manifest), str(out), str(summary_path(out)), config.to_dict(), len(items), 0)
    report.before = distribution(items, taxonomy)
    attribute_names = set(taxonomy.attribute_names())
    report.extra_columns = [c for c in columns if c not in attribute_names]

    kept, hashes = _remove_bad_and_duplicates(items, _check_all(items, source, config, progress), taxonomy, report)
    groups = [taxonomy.group_for(item.category) for item in kept]
    report.no_group = [item.id for item, group in zip(kept, groups, strict=True) if group is None]
    log = _LabelLog()
    kept = [_clean_labels(item, group, attribute_names, log) for item, group in zip(kept, groups, strict=True)]
    report.merged = {head: dict(c.most_common()) for head, c in log.merged.items()}
    report.unknown_values = {head: dict(c.most_common()) for head, c in log.unknown.items()}
    report.several_values = dict(log.several)
    report.inapplicable = dict(log.inapplicable)
    if config.min_examples > 1:
        kept, report.dropped_values = _drop_rare(kept, groups, config.min_examples)
    kept = _keep_near_duplicates_together(kept, hashes, source, taxonomy, config=config, report=report)
    target = out.parent.resolve()
    kept = [replace(item, image=relocate(item.image, source, target)) for item in kept]

    write_manifest(out, kept, columns)
    report.items_out = len(kept)
    report.after = distribution(kept, taxonomy)
    summary_path(out).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    logger.info("curated %d rows into %d: %s", report.items_in, report.items_out, report.removed_by_reason())
    return report


def _check_all(
    items: Sequence[CatalogItem],
    root: Path,
    config: CurateConfig,
    progress: Callable[[int, int], None] | None,
) -> list[ImageCheck | None]:
    """Check every local image in parallel threads (decoding releases the GIL); None for URLs."""

    def one(item: CatalogItem) -> ImageCheck | None:
        if item.image.startswith(_REMOTE):
            return None  # curation reads local files only; training refuses URLs anyway
        return check_image(item.image_location(root), config.preprocess)

    results: list[ImageCheck | None] = []
    with ThreadPoolExecutor(max(1, config.threads)) as pool:
        for result in pool.map(one, items):
            results.append(result)
            if progress is not None:
                progress(len(results), len(items))
    return results


def _remove_bad_and_duplicates(
    items: Sequence[CatalogItem], checks: Sequence[ImageCheck | None], taxonomy: Taxonomy, report: CurateReport
) -> tuple[list[CatalogItem], list[int | None]]:
    """The rows to keep and their perceptual hashes (None for URLs); removals go into the report."""
    kept: list[CatalogItem] = []
    hashes: list[int | None] = []
    first_by_digest: dict[str, CatalogItem] = {}
    for item, check in zip(items, checks, strict=True):
        if check is None:
            report.remote_images.append(item.id)
        elif check.reason is not None or check.sha256 is None:
            report.removed.append(RemovedItem(item.id, item.image, check.reason or "unreadable", check.detail))
            continue
        elif check.sha256 in first_by_digest:
            first = first_by_digest[check.sha256]
            detail = f"same bytes as {first.id} ({first.image})"
            report.removed.append(RemovedItem(item.id, item.image, "exact_duplicate", detail, first.id))
            report.label_conflicts.extend(_conflicts(first, item, taxonomy))
            continue
        else:
            first_by_digest[check.sha256] = item
        kept.append(item)
        hashes.append(check.phash if check is not None else None)
    return kept, hashes


def _keep_near_duplicates_together(
    items: list[CatalogItem],
    hashes: Sequence[int | None],
    source: Path,
    taxonomy: Taxonomy,
    *,
    config: CurateConfig,
    report: CurateReport,
) -> list[CatalogItem]:
    """Give every row a split such that each near-duplicate group is in one; groups go into the report."""
    hashed = [i for i, h in enumerate(hashes) if h is not None]
    linked = near_duplicate_groups([hashes[i] or 0 for i in hashed], config.phash_distance)
    near = [[hashed[j] for j in group] for group in linked]
    in_group = {i for members in near for i in members}
    components = near + [[i] for i in range(len(items)) if i not in in_group]
    splits, report.splits_assigned = _assign_splits(items, components, taxonomy, config)
    result = list(items)
    for members, split in zip(components, splits, strict=True):
        moved = [items[i].id for i in members if items[i].split not in (None, split)]
        report.moved_between_splits += len(moved)
        if len(members) > 1:
            anchor = hashes[members[0]] or 0
            report.near_duplicates.append(
                NearDuplicateGroup(
                    ids=[items[i].id for i in members],
                    images=[items[i].image for i in members],
                    locations=[items[i].image_location(source) for i in members],
                    distances=[((hashes[i] or 0) ^ anchor).bit_count() for i in members],
                    splits_before=[items[i].split for i in members],
                    split=split,
                    moved=moved,
                )
            )
        for i in members:
            result[i] = replace(items[i], split=split)
    return result
