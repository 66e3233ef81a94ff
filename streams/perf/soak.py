"""`swatch bench soak --minutes M`: steady load for a long while; memory and descriptors must stay flat.

The load is the ``soak`` workload (four in five listings re-use an earlier image, one in forty has a
broken or refused URL, one in fifty events is malformed) at ``load`` times the worker's capacity,
measured first with a short cold run unless ``rate`` is given. The worker's RSS and open
descriptors are sampled four times a second; the verdict compares per-minute medians after a
warm-up: RSS flat when the largest is within 5 % of the smallest, descriptors when the last
minute's are no more than the warm-up's plus a small allowance (connections come and go).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from streams.perf.pipeline import run_pipeline
from streams.perf.rig import Rig

WARMUP_S = 120.0
RSS_FLAT = 0.05
FD_ALLOWANCE = 16


def bench_soak(
    rig: Rig,
    minutes: float,
    *,
    load: float = 0.7,
    rate: float | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run the soak; returns the run, the capacity it was sized from and the flatness verdict."""
    capacity = None
    if rate is None:
        probe = run_pipeline(rig, "cold", min(rig.catalog_size, 400), overrides=overrides, label="soak-capacity")
        capacity = probe["listings_per_s"]
        rate = max(1.0, capacity * load)
    listings = int(rate * minutes * 60)
    run = run_pipeline(
        rig, "soak", listings, rate=rate, overrides=overrides, label="soak", timeout_s=minutes * 60 + 300
    )
    return {
        "benchmark": "soak",
        "minutes": minutes,
        "load": load,
        "rate": rate,
        "capacity_listings_per_s": capacity,
        "run": run,
        "verdict": flatness(run["memory_samples"], warmup_s=min(WARMUP_S, minutes * 60 / 4)),
    }


def flatness(samples: list[list[float]], *, warmup_s: float = WARMUP_S) -> dict[str, Any]:
    """Per-minute medians of RSS and descriptors after ``warmup_s``, and whether they stayed flat."""
    minutes: dict[int, list[list[float]]] = {}
    for t, rss_mb, descriptors in samples:
        if t >= warmup_s:
            minutes.setdefault(int((t - warmup_s) // 60), []).append([rss_mb, descriptors])
    if not minutes:
        return {"rss_flat": None, "fds_flat": None, "reason": "no samples after the warm-up"}
    rss: list[float] = [statistics.median(v[0] for v in minutes[m]) for m in sorted(minutes)]
    fds: list[float] = [statistics.median(v[1] for v in minutes[m]) for m in sorted(minutes)]
    growth = max(rss) / min(rss) - 1
    return {
        "rss_mb_per_minute": [round(v, 1) for v in rss],
        "fds_per_minute": [int(v) for v in fds],
        "rss_growth": round(growth, 4),
        "rss_flat": growth <= RSS_FLAT,
        "fds_flat": fds[-1] <= fds[0] + FD_ALLOWANCE,
    }
