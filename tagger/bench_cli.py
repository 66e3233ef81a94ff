"""`swatch bench predict|train`: speed measurements, each a table on the terminal and a JSON file.

Registered by :func:`tagger.cli.register`; :mod:`streams.cli.bench` adds ``model``, ``pipeline``, ``baseline``,
``soak`` and ``all`` to :data:`bench_app`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tagger.console import fail
from tagger.errors import TaggerError

bench_app = typer.Typer(help="Measure speed: prints a table and writes JSON.", no_args_is_help=True)


@bench_app.command("predict")
def bench_predict(  # noqa: PLR0917 - typer commands take one argument per option
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
    from tagger.bench import bench_predict as run_bench  # noqa: PLC0415 - torch: lazy
    from tagger.predict import Predictor  # noqa: PLC0415

    if runtime not in ("torch", "onnx", "both"):
        raise fail(TaggerError(f"runtime {runtime!r} is not torch, onnx or both"))
    sizes = tuple(int(s) for s in batch_sizes.split(",") if s.strip())
    if runtime == "both":
        _bench_both(model, "cpu" if device == "auto" else device, sizes, seconds, json_path)
        return
    try:
        predictor = Predictor.load(model, device, runtime)
    except TaggerError as exc:
        raise fail(exc) from exc
    result = run_bench(predictor, sizes, seconds)
    table = Table("batch size", "median batch ms", "images/s", title=f"{result['model_id']} on {result['device_name']}")
    for row in result["inference"]:
        table.add_row(str(row["batch_size"]), f"{row['median_batch_ms']:.1f}", f"{row['images_per_s']:.0f}")
    Console().print(table)
    Console().print(f"preprocessing: {result['preprocess_images_per_s_one_thread']:.0f} images/s on one thread")
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Console().print(f"written to {json_path}")


@bench_app.command("train")
def bench_train(  # noqa: PLR0917 - typer commands take one argument per option
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
    from tagger.bench import bench_train as run_bench  # noqa: PLC0415 - torch: lazy
    from tagger.predict import pick_device  # noqa: PLC0415

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
        raise fail(TaggerError(f"cannot run the training benchmark: {exc}")) from exc
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
    from tagger.bench import bench_runtimes  # noqa: PLC0415 - torch: lazy
    from tagger.predict import Predictor  # noqa: PLC0415

    try:
        predictors = {"torch": Predictor.load(model, device), "onnx": Predictor.load(model, "cpu", "onnx")}
    except TaggerError as exc:
        raise fail(exc) from exc
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
