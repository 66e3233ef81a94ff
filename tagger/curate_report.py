"""What :func:`tagger.curate.curate` changed: the report (also its JSON summary) and its HTML page."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tagger.html_report import bar_chart, esc, page, table, thumbnail_figure


@dataclass(frozen=True)
class RemovedItem:
    """A row left out of the curated manifest, and why."""

    id: str
    image: str
    reason: str
    detail: str
    duplicate_of: str | None = None


@dataclass(frozen=True)
class LabelConflict:
    """An exact duplicate whose label disagrees with the kept row's (the kept row's label stands)."""

    kept_id: str
    duplicate_id: str
    attribute: str
    kept: str
    duplicate: str


@dataclass(frozen=True)
class NearDuplicateGroup:
    """Rows whose images look alike; they all end up in ``split``."""

    ids: list[str]
    images: list[str]
    locations: list[str]
    distances: list[int]
    splits_before: list[str | None]
    split: str
    moved: list[str]


@dataclass(frozen=True)
class DroppedValue:
    """A value too rare to learn: its cells were blanked."""

    head: str
    value: str
    examples: int
    cells_blanked: int


@dataclass
class Distribution:
    """Counts of rows per group and split, and of labels per head and value."""

    groups: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    values: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class CurateReport:
    """Everything curation changed; also written as the JSON summary."""

    manifest_in: str
    manifest_out: str
    summary_path: str
    config: dict[str, Any]
    items_in: int
    items_out: int
    removed: list[RemovedItem] = field(default_factory=list)
    label_conflicts: list[LabelConflict] = field(default_factory=list)
    near_duplicates: list[NearDuplicateGroup] = field(default_factory=list)
    moved_between_splits: int = 0
    splits_assigned: int = 0
    merged: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown_values: dict[str, dict[str, int]] = field(default_factory=dict)
    several_values: dict[str, int] = field(default_factory=dict)
    inapplicable: dict[str, int] = field(default_factory=dict)
    dropped_values: list[DroppedValue] = field(default_factory=list)
    no_group: list[str] = field(default_factory=list)
    remote_images: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    before: Distribution = field(default_factory=Distribution)
    after: Distribution = field(default_factory=Distribution)

    def removed_by_reason(self) -> dict[str, int]:
        """How many rows were removed for each reason."""
        return dict(Counter(r.reason for r in self.removed))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON, with a ``counts`` section on top."""
        data = asdict(self)
        data["counts"] = {
            "items_in": self.items_in,
            "items_out": self.items_out,
            "removed": self.removed_by_reason(),
            "label_conflicts": len(self.label_conflicts),
            "near_duplicate_groups": len(self.near_duplicates),
            "near_duplicate_items": sum(len(g.ids) for g in self.near_duplicates),
            "moved_between_splits": self.moved_between_splits,
            "splits_assigned": self.splits_assigned,
            "values_merged": sum(sum(c.values()) for c in self.merged.values()),
            "unknown_values": sum(sum(c.values()) for c in self.unknown_values.values()),
            "several_values": sum(self.several_values.values()),
            "inapplicable": sum(self.inapplicable.values()),
            "dropped_values": len(self.dropped_values),
            "cells_blanked_rare": sum(d.cells_blanked for d in self.dropped_values),
            "no_group": len(self.no_group),
            "remote_images": len(self.remote_images),
        }
        return data


_MAX_ROWS = 500
_MAX_GROUP_PICTURES = 30


def _capped(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    note = f'<p class="note">first {_MAX_ROWS} of {len(rows)} shown; all are in the JSON summary</p>'
    return table(headers, rows[:_MAX_ROWS]) + (note if len(rows) > _MAX_ROWS else "")


def _near_duplicate_section(report: CurateReport) -> list[str]:
    parts = [
        f"<h2>Near-duplicate groups (phash distance &le; {esc(report.config['phash_distance'])})</h2>",
        f'<p class="note">{len(report.near_duplicates)} groups; {report.moved_between_splits} rows moved '
        f"to their group's split; {report.splits_assigned} rows without a split were given one. "
        "d = bits from the first picture's hash.</p>",
    ]
    for group in report.near_duplicates[:_MAX_GROUP_PICTURES]:
        members = list(zip(group.ids, group.locations, group.splits_before, group.distances, strict=True))[:4]
        figures = "".join(
            thumbnail_figure(loc, f"{i} ({before or 'no split'}, d={d})") for i, loc, before, d in members
        )
        moved = f"; moved: {', '.join(group.moved)}" if group.moved else ""
        parts.append(f"<h3>{esc(', '.join(group.ids[:8]))} &rarr; {esc(group.split)}{esc(moved)}</h3>{figures}")
    rest = [(", ".join(g.ids), g.split, ", ".join(g.moved)) for g in report.near_duplicates[_MAX_GROUP_PICTURES:]]
    if rest:
        parts.append(_capped(rest, ["ids", "split", "moved"]))
    return parts


def _label_section(report: CurateReport) -> list[str]:
    merged = [(h, change, n) for h, c in report.merged.items() for change, n in c.items()]
    unknown = [(h, value, n) for h, c in report.unknown_values.items() for value, n in c.items()]
    parts = [
        "<h2>Label fixes</h2>",
        "<h3>Merged values</h3>",
        _capped(merged, ["head", "value", "cells"]),
        "<h3>Unknown values (cells left blank)</h3>",
        _capped(unknown, ["head", "value", "cells"]),
    ]
    if report.several_values:
        parts.append("<h3>Several values for a single-label attribute (blanked)</h3>")
        parts.append(table(["head", "cells"], list(report.several_values.items())))
    if report.inapplicable:
        parts.append("<h3>Labels for an attribute the row's group does not have (blanked)</h3>")
        parts.append(table(["head", "cells"], list(report.inapplicable.items())))
    dropped = [(d.head, d.value, d.examples, d.cells_blanked) for d in report.dropped_values]
    parts.append(f"<h2>Dropped rare values (fewer than {esc(report.config['min_examples'])} examples)</h2>")
    parts.append(_capped(dropped, ["head", "value", "examples", "cells blanked"]))
    untouched = [
        ("rows whose category maps to no group", len(report.no_group), ", ".join(report.no_group[:20])),
        ("rows with a URL (not checked)", len(report.remote_images), ", ".join(report.remote_images[:20])),
        ("columns that are not taxonomy attributes", len(report.extra_columns), ", ".join(report.extra_columns)),
    ]
    if any(n for _, n, _ in untouched):
        parts += ["<h2>Left as they are</h2>", table(["what", "count", "examples"], untouched)]
    return parts


def _distribution_section(report: CurateReport) -> list[str]:
    before, after = report.before, report.after
    parts = [
        "<h2>Distributions before and after</h2>",
        bar_chart("rows per group", {"before": before.groups, "after": after.groups}, 5),
        bar_chart("rows per split", {"before": before.splits, "after": after.splits}, 5),
    ]
    current = ""
    for head in dict.fromkeys([*before.values, *after.values]):
        series = {"before": before.values.get(head, {}), "after": after.values.get(head, {})}
        if not any(series.values()):
            continue
        group = head.split(".", 1)[0]
        if group != current:
            parts.append(f"<h3>{esc(group)}</h3>")
            current = group
        parts.append(bar_chart(head, series))
    return parts


def write_report_html(report: CurateReport, path: Path) -> None:
    """A self-contained HTML report: counts, distributions before/after, removals, near-duplicates, drops."""
    counts = report.to_dict()["counts"]
    parts = [
        f'<p class="note">{esc(report.manifest_in)} &rarr; {esc(report.manifest_out)}; '
        f"settings: {esc(json.dumps(report.config))}</p>",
        "<h2>Summary</h2>",
        table(["what", "count"], [(k, json.dumps(v) if isinstance(v, dict) else v) for k, v in counts.items()]),
        "<h2>Removed items</h2>",
        _capped([(r.id, r.image, r.reason, r.detail) for r in report.removed], ["id", "image", "reason", "detail"]),
    ]
    if report.label_conflicts:
        conflicts = [(c.kept_id, c.duplicate_id, c.attribute, c.kept, c.duplicate) for c in report.label_conflicts]
        parts += [
            "<h2>Exact duplicates with conflicting labels</h2>",
            '<p class="note">The kept row\'s label stands; check it.</p>',
            _capped(conflicts, ["kept id", "duplicate id", "attribute", "kept label", "duplicate label"]),
        ]
    parts += _near_duplicate_section(report) + _label_section(report) + _distribution_section(report)
    Path(path).write_text(page("Swatch dataset curation", "\n".join(parts)), encoding="utf-8")
