"""Side-by-side markdown table of two `swatch evaluate --json` reports of the same data.

    python scripts/compare_evals.py A_NAME=A.json B_NAME=B.json [--json OUT.json]

Per head: macro-F1 of each, its change, and the rarest value (fewest examples in the evaluated data,
which is drawn from the same distribution as the training data) with its F1 in each. Then the mean
macro-F1 and the mean rarest-value F1 over all heads. Made for benchmarks/oversampling.sh (with and
without oversampling), but any two reports over the same heads compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def rarest(per_value: dict[str, dict[str, Any]]) -> str:
    """The value with the smallest support (ties: the first), ignoring values never seen."""
    seen = {value: scores for value, scores in per_value.items() if int(scores["support"]) > 0}
    return min(seen, key=lambda value: int(seen[value]["support"]))


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per-head rows and means; heads missing from either report are left out."""
    rows = []
    for key, head_a in a["attributes"].items():
        head_b = b["attributes"].get(key)
        if head_b is None:
            continue
        value = rarest(head_a["per_value"])
        rows.append(
            {
                "head": key,
                "macro_f1": [float(head_a["macro_f1"]), float(head_b["macro_f1"])],
                "rarest_value": value,
                "rarest_support": int(head_a["per_value"][value]["support"]),
                "rarest_f1": [float(head_a["per_value"][value]["f1"]), float(head_b["per_value"][value]["f1"])],
            }
        )
    if not rows:
        raise ValueError("the reports share no head")

    def mean(field: str, i: int) -> float:
        return sum(row[field][i] for row in rows) / len(rows)

    means = {field: [mean(field, 0), mean(field, 1)] for field in ("macro_f1", "rarest_f1")}
    return {"models": [a.get("model_id"), b.get("model_id")], "items": a.get("items"), "heads": rows, "mean": means}


def markdown(names: Sequence[str], result: dict[str, Any]) -> str:
    """The comparison as a markdown table."""
    first, second = names
    lines = [
        f"| head | macro-F1 {first} | macro-F1 {second} | change | rarest value (support) "
        f"| its F1 {first} | its F1 {second} |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["heads"]:
        (ma, mb), (ra, rb) = row["macro_f1"], row["rarest_f1"]
        lines.append(
            f"| `{row['head']}` | {ma:.3f} | {mb:.3f} | {ma - mb:+.3f} "
            f"| {row['rarest_value']} ({row['rarest_support']}) | {ra:.3f} | {rb:.3f} |"
        )
    (ma, mb), (ra, rb) = result["mean"]["macro_f1"], result["mean"]["rarest_f1"]
    lines.append(f"| **mean** | {ma:.3f} | {mb:.3f} | {ma - mb:+.3f} | | {ra:.3f} | {rb:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs=2, help="NAME=REPORT.json from swatch evaluate --json")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    args = parser.parse_args(argv)
    names, reports = [], []
    for spec in args.reports:
        name, _, path = spec.rpartition("=")
        try:
            reports.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            print(f"error: cannot read {path}: {exc}", file=sys.stderr)
            return 1
        names.append(name or Path(path).stem)
    try:
        result = compare(reports[0], reports[1])
    except (KeyError, ValueError) as exc:
        print(f"error: cannot compare: {exc}", file=sys.stderr)
        return 1
    print(markdown(names, result))
    if args.json:
        args.json.write_text(json.dumps({"names": names, **result}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
