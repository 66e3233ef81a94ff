"""``swatch dataset from-reviews``: reviewers' decisions as a catalog manifest (on tagger's ``dataset`` group).

The command reads the decisions topic, so it lives on the streaming side and adds itself to
:data:`tagger.dataset_cli.dataset_app`, the way :mod:`streams.cli.bench` adds the ``bench`` commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streams.cli.common import _guarded, _io, _settings, _table
from tagger.dataset_cli import dataset_app

_SPLITS = ("", "train", "val", "test")


@dataset_app.command("from-reviews")
def from_reviews(
    out: Annotated[
        Path,
        typer.Option(
            dir_okay=False, help="Manifest CSV to write; images go to images/ beside it, a sidecar to OUT.json."
        ),
    ],
    split: Annotated[
        str,
        typer.Option(
            help="Split of every row: blank lets `swatch train` make a stratified split; val makes a clean "
            "calibration set for `swatch calibrate`; train or test."
        ),
    ] = "",
    taxonomy: Annotated[Path | None, typer.Option(help="Taxonomy YAML (default: the shipped one).")] = None,
    idle_timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds without a record before the topic's end counts as unreachable.")
    ] = 15.0,
) -> None:
    """Export reviewers' decisions (latest per listing, undos applied) as a versioned catalog manifest."""
    from streams.review.export import export_decisions

    if split.strip().lower() not in _SPLITS:
        _io.err.print(f"[red]--split must be blank, train, val or test, not {split!r}[/red]", highlight=False)
        raise typer.Exit(2)
    settings = _settings()
    with _io.err.status(f"reading {settings.topics.decisions} and fetching the reviewed images"):
        result = _guarded(
            lambda: export_decisions(settings, out, split=split, taxonomy=taxonomy, idle_timeout_s=idle_timeout)
        )
    counts = result.counts
    table = _table("what", "count", title=f"{result.topic} -> {out}: {result.rows} rows")
    table.add_row("records read", str(counts["records"]))
    table.add_row("decisions", str(counts["decisions"]))
    table.add_row("undone", str(counts["undone"]))
    table.add_row("superseded (older per listing)", str(counts["superseded"]))
    table.add_row("kept", str(counts["kept"]))
    for reason, count in sorted(result.skipped.items()):
        table.add_row(f"skipped: {reason}", str(count))
    for reason, count in sorted(result.labels_skipped.items()):
        table.add_row(f"label skipped: {reason}", str(count))
    table.add_row("images fetched / reused", f"{result.images['fetched']} / {result.images['reused']}")
    table.add_row("rows", str(result.rows))
    _io.out.print(table)
    _io.out.print(f"manifest: {result.manifest}; sidecar: {result.sidecar}", highlight=False)
    if not result.rows:
        _io.err.print("[yellow]no rows: nothing to train on (see skipped reasons above)[/yellow]")
        raise typer.Exit(1)
