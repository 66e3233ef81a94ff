"""`swatch bench pipeline`: the real worker, in its own process, through the real broker and Redis.

Per run: fresh topics, group and cache keys; the worker (``python -m streams worker``, one or
several in one group) starts, and the time until ``/readyz`` and until it holds partitions is
recorded; then the plan is published (a burst, or open loop at ``rate`` listings/s) and the run ends
when every listing and malformed event has its attribute event or dead letter. Reported: listings/s
and images inferred/s over the publish-to-last-output window, latency quantiles from each listing's
event time to its output's broker timestamp, the cache hit ratio, the model's busy share and mean
batch, the worker's CPU by thread group, peak RSS, and the CPU other processes took meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streams.config import settings_env
from streams.embedded import free_port
from streams.perf.processes import BenchError, Watched, cpu_cores, metric_delta
from streams.perf.procfs import CpuWindow
from streams.perf.rig import Collected, Rig, RunTopics, collecting, wait_outputs
from streams.perf.workload import Catalog, Plan, plan, warm_keys, warm_up_plan

STEADY_AFTER_S = 2.0
PROGRAMS = {"worker": ["-m", "streams", "worker"], "naive": ["-m", "streams.perf.naive"]}


def quantiles(values: list[float]) -> dict[str, float]:
    """p50, p95, p99 and max of ``values`` (seconds, 3 decimals); zeros when empty."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 3)}


def worker_env(rig: Rig, run_env: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The worker's variables: the user's settings, this rig's endpoints and run, then ``overrides``."""
    env = settings_env(rig.kafka_settings())
    env |= dict(run_env)
    env |= {
        "SWATCH_FETCH_ALLOW_NETWORKS": '["127.0.0.0/8"]',
        "SWATCH_LOG_LEVEL": "WARNING",
        "SWATCH_WORKER_DRAIN_TIMEOUT_S": "5",
    }
    env |= dict(overrides)
    return env


def run_pipeline(
    rig: Rig,
    workload: str,
    listings: int,
    *,
    rate: float | None = None,
    workers: int = 1,
    overrides: Mapping[str, str] | None = None,
    timeout_s: float = 600.0,
    label: str | None = None,
    program: str = "worker",
) -> dict[str, Any]:
    """One run of the worker (``program="naive"``: the baseline agent) on ``workload``; see the module docstring."""
    argv = PROGRAMS[program]
    if rig.catalog is None:
        raise BenchError("the rig is not started")
    run = rig.new_run(label or workload)
    work = plan(workload, rig.catalog, listings, run=run.run)
    procs = []
    try:
        for i in range(workers):
            port = free_port()
            env = worker_env(rig, run.env(), {**(overrides or {}), "SWATCH_WORKER_METRICS_PORT": str(port)})
            log = rig.scratch / f"{run.run}-worker-{i}.log"
            procs.append(Watched(f"{program}-{i}", argv, env, log, port))
        ready_s = [p.wait_ready() for p in procs]
        # the baseline's /readyz answers 200 only once it holds partitions
        joined_s = _wait_joined(procs, rig.settings.topics.partitions) if program == "worker" else max(ready_s)
        collected, before, after, cpu, finished, done = _measure(rig, run, procs, work, rate=rate, timeout_s=timeout_s)
        if not done:
            dead = [p for p in procs if not p.alive()]
            what = f"{len(collected.first)} of {work.outputs_expected} outputs after {timeout_s:.0f} s"
            raise (dead[0].failure(what) if dead else BenchError(what))
    finally:
        codes = [p.stop() for p in procs]
    seconds = max(1e-6, collected.last_output_s() - collected.publish_started)
    metrics_before = _summed([m for m, _ in before])
    metrics_after = _summed([m for m, _ in after])
    inferred = metric_delta(metrics_before, metrics_after, "swatch_images_inferred_total")
    if program == "naive":  # no metrics: it infers every image of every listing
        inferred = sum(len(r["image_urls"]) for r in work.records)
    lookups = metric_delta(metrics_before, metrics_after, "swatch_cache_lookups_total")
    hits = metric_delta(metrics_before, metrics_after, "swatch_cache_lookups_total{result=hit}")
    shared = metric_delta(metrics_before, metrics_after, "swatch_images_deduplicated_total")
    batches = metric_delta(metrics_before, metrics_after, "swatch_batch_size_count")
    batch_images = metric_delta(metrics_before, metrics_after, "swatch_batch_size_sum")
    model_s = metric_delta(metrics_before, metrics_after, "swatch_inference_seconds_sum")
    cores = cpu_cores(
        _summed([c for _, c in before]), _summed([c for _, c in after]), finished - collected.publish_started
    )
    latencies = collected.latencies_s(run.topics.attributes)
    steady = _steady_rate(sorted(ts for _, ts in collected.first.values()))
    result = {
        "benchmark": "pipeline" if program == "worker" else "baseline",
        "workload": workload,
        "rate": rate,
        "workers": workers,
        "listings": len(work.records),
        "unique_images": work.unique_images,
        "outputs": len(collected.first),
        "dead_letters": sum(1 for t, _ in collected.first.values() if t == run.topics.dlq),
        "seconds": round(seconds, 2),
        "listings_per_s": round(len(work.records) / seconds, 1),
        "steady_outputs_per_s": round(steady, 1),  # between the 10th and the 90th percentile output
        "images_inferred": int(inferred),
        "images_inferred_per_s": round(inferred / seconds, 1),
        "latency_s": quantiles(latencies),
        # without the listings sent in the first 2 s: about half the runs on the embedded broker
        # stall 0.5-0.9 s once, right at the start (BENCHMARKS.md)
        "latency_steady_s": quantiles(collected.latencies_s(run.topics.attributes, after_s=STEADY_AFTER_S)),
        "cache_hit_ratio": round(hits / lookups, 3) if lookups else 0.0,
        "images_shared_in_flight": int(shared),
        "model_busy_share": round(model_s / workers / seconds, 3),
        "mean_batch": round(batch_images / batches, 1) if batches else 0.0,
        "worker_cpu_cores": cores,
        "worker_peak_rss_mb": round(max(p.peak_rss_mb for p in procs), 1),
        "ready_s": round(max(ready_s), 2),
        "joined_s": round(joined_s, 2),
        "exit_codes": codes,
        "cpu": cpu,
        "settings": dict(overrides or {}),
        "memory_samples": _downsampled(procs[0].samples, 400),
        "latency_timeline": collected.timeline(run.topics.attributes, max(1.0, seconds / 300)),
    }
    if rate is not None:
        result["achieved_rate"] = round(
            len(work.records) / max(1e-6, collected.publish_finished - collected.publish_started), 1
        )
    return result


def _measure(
    rig: Rig, run: RunTopics, procs: list[Watched], work: Plan, *, rate: float | None, timeout_s: float
) -> tuple[Collected, list[Any], list[Any], dict[str, float], float, bool]:
    """Warm up, then publish ``work`` and wait for its outputs, with the counters read around it."""
    collected = Collected()
    alive = lambda: all(p.alive() for p in procs)  # noqa: E731
    with collecting(rig, [run.topics.attributes, run.topics.dlq], collected):
        # A few listings whose image is missing (404) go first and are not counted: the consumer's
        # first fetch after joining (offsets, then the first batch) took 0.5-0.7 s, a start-up cost
        # that is not the steady latency measured here.
        warm = warm_up_plan(rig.catalog or Catalog([], "", Path()), run.run)
        rig.publish(run, warm, None, collected)
        if not wait_outputs(collected, warm.outputs_expected, 60, alive=alive):
            raise procs[0].failure("no output for the warm-up listings within 60 s")
        before = [(p.metrics(), p.cpu()) for p in procs]
        window = CpuWindow()
        window.start()
        rig.publish(run, work, rate, collected)
        done = wait_outputs(collected, work.outputs_expected + warm.outputs_expected, timeout_s, alive=alive)
        finished = time.time()
        cpu = window.stop()
        after = [(p.metrics(), p.cpu()) for p in procs]
    for key in warm_keys(warm):
        collected.first.pop(key, None)
        collected.sent_ms.pop(key, None)
    return collected, before, after, cpu, finished, done


def _steady_rate(times_ms: list[int]) -> float:
    """Outputs per second between the 10th and the 90th percentile output (no ramp-up, no tail)."""
    if len(times_ms) < 10:
        return 0.0
    first, last = len(times_ms) // 10, len(times_ms) * 9 // 10
    return (last - first) / max(1e-3, (times_ms[last] - times_ms[first]) / 1000)


def _wait_joined(procs: list[Watched], partitions: int, timeout_s: float = 90.0) -> float:
    """Seconds from the first start until the workers hold every partition between them."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = sum(p.metrics().get("swatch_assigned_partitions", 0.0) for p in procs)
        if held >= partitions:
            return time.monotonic() - min(p.started for p in procs)
        for p in procs:
            if not p.alive():
                raise p.failure("stopped before joining the group")
        if time.monotonic() > deadline:
            raise BenchError(f"the workers hold {held:.0f} of {partitions} partitions after {timeout_s:.0f} s")
        time.sleep(0.1)


def _downsampled(samples: list[tuple[float, float, int]], most: int) -> list[list[float]]:
    """At most ``most`` (seconds, RSS MB, descriptors) samples, evenly spaced."""
    step = max(1, len(samples) // most)
    return [[round(t, 1), round(rss, 1), fds] for t, rss, fds in samples[::step]]


def _summed(maps: list[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in maps:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + v
    return out
