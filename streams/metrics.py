"""The worker's Prometheus metrics and its HTTP endpoints: /metrics, /healthz (loop alive), /readyz.

Each worker has its own registry, so several workers in one process (the tests) do not share
counters. Every metric name starts with ``swatch_``; the README lists them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class WorkerMetrics:
    """Every metric the worker exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter("swatch_events_consumed", "Records consumed, by topic.", ["topic"], registry=r)
        self.produced = Counter(
            "swatch_events_produced", "Records acknowledged by the broker, by topic.", ["topic"], registry=r
        )
        self.dead_letters = Counter("swatch_dead_letters", "Dead letters written, by reason.", ["reason"], registry=r)
        self.listings = Counter(
            "swatch_listings",
            "Listings finished, by result (tagged, review, no_usable_image, no_group, deleted, stale, dead_letter).",
            ["result"],
            registry=r,
        )
        self.fetches = Counter("swatch_image_fetches", "Image downloads, by outcome.", ["outcome"], registry=r)
        self.fetch_seconds = Histogram(
            "swatch_image_fetch_seconds", "Image download time, retries included.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.cache = Counter(
            "swatch_cache_lookups", "Cache lookups by result (hit, miss, error).", ["result"], registry=r
        )
        self.cache_errors = Counter(
            "swatch_cache_errors", "Redis operations that failed (the worker carries on).", ["op"], registry=r
        )
        self.redis_skipped = Counter(
            "swatch_redis_skipped", "Redis calls skipped while backing off after a failure.", ["op"], registry=r
        )
        self.dedup = Counter(
            "swatch_images_deduplicated", "Images served by an identical image already being inferred.", registry=r
        )
        self.inferred = Counter("swatch_images_inferred", "Images run through the model.", registry=r)
        self.batch_size = Histogram("swatch_batch_size", "Images per model batch.", buckets=BATCH_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "swatch_inference_seconds", "Model time per batch.", buckets=FAST_BUCKETS, registry=r
        )
        self.end_to_end = Histogram(
            "swatch_end_to_end_latency_seconds",
            "From the listing's event time to the broker's acknowledgement of its attribute event.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("swatch_in_flight_listings", "Listings consumed and not yet finished.", registry=r)
        self.paused = Gauge("swatch_paused_partitions", "Partitions paused for backpressure.", registry=r)
        self.pauses = Counter("swatch_backpressure_pauses", "Times the worker paused its partitions.", registry=r)
        self.assigned = Gauge("swatch_assigned_partitions", "Partitions assigned to this worker.", registry=r)
        self.commits = Counter("swatch_offset_commits", "Offset commits that the broker accepted.", registry=r)
        self.rebalances = Counter("swatch_rebalances", "Partition assignment changes, by kind.", ["kind"], registry=r)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when absent): for tests and the demo summary."""
        found = self.registry.get_sample_value(name, labels or {})
        return float(found or 0.0)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class HealthServer:
    """/metrics, /healthz and /readyz on the worker's own event loop.

    /healthz answers 200 while the consume loop has turned within ``stall_after_s`` (a wedged
    loop cannot answer at all, which the probe's timeout catches); /readyz answers 200 once the
    model is loaded and partitions are assigned.
    """

    def __init__(
        self,
        metrics: WorkerMetrics,
        host: str,
        port: int,
        *,
        last_turn: Callable[[], float],
        ready: Callable[[], tuple[bool, str]],
        stall_after_s: float = 60.0,
    ) -> None:
        self.metrics = metrics
        self.host, self.port = host, port
        self._last_turn = last_turn
        self._ready = ready
        self._stall_after_s = stall_after_s
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Serve; returns the bound port (useful with port 0)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server  # aiohttp does not expose the bound port otherwise
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        age = time.monotonic() - self._last_turn()
        if age > self._stall_after_s:
            return web.json_response({"ok": False, "reason": f"consume loop stalled for {age:.0f}s"}, status=503)
        return web.json_response({"ok": True, "loop_age_s": round(age, 3)})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, reason = self._ready()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)
