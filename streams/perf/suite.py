"""`swatch bench all`: the model, the worker cold and with repeats, the naive baseline and a rate run, in one process.

Everything runs on one machine in one sitting, so the ratios compare figures measured side by side:

- ``pipeline_cold_vs_model``: worker images inferred/s with every image new, over the best
  model-only images/s (any runtime, threads, batch size) of ``bench model`` in the same run;
- ``pipeline_cold_vs_baseline`` and ``pipeline_dup80_vs_baseline``: worker listings/s over the naive
  faust-streaming agent's on the same workload;
- ``latency_p99_s_at_half_load``: p99 from event time to attribute event at half the cold rate;
- ``worker_peak_rss_mb`` (over every worker run) and ``ready_s`` (start to model loaded and joined).

:func:`speed_model_dir` makes a model directory with untrained weights for a backbone and input
size (speed does not depend on the weights), e.g. EfficientNet-B0 at 224 px before it is trained.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.config import Settings
from streams.perf.modelbench import bench_model
from streams.perf.pipeline import run_pipeline
from streams.perf.procfs import machine_facts
from streams.perf.rig import Rig

logger = logging.getLogger(__name__)

Report = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Sizes:
    """How much each part of ``bench all`` runs."""

    cold: int = 1200
    dup80: int = 3000
    baseline: int = 300
    catalog: int = 3000  # unique images: the cold runs and the half-load run (cold too) need one each
    rate_seconds: float = 40.0
    model_seconds: float = 4.0
    batch_sizes: tuple[int, ...] = (1, 8, 32)

    @classmethod
    def quick(cls) -> Sizes:
        """Under five minutes on the 2-core development machine."""
        return cls(
            cold=400, dup80=1000, baseline=120, catalog=1200, rate_seconds=20.0, model_seconds=2.0, batch_sizes=(8, 32)
        )


def speed_model_dir(backbone: str, image_size: int, root: Path) -> Path:
    """A model directory with untrained ``backbone`` weights at ``image_size`` px and the default taxonomy."""
    import torch  # noqa: PLC0415

    from tagger.card import ModelCard, save_model  # noqa: PLC0415
    from tagger.model import MultiHeadTagger  # noqa: PLC0415
    from tagger.preprocess import PreprocessConfig  # noqa: PLC0415
    from tagger.taxonomy import load_taxonomy  # noqa: PLC0415

    directory = root / f"speed-{backbone}-{image_size}"
    if (directory / "model_card.json").exists():
        return directory
    taxonomy = load_taxonomy()
    torch.manual_seed(0)
    model = MultiHeadTagger(taxonomy, backbone).eval()
    card = ModelCard(
        name=f"speed-only-{backbone.replace('_', '-')}",
        version="0.0.0",
        backbone=backbone,
        taxonomy=taxonomy.to_dict(),
        preprocessing=PreprocessConfig(image_size=image_size).to_dict(),
        training={"note": "untrained weights: for speed measurements only"},
    )
    save_model(model, card, directory, half=True)
    return directory


def model_env(model_dir: Path | None, overrides: Mapping[str, str]) -> dict[str, str]:
    """The worker variables for a model directory plus the caller's overrides."""
    env = dict(overrides)
    if model_dir is not None:
        env["SWATCH_MODEL_DIR"] = str(model_dir)
    return env


def bench_all(
    settings: Settings,
    *,
    sizes: Sizes,
    model_dir: Path | None = None,
    overrides: Mapping[str, str] | None = None,
    report: Report | None = None,
) -> dict[str, Any]:
    """Run the whole suite; returns the JSON document (``ratios`` first among the results)."""
    report = report or (lambda name, row: None)
    env = model_env(model_dir, overrides or {})
    results: dict[str, Any] = {"machine": machine_facts(), "sizes": sizes.__dict__, "settings": env}
    threads = int(env["SWATCH_MODEL_THREADS"]) if "SWATCH_MODEL_THREADS" in env else None
    model = bench_model(
        model_dir,
        device=settings.model.device,
        threads=None if threads is None else [threads],
        batch_sizes=sizes.batch_sizes,
        seconds=sizes.model_seconds,
    )
    results["model"] = model
    report("model", model)
    with (
        tempfile.TemporaryDirectory(prefix="swatch-bench-") as scratch,
        Rig(settings, Path(scratch), max(sizes.catalog, sizes.cold, sizes.baseline, sizes.dup80 // 5 + 1)) as rig,
    ):
        runs: dict[str, dict[str, Any]] = {}
        for name, workload, listings, program in (
            ("pipeline_cold", "cold", sizes.cold, "worker"),
            ("pipeline_dup80", "dup80", sizes.dup80, "worker"),
            ("baseline_cold", "cold", sizes.baseline, "naive"),
            ("baseline_dup80", "dup80", sizes.baseline, "naive"),
        ):
            label = name.replace("_", "-")
            runs[name] = run_pipeline(rig, workload, listings, overrides=env, label=label, program=program)
            report(name, runs[name])
        half = max(1.0, runs["pipeline_cold"]["listings_per_s"] / 2)
        # cold at half the cold rate: every image is new, as the first sight of a catalog
        listings = min(rig.catalog_size, max(20, int(half * sizes.rate_seconds)))
        runs["pipeline_half_load"] = run_pipeline(rig, "cold", listings, rate=half, overrides=env, label="half-load")
        report("pipeline_half_load", runs["pipeline_half_load"])
    results |= runs
    results["ratios"] = ratios(model, runs)
    return {"benchmark": "all", "ratios": results.pop("ratios"), **results}


def ratios(model: Mapping[str, Any], runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The figures the targets are about, from one run's results."""
    cold, dup80 = runs["pipeline_cold"], runs["pipeline_dup80"]
    best = model["best"]["images_per_s"]
    worker_runs = [r for r in runs.values() if r["benchmark"] == "pipeline"]
    return {
        "pipeline_cold_vs_model": round(cold["images_inferred_per_s"] / best, 3),
        "pipeline_cold_vs_model_torch": round(cold["images_inferred_per_s"] / model["best_torch"]["images_per_s"], 3)
        if model.get("best_torch")
        else None,
        "pipeline_cold_vs_baseline": round(cold["listings_per_s"] / runs["baseline_cold"]["listings_per_s"], 2),
        "pipeline_dup80_vs_baseline": round(dup80["listings_per_s"] / runs["baseline_dup80"]["listings_per_s"], 2),
        "latency_p99_s_at_half_load": runs["pipeline_half_load"]["latency_s"]["p99"],
        "latency_p50_s_at_half_load": runs["pipeline_half_load"]["latency_s"]["p50"],
        "latency_p99_s_at_half_load_after_2s": runs["pipeline_half_load"]["latency_steady_s"]["p99"],
        "worker_peak_rss_mb": max(r["worker_peak_rss_mb"] for r in worker_runs),
        "ready_s": max(r["joined_s"] for r in worker_runs),
        "model_best": best,
        "model_best_config": {k: model["best"][k] for k in ("runtime", "threads", "batch_size")},
        "pipeline_cold_images_per_s": cold["images_inferred_per_s"],
        "others_cores_busy_max": max(r["cpu"]["others_cores_busy"] for r in runs.values()),
        "cpu_count": os.cpu_count(),
    }
