"""Markdown tables of `swatch evaluate --json` reports: macro and weighted F1 and support per head.

    python scripts/eval_table.py [NAME=]REPORT.json [[NAME=]REPORT.json ...] [--reference 0.73]

One table per report, then, per attribute that several groups share (``apparel.article_type``,
``footwear.article_type``, ...), a row over all groups: every (group, value) pair counts as its own
class, which is exact because the category path picks the group before the head predicts, so a
prediction never crosses groups. Its weighted F1 is the support-weighted mean of the groups'
weighted F1; its macro-F1 the mean over all (group, value) pairs. ``--reference`` adds a line comparing
the mean of the article-type and base-colour weighted F1 with a reference number.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def pooled(heads: dict[str, dict[str, Any]], attribute: str) -> dict[str, float] | None:
    """Macro and weighted F1 and support of one attribute over every group that has it."""
    f1s: list[float] = []
    weighted = 0.0
    support = 0
    for key, scores in heads.items():
        if key.split(".", 1)[1] != attribute:
            continue
        f1s.extend(float(v["f1"]) for v in scores["per_value"].values())
        weighted += float(scores["weighted_f1"]) * int(scores["support"])
        support += int(scores["support"])
    if not f1s or not support:
        return None
    return {"macro_f1": sum(f1s) / len(f1s), "weighted_f1": weighted / support, "support": support}


def table(name: str, report: dict[str, Any], reference: float | None = None) -> str:
    """The markdown for one report."""
    heads: dict[str, dict[str, Any]] = report["attributes"]
    split, items = report.get("split", "?"), report.get("items", "?")
    lines = [
        f"**{name}**: `{report.get('model_id', '?')}` on the {split} split ({items} photos)",
        "",
        "| head | macro-F1 | weighted F1 | support |",
        "|---|---|---|---|",
    ]
    for key, scores in heads.items():
        lines.append(f"| `{key}` | {scores['macro_f1']:.3f} | {scores['weighted_f1']:.3f} | {scores['support']} |")
    attributes = list(dict.fromkeys(key.split(".", 1)[1] for key in heads))
    summary: dict[str, dict[str, float]] = {}
    for attribute in attributes:
        if sum(key.split(".", 1)[1] == attribute for key in heads) < 2:
            continue
        row = pooled(heads, attribute)
        if row is not None:
            summary[attribute] = row
            cells = f"{row['macro_f1']:.3f} | {row['weighted_f1']:.3f} | {int(row['support'])}"
            lines.append(f"| {attribute}, all groups | {cells} |")
    if reference is not None and {"article_type", "base_colour"} <= set(summary):
        mean = (summary["article_type"]["weighted_f1"] + summary["base_colour"]["weighted_f1"]) / 2
        verdict = "above" if mean > reference else "below"
        lines += [
            "",
            f"Mean weighted F1 of article type and base colour: {mean:.3f} ({verdict} the reference {reference:.2f}).",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="[NAME=]REPORT.json from swatch evaluate --json")
    parser.add_argument("--reference", type=float, help="a weighted F1 to compare with")
    args = parser.parse_args(argv)
    parts = []
    for spec in args.reports:
        name, _, path = spec.rpartition("=")
        try:
            report = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"error: cannot read {path}: {exc}", file=sys.stderr)
            return 1
        parts.append(table(name or Path(path).stem, report, args.reference))
    print("\n\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
