"""One row per chaos scenario, a table of them at the end of the session, and the same rows as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.chaos.verifier import Verdict

COLUMNS = (
    ("scenario", "scenario"),
    ("result", "result"),
    ("input", "input"),
    ("outputs", "outputs"),
    ("duplicates", "dups"),
    ("dead_letters", "dead letters"),
    ("missing", "missing"),
    ("stale", "stale"),
    ("max_latency_s", "max latency s"),
    ("seconds", "wall s"),
    ("notes", "notes"),
)


@dataclass
class ScenarioRow:
    """What one scenario did and found; ``notes`` carries its own measurements and every failed check."""

    scenario: str
    scale: str
    result: str = "not run"
    input: int = 0
    input_records: int = 0
    outputs: int = 0
    duplicates: int = 0
    mismatched_duplicates: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    stale: int = 0
    max_latency_s: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)

    def check(self, ok: bool, name: str, detail: str = "") -> bool:
        """Record one check; a failed one is kept (with its evidence) and fails the test in :meth:`assert_all`."""
        if not ok:
            self.failed_checks.append(f"{name}: {detail}" if detail else name)
        return ok

    def assert_all(self) -> None:
        """Fail with every failed check at once, so one broken promise does not hide the others."""
        if self.failed_checks:
            raise AssertionError(f"{self.scenario}: " + " | ".join(self.failed_checks))

    def add_verdict(self, verdict: Verdict) -> None:
        """Copy the verifier's counts into the row."""
        self.input = verdict.inputs
        self.input_records = verdict.input_records
        self.outputs = verdict.outputs
        self.duplicates = verdict.duplicates
        self.mismatched_duplicates = len(verdict.mismatched)
        self.dead_letters = dict(verdict.dead_letters)
        self.missing = len(verdict.missing)
        self.stale = len(verdict.stale)
        self.max_latency_s = round(verdict.max_latency_s, 2)

    def cell(self, name: str) -> str:
        """The text of one table cell."""
        if name == "dead_letters":
            return ",".join(f"{reason}={n}" for reason, n in sorted(self.dead_letters.items())) or "0"
        if name == "notes":
            return "; ".join([*self.notes, *(f"FAILED {c}" for c in self.failed_checks)])
        if name == "input":
            return f"{self.input} ({self.input_records} rec)"
        if name == "duplicates":
            return f"{self.duplicates} ({self.mismatched_duplicates} differ)"
        return str(getattr(self, name))


def render_table(rows: Sequence[ScenarioRow]) -> list[str]:
    """The rows as a plain-text table, one line per scenario (notes last, unpadded)."""
    head = [title for _, title in COLUMNS]
    body = [[row.cell(name) for name, _ in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(COLUMNS) - 1)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + "  " + cells[-1]

    return [line(head), line(["-" * w for w in widths] + ["-" * 5]), *(line(r) for r in body)]


def write_json(rows: Sequence[ScenarioRow], path: Path) -> None:
    """Write the rows as a JSON list of objects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
