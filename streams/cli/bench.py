"""`swatch bench model|pipeline|baseline|soak|all`: tables on the terminal, JSON files (see streams.perf)."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from streams.cli.common import _guarded, _io, _settings, _table, _terminate_as_interrupt
from tagger import cli as tagger_cli

bench = tagger_cli.bench_app

ModelOpt = Annotated[Path | None, typer.Option("--model", help="Model directory (default: the demo model).")]
BackboneOpt = Annotated[
    str | None,
    typer.Option(help="Measure an untrained timm backbone instead of --model, e.g. efficientnet_b0 (speed only)."),
]
SizeOpt = Annotated[int, typer.Option(help="Input size in px for --backbone.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Worker variable for the runs, e.g. --set SWATCH_MODEL_RUNTIME=torch (repeatable)."),
]


def _overrides(values: list[str] | None) -> dict[str, str]:
    out = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("SWATCH_"):
            _io.err.print(f"[red]--set takes SWATCH_NAME=VALUE, not {item!r}[/red]")
            raise typer.Exit(2)
        out[name] = value
    return out


def _model_dir(model: Path | None, backbone: str | None, image_size: int, scratch: Path) -> Path | None:
    if backbone is None:
        return model
    from streams.perf.suite import speed_model_dir

    return speed_model_dir(backbone, image_size, scratch)


def _quiet() -> None:
    _terminate_as_interrupt()
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("streams").setLevel(logging.ERROR)


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    _io.out.print(f"results written to {path}")


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        _io.err.print(f"[red]{option} takes integers like 1,8,32: {exc}[/red]")
        raise typer.Exit(2) from exc


def print_model(result: dict[str, Any]) -> None:
    """The model-only table."""
    best = result["best"]
    table = _table(
        "runtime",
        "threads",
        "batch",
        "median batch ms",
        "images/s",
        title=f"model only: {result['model_id']} at {result['image_size']} px on {result['device']}",
    )
    for row in result["rows"]:
        mark = " (best)" if row is best or row == best else ""
        table.add_row(
            row["runtime"],
            str(row["threads"]),
            str(row["batch_size"]),
            str(row["median_batch_ms"]),
            f"{row['images_per_s']}{mark}",
        )
    _io.out.print(table)
    _io.out.print(f"other processes: {result['cpu']['others_cores_busy']} cores busy", highlight=False)


RUN_ROWS: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("listings", lambda r: r["listings"]),
    ("listings/s", lambda r: r["listings_per_s"]),
    ("images inferred/s", lambda r: r["images_inferred_per_s"]),
    ("latency p50 s", lambda r: r["latency_s"]["p50"]),
    ("latency p99 s", lambda r: r["latency_s"]["p99"]),
    ("cache hit ratio", lambda r: r["cache_hit_ratio"]),
    ("model busy share", lambda r: r["model_busy_share"]),
    ("mean batch", lambda r: r["mean_batch"]),
    ("worker CPU cores", lambda r: r["worker_cpu_cores"].get("total", "")),
    ("peak RSS MB", lambda r: r["worker_peak_rss_mb"]),
    ("ready and joined s", lambda r: r["joined_s"]),
    ("others' CPU cores", lambda r: r["cpu"]["others_cores_busy"]),
)


def print_runs(title: str, runs: dict[str, dict[str, Any]]) -> None:
    """One column per run, one row per figure, then each run's CPU by thread group."""
    table = _table("", *runs, title=title)
    for label, get in RUN_ROWS:
        table.add_row(label, *(str(get(r)) for r in runs.values()))
    _io.out.print(table)
    for name, r in runs.items():
        groups = ", ".join(f"{k} {v}" for k, v in r["worker_cpu_cores"].items() if k != "total" and v)
        _io.out.print(f"{name}: CPU cores by thread group: {groups}", highlight=False)


@bench.command("model")
def bench_model_cmd(  # noqa: PLR0917 - typer commands take one argument per option
    model: ModelOpt = None,
    backbone: BackboneOpt = None,
    image_size: SizeOpt = 224,
    runtimes: Annotated[
        str | None, typer.Option(help="Comma-separated: torch,onnx (default: every installed one).")
    ] = None,
    threads: Annotated[
        str | None, typer.Option(help="Comma-separated thread counts (default: 1 and the core count).")
    ] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    seconds: Annotated[float, typer.Option(min=0.1, help="Measuring time per configuration.")] = 3.0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (torch; ONNX Runtime runs on the CPU).")] = "auto",
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = Path("bench-model.json"),
) -> None:
    """Model-only images/s per runtime, threads and batch size on preprocessed tensors: the ceiling."""
    from streams.perf.modelbench import bench_model

    _quiet()
    with tempfile.TemporaryDirectory(prefix="swatch-bench-") as scratch:
        directory = _model_dir(model, backbone, image_size, Path(scratch))
        result = _guarded(
            lambda: bench_model(
                directory,
                device=device,
                runtimes=runtimes.split(",") if runtimes else None,
                threads=_ints(threads, "--threads") if threads else None,
                batch_sizes=_ints(batch_sizes, "--batch-sizes"),
                seconds=seconds,
            )
        )
    print_model(result)
    _write(json_path, result)


@bench.command("pipeline")
def bench_pipeline_cmd(  # noqa: PLR0917 - typer commands take one argument per option
    workload: Annotated[str, typer.Option(help="cold, dup80, or rate=R (cold at R listings/s, open loop).")] = "cold",
    listings: Annotated[int, typer.Option(min=10, help="Listings to publish.")] = 1000,
    workers: Annotated[int, typer.Option(min=1, help="Workers in one consumer group.")] = 1,
    model: ModelOpt = None,
    backbone: BackboneOpt = None,
    image_size: SizeOpt = 224,
    set_: SetOpt = None,
    baseline: Annotated[bool, typer.Option(help="Run the naive faust-streaming agent instead of the worker.")] = False,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = Path(
        "bench-pipeline.json"
    ),
) -> None:
    """The real worker (its own process) through the real broker and Redis, fed from a local image server."""
    _run_single(
        workload, listings, workers, model, backbone, image_size, set_, "naive" if baseline else "worker", json_path
    )


@bench.command("baseline")
def bench_baseline_cmd(  # noqa: PLR0917 - typer commands take one argument per option
    workload: Annotated[str, typer.Option(help="cold or dup80.")] = "cold",
    listings: Annotated[int, typer.Option(min=10, help="Listings to publish.")] = 300,
    model: ModelOpt = None,
    backbone: BackboneOpt = None,
    image_size: SizeOpt = 224,
    set_: SetOpt = None,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = Path(
        "bench-baseline.json"
    ),
) -> None:
    """The obvious faust-streaming agent (fetch, preprocess, predict at batch 1, produce; no cache)."""
    _run_single(workload, listings, 1, model, backbone, image_size, set_, "naive", json_path)


def _run_single(  # noqa: PLR0917
    workload: str,
    listings: int,
    workers: int,
    model: Path | None,
    backbone: str | None,
    image_size: int,
    set_: list[str] | None,
    program: str,
    json_path: Path,
) -> None:
    from streams.perf.pipeline import run_pipeline
    from streams.perf.rig import Rig
    from streams.perf.suite import model_env

    settings = _settings()
    _quiet()
    rate = None
    if workload.startswith("rate="):
        rate = float(workload.removeprefix("rate="))
        workload = "cold"
    if workload not in ("cold", "dup80"):
        _io.err.print(f"[red]--workload is cold, dup80 or rate=R, not {workload!r}[/red]")
        raise typer.Exit(2)
    with tempfile.TemporaryDirectory(prefix="swatch-bench-") as scratch:
        env = model_env(_model_dir(model, backbone, image_size, Path(scratch)), _overrides(set_))

        def body() -> dict[str, Any]:
            with Rig(settings, Path(scratch), listings) as rig:
                return run_pipeline(rig, workload, listings, rate=rate, workers=workers, overrides=env, program=program)

        result = _guarded(body)
    print_runs(f"swatch bench {'baseline' if program == 'naive' else 'pipeline'}: {workload}", {workload: result})
    _write(json_path, result)


@bench.command("soak")
def bench_soak_cmd(  # noqa: PLR0917 - typer commands take one argument per option
    minutes: Annotated[float, typer.Option(min=0.5, help="How long the steady load lasts.")] = 30.0,
    load: Annotated[float, typer.Option(min=0.05, max=1.0, help="Share of the measured cold capacity.")] = 0.7,
    rate: Annotated[float | None, typer.Option(help="Listings/s instead of measuring the capacity first.")] = None,
    partitions: Annotated[
        int,
        typer.Option(
            min=1,
            help="Partitions of the run's topics: the embedded broker stopped serving fetches after about "
            "14,000 records per partition (whether the limit is per partition is not known yet).",
        ),
    ] = 24,
    model: ModelOpt = None,
    set_: SetOpt = None,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = Path("bench-soak.json"),
) -> None:
    """Steady load with duplicates, broken URLs and malformed events; RSS and descriptors must stay flat."""
    from streams.perf.rig import Rig
    from streams.perf.soak import bench_soak
    from streams.perf.suite import model_env

    settings = _settings()
    settings = settings.model_copy(update={"topics": settings.topics.model_copy(update={"partitions": partitions})})
    _quiet()
    env = model_env(model, _overrides(set_))

    def body() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="swatch-bench-") as scratch, Rig(settings, Path(scratch), 1500) as rig:
            return bench_soak(rig, minutes, load=load, rate=rate, overrides=env)

    result = _guarded(body)
    print_runs(f"swatch bench soak: {minutes:g} min at {result['rate']:.1f} listings/s", {"soak": result["run"]})
    verdict = result["verdict"]
    _io.out.print(
        f"RSS per minute (MB): {verdict.get('rss_mb_per_minute')}; growth {verdict.get('rss_growth')} "
        f"(flat: {verdict.get('rss_flat')}); descriptors per minute: {verdict.get('fds_per_minute')} "
        f"(flat: {verdict.get('fds_flat')})",
        highlight=False,
    )
    _write(json_path, result)


@bench.command("all")
def bench_all_cmd(  # noqa: PLR0917 - typer commands take one argument per option
    quick: Annotated[bool, typer.Option(help="Smaller runs: under five minutes on 2 cores.")] = False,
    model: ModelOpt = None,
    backbone: BackboneOpt = None,
    image_size: SizeOpt = 224,
    set_: SetOpt = None,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = Path("bench-all.json"),
) -> None:
    """Model, worker cold and dup80, the naive baseline and a half-load latency run, with the ratios."""
    from streams.perf.suite import Sizes, bench_all

    settings = _settings()
    _quiet()

    def report(name: str, row: dict[str, Any]) -> None:
        if name == "model":
            print_model(row)
        else:
            _io.out.print(
                f"{name}: {row['listings_per_s']} listings/s, p99 {row['latency_s']['p99']} s", highlight=False
            )

    with tempfile.TemporaryDirectory(prefix="swatch-bench-model-") as scratch:
        directory = _model_dir(model, backbone, image_size, Path(scratch))
        sizes = Sizes.quick() if quick else Sizes()
        result = _guarded(
            lambda: bench_all(settings, sizes=sizes, model_dir=directory, overrides=_overrides(set_), report=report)
        )
    runs = {k: v for k, v in result.items() if isinstance(v, dict) and v.get("benchmark") in ("pipeline", "baseline")}
    print_runs("swatch bench all", runs)
    table = _table("ratio", "value", title="side by side, one run")
    for name, value in result["ratios"].items():
        table.add_row(name, json.dumps(value))
    _io.out.print(table)
    _write(json_path, result)
