"""Model-side commands (`swatch synth`, `train`, `evaluate`, `predict`): thin wiring over tagger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tagger.errors import TaggerError


def _fail(exc: TaggerError) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(1)


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
    with _progress() as progress:
        task = progress.add_task("rendering", total=n, info="")
        try:
            manifest = generate_catalog(
                out, config, progress=lambda done, total: progress.update(task, completed=done), workers=workers
            )
        except TaggerError as exc:
            raise _fail(exc) from exc
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
) -> None:
    """Train a multi-attribute tagger on a catalog manifest; keeps the best epoch by validation macro-F1."""
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
            oversample=oversample,
            init_from=str(init_from) if init_from else None,
        )
        with _progress() as progress:
            result = run_training(resolved, _ProgressReporter(progress), resume=resume)
    except TaggerError as exc:
        raise _fail(exc) from exc
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
        raise _fail(exc) from exc
    result = evaluation.result
    table = Table("attribute", "macro F1", "weighted F1", "support", title=f"{result['model_id']} on {split}")
    for head, scores in result["attributes"].items():
        table.add_row(head, f"{scores['macro_f1']:.3f}", f"{scores['weighted_f1']:.3f}", str(scores["support"]))
    Console().print(table)
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
            raise _fail(TaggerError(f"cannot write the report {report}: {exc}")) from exc
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
        raise _fail(exc) from exc


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
        raise _fail(exc) from exc
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
        raise _fail(TaggerError(f"format {format_!r} is not {' or '.join(FORMATS)}"))
    try:
        path, record = export_model_record(model, fmt, out)
    except TaggerError as exc:
        raise _fail(exc) from exc
    typer.echo(str(path))
    typer.echo(f"{record.model_id}: max abs difference from PyTorch {record.max_abs_diff:.3g} ({fmt}, fp32)")


bench_app = typer.Typer(help="Measure speed: prints a table and writes JSON.", no_args_is_help=True)


@bench_app.command("predict")
def bench_predict(
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the demo model).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32,64",
    seconds: Annotated[float, typer.Option(help="Measuring time per batch size.")] = 3.0,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = Path("bench-predict.json"),
    runtime: Annotated[
        str, typer.Option(help="torch, onnx (ONNX Runtime, CPU) or both side by side (torch on the CPU under auto).")
    ] = "torch",
) -> None:
    """Preprocessing and batched inference throughput of the predictor on this machine."""
    from tagger.bench import bench_predict as run_bench
    from tagger.predict import Predictor

    if runtime not in ("torch", "onnx", "both"):
        raise _fail(TaggerError(f"runtime {runtime!r} is not torch, onnx or both"))
    sizes = tuple(int(s) for s in batch_sizes.split(",") if s.strip())
    if runtime == "both":
        _bench_both(model, "cpu" if device == "auto" else device, sizes, seconds, json_path)
        return
    try:
        predictor = Predictor.load(model, device, runtime)
    except TaggerError as exc:
        raise _fail(exc) from exc
    result = run_bench(predictor, sizes, seconds)
    table = Table("batch size", "median batch ms", "images/s", title=f"{result['model_id']} on {result['device_name']}")
    for row in result["inference"]:
        table.add_row(str(row["batch_size"]), f"{row['median_batch_ms']:.1f}", f"{row['images_per_s']:.0f}")
    Console().print(table)
    Console().print(f"preprocessing: {result['preprocess_images_per_s_one_thread']:.0f} images/s on one thread")
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Console().print(f"written to {json_path}")


@bench_app.command("train")
def bench_train(
    backbones: Annotated[str, typer.Option(help="Comma-separated timm names.")] = "efficientnet_b0,resnet10t",
    image_sizes: Annotated[str, typer.Option(help="Comma-separated input sizes.")] = "128,224",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 32,
    rounds: Annotated[int, typer.Option(min=1, help="Round-robin rounds (each times every configuration).")] = 3,
    steps: Annotated[int, typer.Option(min=1, help="Timed steps per configuration per round.")] = 2,
    images_per_run: Annotated[
        int, typer.Option(help="Training images x epochs of a run, to estimate its hours (0: no estimate).")
    ] = 6400 * 60,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = Path("bench-train.json"),
) -> None:
    """Training throughput (images/s) per backbone and image size, side by side on this machine.

    The default run size is the documented B0 command's: 8,000 products, 80 % for training, 60 epochs.
    """
    from tagger.bench import bench_train as run_bench
    from tagger.predict import pick_device

    try:
        configs = [
            (b.strip(), int(s)) for b in backbones.split(",") if b.strip() for s in image_sizes.split(",") if s.strip()
        ]
        if not configs:
            raise ValueError("no backbone or image size given")
        result = run_bench(
            configs,
            pick_device(device),
            batch_size=batch_size,
            rounds=rounds,
            steps_per_round=steps,
            images_per_run=images_per_run,
        )
    except (TaggerError, RuntimeError, ValueError) as exc:
        raise _fail(TaggerError(f"cannot run the training benchmark: {exc}")) from exc
    table = Table(
        "backbone",
        "size",
        "params (M)",
        "median step s",
        "images/s",
        "relative",
        "hours per run",
        title=f"training steps of {batch_size} on {result['device_name']} ({result['torch_threads']} threads)",
    )
    for row in result["results"]:
        hours = f"{row['hours_per_run']:.1f}" if "hours_per_run" in row else "-"
        table.add_row(
            row["backbone"],
            str(row["image_size"]),
            f"{row['parameters'] / 1e6:.1f}",
            f"{row['median_step_s']:.2f}",
            f"{row['images_per_s']:.1f}",
            f"{row['relative_to_first']:.2f}",
            hours,
        )
    Console().print(table)
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Console().print(f"written to {json_path}")


def _bench_both(model: Path | None, device: str, sizes: tuple[int, ...], seconds: float, json_path: Path) -> None:
    from tagger.bench import bench_runtimes
    from tagger.predict import Predictor

    try:
        predictors = {"torch": Predictor.load(model, device), "onnx": Predictor.load(model, "cpu", "onnx")}
    except TaggerError as exc:
        raise _fail(exc) from exc
    result = bench_runtimes(predictors, sizes, seconds)
    title = f"{result['model_id']} on {result['device_name']}, torch {predictors['torch'].device}, onnx cpu"
    table = Table("batch size", "torch ms", "torch images/s", "onnx ms", "onnx images/s", "onnx/torch", title=title)
    for row in result["inference"]:
        torch_row, onnx_row = row["torch"], row["onnx"]
        table.add_row(
            str(row["batch_size"]),
            f"{torch_row['median_batch_ms']:.1f}",
            f"{torch_row['images_per_s']:.0f}",
            f"{onnx_row['median_batch_ms']:.1f}",
            f"{onnx_row['images_per_s']:.0f}",
            f"{row['onnx_vs_torch']:.2f}x",
        )
    Console().print(table)
    Console().print(f"threads: {result['torch_threads']} (both runtimes); onnx/torch = throughput ratio, same batches")
    Console().print(f"preprocessing: {result['preprocess_images_per_s_one_thread']:.0f} images/s on one thread")
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Console().print(f"written to {json_path}")


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
        raise _fail(TaggerError("calibrating on the training split would make the model look certain; use val"))
    try:
        card, heads = calibrate_model(
            data, model, split=split, target_precision=target_precision, device=device, write=not dry_run
        )
    except TaggerError as exc:
        raise _fail(exc) from exc
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
    from tagger.dataset_cli import dataset_app  # imports this module: bound at registration

    app.add_typer(dataset_app, name="dataset")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
    )


class _ProgressReporter:
    """Draws the training loop's progress: one bar per epoch with loss, then a line of scores."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None
        self.loss = 0.0

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=batches, info="")

    def batch_end(self, loss: float) -> None:
        self.loss = loss if self.loss == 0.0 else 0.9 * self.loss + 0.1 * loss
        self.progress.update(self.task, advance=1, info=f"loss {self.loss:.3f}")

    def epoch_end(self, epoch: int, summary: dict[str, Any]) -> None:
        mark = " (best)" if summary["best"] else ""
        line = f"loss {summary['loss']:.3f} val macro-F1 {summary['val_macro_f1']:.4f}{mark}"
        self.progress.update(self.task, info=line)
        if not self.progress.console.is_terminal:  # logs get one plain line per epoch
            self.progress.console.print(f"epoch {epoch}: {line} lr {summary['lr']:.2e}", highlight=False)
