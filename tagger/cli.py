"""Model-side commands (`swatch synth`, `train`, `evaluate`, `predict`, ...): thin wiring over tagger.

:func:`register` adds them, the ``bench`` group (:mod:`tagger.bench_cli`) and the ``dataset`` group
(:mod:`tagger.dataset_cli`) to a typer app; ``bench_app`` stays importable from here for ``streams.cli``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tagger.bench_cli import bench_app
from tagger.console import ProgressReporter, fail, progress_bars
from tagger.dataset_cli import dataset_app
from tagger.errors import TaggerError

STOPPED_EXIT = 75  # `swatch train` stopped by a signal after writing its checkpoint; --resume continues

__all__ = ["bench_app", "calibrate", "evaluate", "explain", "export", "predict", "register", "synth", "train"]


def synth(
    out: Annotated[Path, typer.Option(help="Folder for images/ and manifest.csv.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of products.")] = 1000,
    seed: Annotated[int, typer.Option(help="Same seed, same catalog.")] = 0,
    missing_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of labels left blank.")] = 0.1,
    noise_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of labels replaced by a wrong value.")] = 0.03,
    split: Annotated[str | None, typer.Option(help="Split for every row (train/val/test); default 80/10/10.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering in parallel.")] = 1,
) -> None:
    """Render a synthetic product catalog (images + manifest) for training, tests and the demo."""
    from tagger.synth import SynthConfig, generate_catalog

    config = SynthConfig(n=n, seed=seed, missing_rate=missing_rate, noise_rate=noise_rate, split=split)
    with progress_bars() as progress:
        task = progress.add_task("rendering", total=n, info="")
        try:
            manifest = generate_catalog(
                out, config, progress=lambda done, total: progress.update(task, completed=done), workers=workers
            )
        except TaggerError as exc:
            raise fail(exc) from exc
    Console().print(f"wrote {n} products to {manifest}")


def train(
    data: Annotated[Path | None, typer.Option(help="Catalog manifest CSV.")] = None,
    out: Annotated[Path | None, typer.Option(help="Model directory to write.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML training config; flags override it.")] = None,
    backbone: Annotated[str | None, typer.Option(help="timm model name (default efficientnet_b0).")] = None,
    pretrained: Annotated[
        bool | None, typer.Option(help="Start from timm's pretrained weights (needs internet).")
    ] = None,
    backbone_weights: Annotated[
        str | None, typer.Option(help="Local backbone weights file (offline transfer).")
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size (default 224).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (default 30).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default 32).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 2e-3).")] = None,
    patience: Annotated[int | None, typer.Option(help="Epochs without improvement before stopping.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the split, init and shuffling.")] = None,
    workers: Annotated[int | None, typer.Option(help="Data-loading processes.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name in the card.")] = None,
    version: Annotated[str | None, typer.Option(help="Model version in the card.")] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="Stop after the epoch that passes this many seconds.")
    ] = None,
    oversample: Annotated[
        bool | None, typer.Option(help="Oversample rare values with stronger augmentation (default on).")
    ] = None,
    init_from: Annotated[
        Path | None, typer.Option(help="Start from this model directory's weights (fine-tuning).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt.")] = False,
    checkpoint_every: Annotated[
        float | None, typer.Option(help="Also checkpoint within an epoch every this many seconds (default 120).")
    ] = None,
) -> None:
    """Train a multi-attribute tagger on a catalog manifest; keeps the best epoch by validation macro-F1."""
    from tagger.checkpoint import TrainStopped
    from tagger.train import TrainConfig
    from tagger.train import train as run_training

    try:
        resolved = TrainConfig.resolve(
            config,
            data=str(data) if data else None,
            out=str(out) if out else None,
            backbone=backbone,
            pretrained=pretrained,
            backbone_weights=backbone_weights,
            image_size=image_size,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            patience=patience,
            seed=seed,
            workers=workers,
            device=device,
            name=name,
            version=version,
            time_budget_s=time_budget,
            checkpoint_every_s=checkpoint_every,
            oversample=oversample,
            init_from=str(init_from) if init_from else None,
        )
        with progress_bars() as progress:
            result = run_training(resolved, ProgressReporter(progress), resume=resume)
    except TrainStopped as exc:  # not a failure: the checkpoint is written; 75 (EX_TEMPFAIL) says "run again"
        Console(stderr=True).print(f"[yellow]stopped:[/yellow] {exc}", highlight=False)
        raise typer.Exit(STOPPED_EXIT) from exc
    except TaggerError as exc:
        raise fail(exc) from exc
    Console().print(
        f"best epoch {result.best_epoch}: validation mean macro-F1 {result.best_score:.4f}; "
        f"model {result.model_id} in {result.model_dir} ({result.seconds:.0f}s); "
        f"{result.draws_per_epoch} draws per epoch over {result.items} items"
    )


def evaluate(
    data: Annotated[Path, typer.Option(help="Catalog manifest CSV.")],
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the demo model).")] = None,
    split: Annotated[str, typer.Option(help="train, val, test or all.")] = "test",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")] = None,
    report: Annotated[
        Path | None,
        typer.Option(help="Also write a self-contained HTML report (plots, worst errors with Grad-CAM)."),
    ] = None,
    gallery: Annotated[int, typer.Option(min=0, help="Worst errors shown per attribute in --report (0: none).")] = 6,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Precision, recall and F1 per attribute and value on a manifest's split."""
    from tagger.evaluate import run_evaluation

    try:
        evaluation = run_evaluation(data, model, split, device)
    except TaggerError as exc:
        raise fail(exc) from exc
    result = evaluation.result
    table = Table(
        "attribute",
        "macro F1",
        "weighted F1",
        "support",
        "threshold",
        "accepted",
        title=f"{result['model_id']} on {split}",
    )
    for head, scores in result["attributes"].items():
        table.add_row(
            head,
            f"{scores['macro_f1']:.3f}",
            f"{scores['weighted_f1']:.3f}",
            str(scores["support"]),
            f"{scores['threshold']:.2f}" if "threshold" in scores else "",
            f"{scores['coverage_at_target']:.1%}" if "coverage_at_target" in scores else "",
        )
    Console().print(table)
    totals = result.get("summary") or {}
    if totals:
        line = (
            f"{totals['heads']} heads: mean macro-F1 {totals['mean_macro_f1']:.3f}, "
            f"weakest {totals['weakest_head']} {totals['min_macro_f1']:.3f}"
        )
        if "accepted_share" in totals:
            line += f"; {totals['accepted_share']:.1%} of predictions accepted at the card's thresholds"
            if "accepted_precision" in totals:
                line += f" (precision {totals['accepted_precision']:.3f})"
        Console().print(line, soft_wrap=True)  # one line in logs and pipes, whatever the width
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        Console().print(f"report written to {json_path}")
    if report is not None:
        from tagger.eval_report import build_report

        try:
            html = build_report(evaluation, data=data, gallery=gallery, device=device)
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(html, encoding="utf-8")
        except (OSError, TaggerError) as exc:
            raise fail(TaggerError(f"cannot write the report {report}: {exc}")) from exc
        Console().print(f"HTML report written to {report}")


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the demo model).")] = None,
    category: Annotated[
        str | None, typer.Option(help="Category path, e.g. women/clothing/dresses; default all.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Print one JSON object per image with every applicable attribute's prediction."""
    import torch

    from tagger.predict import Predictor
    from tagger.preprocess import ImageError

    try:
        predictor = Predictor.load(model, device)
        group_obj = predictor.taxonomy.group_for(category) if category else None
        if category and group_obj is None:
            raise TaggerError(f"category {category!r} maps to no group of this model's taxonomy")
        group = group_obj.name if group_obj else None
        for path in images:
            record: dict[str, Any] = {"image": str(path), "model_id": predictor.model_id}
            try:
                tensor = predictor.preprocess(path.read_bytes())
            except (OSError, ImageError) as exc:
                record["error"] = str(exc)
            else:
                record.update(predictor.predict(torch.stack([tensor]), [group])[0].to_dict())
            typer.echo(json.dumps(record))
    except TaggerError as exc:
        raise fail(exc) from exc


def explain(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    out: Annotated[Path, typer.Option(help="PNG to write: the input and one heat map per head.")],
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the demo model).")] = None,
    attribute: Annotated[
        list[str] | None, typer.Option(help="Head to explain, e.g. colour or apparel.colour; repeatable.")
    ] = None,
    value: Annotated[str | None, typer.Option(help="Explain this value instead of the top one (one head).")] = None,
    category: Annotated[
        str | None, typer.Option(help="Category path, e.g. women/clothing/dresses; default: guessed from the picture.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the heads' values as JSON.")] = False,
    palette: Annotated[bool, typer.Option(help="Write 256 dithered colours: about half the size, for docs.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Grad-CAM heat maps: where the model looked for each attribute's value (one PNG grid)."""
    from tagger.explain import explain as run_explain
    from tagger.explain import render_grid
    from tagger.predict import Predictor

    try:
        predictor = Predictor.load(model, device)
        try:
            data = image.read_bytes()
        except OSError as exc:
            raise TaggerError(f"cannot read {image}: {exc}") from exc
        explanations = run_explain(predictor, data, attribute or None, category=category, value=value)
        groups = ", ".join(dict.fromkeys(e.group for e in explanations))
        inferred = explanations[0].group_inferred
        title = f"{image.name} ({groups}{', guessed' if inferred else ''})"
        png = render_grid(explanations, title=title, palette=palette)
        try:
            out.write_bytes(png)
        except OSError as exc:
            raise TaggerError(f"cannot write {out}: {exc}") from exc
    except TaggerError as exc:
        raise fail(exc) from exc
    if inferred:
        Console(stderr=True).print(f"group {groups} guessed from the picture; pass --category to choose it")
    if json_output:
        heads = {e.head: e.to_dict() for e in explanations}
        record = {"image": str(image), "model_id": predictor.model_id, "out": str(out), "group_inferred": inferred}
        typer.echo(json.dumps({**record, "heads": heads}))
    else:
        typer.echo(str(out))


def export(
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the demo model).")] = None,
    format_: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    out: Annotated[
        Path | None, typer.Option(help="File (or folder) to write; default next to the model, else the cache.")
    ] = None,
) -> None:
    """Export the model (calibrated probabilities of every head) as ONNX or TorchScript, checked against PyTorch."""
    from tagger.export import FORMATS, export_model_record

    fmt = next((f for f in FORMATS if f == format_), None)
    if fmt is None:
        raise fail(TaggerError(f"format {format_!r} is not {' or '.join(FORMATS)}"))
    try:
        path, record = export_model_record(model, fmt, out)
    except TaggerError as exc:
        raise fail(exc) from exc
    typer.echo(str(path))
    typer.echo(f"{record.model_id}: max abs difference from PyTorch {record.max_abs_diff:.3g} ({fmt}, fp32)")


def calibrate(
    data: Annotated[Path, typer.Option(help="Catalog manifest CSV (its validation split is used).")],
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the demo model).")] = None,
    split: Annotated[str, typer.Option(help="Split to fit on; never the training split.")] = "val",
    target_precision: Annotated[float, typer.Option(help="Precision the accepted predictions must reach.")] = 0.95,
    plot: Annotated[Path | None, typer.Option(help="Write the reliability diagrams here (PNG).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Report only; leave the model card as it is.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Fit a temperature per head and thresholds for a target precision; write them into the model card."""
    from tagger.calibrate import calibrate_model, reliability_png

    if split == "train":
        raise fail(TaggerError("calibrating on the training split would make the model look certain; use val"))
    try:
        card, heads = calibrate_model(
            data, model, split=split, target_precision=target_precision, device=device, write=not dry_run
        )
    except TaggerError as exc:
        raise fail(exc) from exc
    table = Table(
        "attribute",
        "T",
        "ECE before",
        "ECE after",
        "threshold",
        "precision",
        "coverage",
        "support",
        title=f"{card.model_id}: calibration on {split} (target precision {target_precision})",
    )
    for key, head in heads.items():
        table.add_row(
            key,
            f"{head.temperature:.2f}",
            f"{head.ece_before:.3f}",
            f"{head.ece_after:.3f}",
            f"{head.threshold:.3f}",
            f"{head.precision_at_target:.3f}",
            f"{head.coverage_at_target:.3f}",
            str(head.support),
        )
    Console().print(table)
    if plot is not None:
        reliability_png(heads, plot)
        Console().print(f"reliability diagrams written to {plot}")
    Console().print("model card unchanged (dry run)" if dry_run else "temperatures and thresholds written to the card")


def register(app: typer.Typer) -> None:
    """Add the model-side commands to the `swatch` command."""
    for command in (synth, train, evaluate, predict, calibrate):
        app.command()(command)
    app.command()(explain)
    app.command()(export)
    app.add_typer(bench_app, name="bench")
    app.add_typer(dataset_app, name="dataset")
