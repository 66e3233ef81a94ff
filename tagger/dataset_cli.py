"""`swatch dataset curate|audit`: dataset hygiene before training (registered by :func:`tagger.cli.register`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tagger.console import ProgressReporter, fail, progress_bars
from tagger.errors import TaggerError

dataset_app = typer.Typer(
    help="Dataset hygiene: curate a manifest (duplicates, bad images, merges, rare values, leaks); audit labels.",
    no_args_is_help=True,
)


@dataset_app.command("curate")
def curate(  # noqa: PLR0917 - typer commands take one argument per option
    manifest: Annotated[Path, typer.Option("--in", help="Manifest CSV to curate.")],
    out: Annotated[Path, typer.Option(help="Curated manifest CSV to write; its JSON summary goes next to it.")],
    report: Annotated[Path | None, typer.Option(help="Also write a self-contained HTML report here.")] = None,
    min_examples: Annotated[
        int, typer.Option(min=0, help="Blank the labels of values with fewer examples per attribute.")
    ] = 5,
    phash_distance: Annotated[
        int, typer.Option(min=0, max=63, help="Near-duplicates: perceptual-hash distance in bits, at most.")
    ] = 4,
    seed: Annotated[int, typer.Option(help="Seed for the splits given to rows without one.")] = 0,
    taxonomy: Annotated[Path | None, typer.Option(help="Taxonomy YAML (default: the shipped one).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Threads reading and hashing images.")] = 4,
) -> None:
    """Remove duplicate and unusable images, merge aliases, blank rare values, keep near-duplicates in one split."""
    from tagger.curate import CurateConfig  # noqa: PLC0415 - matplotlib, imagehash: lazy
    from tagger.curate import curate as run_curate  # noqa: PLC0415
    from tagger.curate_report import write_report_html  # noqa: PLC0415

    try:
        config = CurateConfig(
            min_examples=min_examples,
            phash_distance=phash_distance,
            seed=seed,
            taxonomy=str(taxonomy) if taxonomy else None,
            threads=threads,
        )
        with progress_bars() as progress:
            task = progress.add_task("checking images", total=None, info="")
            result = run_curate(
                manifest, out, config, lambda done, total: progress.update(task, completed=done, total=total)
            )
        if report is not None:
            write_report_html(result, report)
    except TaggerError as exc:
        raise fail(exc) from exc
    table = Table("what", "count", title=f"{result.items_in} rows -> {result.items_out}")
    for key, value in result.to_dict()["counts"].items():
        if key not in ("items_in", "items_out"):
            table.add_row(
                key, ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
            )
    Console().print(table)
    Console().print(
        f"curated manifest: {out}; summary: {result.summary_path}" + (f"; report: {report}" if report else "")
    )


@dataset_app.command("audit")
def audit(  # noqa: PLR0917 - typer commands take one argument per option
    data: Annotated[Path, typer.Option(help="Catalog manifest CSV to audit.")],
    out: Annotated[Path, typer.Option(help="Ranked label issues CSV to write.")] = Path("issues.csv"),
    report: Annotated[Path | None, typer.Option(help="Also write an HTML page with the top issues.")] = None,
    folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds (one model each).")] = 3,
    backbone: Annotated[str, typer.Option(help="timm backbone of the fold models.")] = "resnet10t",
    image_size: Annotated[int, typer.Option(min=32, help="Input size of the fold models.")] = 96,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per fold model.")] = 4,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size.")] = 32,
    pretrained: Annotated[bool, typer.Option(help="Start from timm's pretrained weights (needs internet).")] = False,
    backbone_weights: Annotated[Path | None, typer.Option(help="Local backbone weights file.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the folds and training.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    workers: Annotated[int, typer.Option(min=0, help="Data-loading processes.")] = 0,
    work_dir: Annotated[Path | None, typer.Option(help="Keep the fold models here (default: deleted).")] = None,
    taxonomy: Annotated[Path | None, typer.Option(help="Taxonomy YAML (default: the shipped one).")] = None,
) -> None:
    """Find probably wrong labels: out-of-fold predictions, then cleanlab's confident learning; ranked CSV."""
    from tagger.audit import AuditConfig, write_audit_html, write_issues_csv  # noqa: PLC0415 - torch, cleanlab: lazy
    from tagger.audit import audit as run_audit  # noqa: PLC0415

    notes: list[str] = []
    try:
        config = AuditConfig(
            folds=folds,
            backbone=backbone,
            image_size=image_size,
            epochs=epochs,
            batch_size=batch_size,
            pretrained=pretrained,
            backbone_weights=str(backbone_weights) if backbone_weights else None,
            seed=seed,
            device=device,
            workers=workers,
            work_dir=str(work_dir) if work_dir else None,
            taxonomy=str(taxonomy) if taxonomy else None,
        )
        console = Console(stderr=True)
        with progress_bars() as progress:
            issues = run_audit(
                data,
                config,
                notes=notes,
                progress=lambda line: console.print(line, highlight=False),
                reporter=ProgressReporter(progress),
            )
        write_issues_csv(issues, out)
        if report is not None:
            write_audit_html(issues, report, notes)
    except TaggerError as exc:
        raise fail(exc) from exc
    table = Table("rank", "id", "attribute", "given", "suggested", "quality", title=f"{len(issues)} labels to check")
    for issue in issues[:15]:
        table.add_row(
            str(issue.rank),
            issue.id,
            issue.attribute,
            issue.given_label,
            issue.suggested_label,
            f"{issue.label_quality:.3f}",
        )
    Console().print(table)
    for note in notes:
        Console(stderr=True).print(f"note: {note}", highlight=False)
    Console().print(f"issues written to {out}" + (f"; report: {report}" if report else ""))
