"""`swatch bench worker`: the whole hot path's throughput and latency, per micro-batch size, side by side.

Each configuration runs the demo's workload (synthetic catalog over local HTTP, listings with
re-listed photos and a few broken ones, the demo model) through a fresh worker against one shared
broker and Redis, with its own topics, group and cache keys, so runs do not help each other.
Latency is from a listing's event time to its attribute event; all listings are published at
once, so it includes queueing behind the burst.
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from streams.config import Settings
from streams.demo import DEMO_SESSION_TIMEOUT_MS, DemoOptions, DemoSummary, run_demo
from streams.embedded import services


def bench_worker(
    settings: Settings,
    listings: int = 300,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the workload once per batch size; returns rows of listings/s and latency quantiles."""
    rows = []
    with services(settings) as endpoints, tempfile.TemporaryDirectory(prefix="swatch-bench-") as scratch:
        for size in batch_sizes:
            kafka = settings.kafka.model_dump()
            kafka["bootstrap"] = endpoints.kafka_bootstrap
            if "kafka" in endpoints.embedded:
                kafka["session_timeout_ms"] = DEMO_SESSION_TIMEOUT_MS
            redis = settings.redis.model_dump() | {"url": endpoints.redis_url}
            batch = settings.batch.model_dump() | {"max_size": size}
            run = Settings(
                kafka=kafka,
                registry=settings.registry,
                redis=redis,
                topics=settings.topics,
                model=settings.model,
                batch=batch,
                fetch=settings.fetch,
                worker=settings.worker,
                log=settings.log,
            )
            options = DemoOptions(listings=listings, html_path=Path(scratch) / f"batch-{size}.html", seed=11)
            summary = run_demo(run, options)
            row = _row(size, summary)
            rows.append(row)
            if report is not None:
                report(row)
    return {
        "benchmark": "worker",
        "listings": listings,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "rows": rows,
    }


def _row(batch_size: int, summary: DemoSummary) -> dict[str, Any]:
    return {
        "batch_max_size": batch_size,
        "model_id": summary.model_id,
        "listings_per_s": summary.throughput_listings_per_s,
        "latency_p50_s": summary.latency_p50_s,
        "latency_p99_s": summary.latency_p99_s,
        "images_inferred": summary.images_inferred,
        "cache_hits": summary.cache_hits,
        "attribute_events": summary.attribute_events,
        "dead_letters": sum(summary.dead_letters.values()),
    }
