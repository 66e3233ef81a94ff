"""The worker's Prometheus metrics (served with the probes by :mod:`streams.worker.health`).

Each worker has its own registry, so several workers in one process (the tests) do not share
counters. Every metric name starts with ``swatch_``; the README lists them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        self.url_cache = Counter(
            "swatch_url_cache",
            "Image URLs by what the URL cache did (fresh, revalidated, changed, miss, shared, refetch).",
            ["outcome"],
            registry=r,
        )
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
        self.processing = Histogram(
            "swatch_processing_latency_seconds",
            "From the worker consuming a listing to the broker's acknowledgement of its attribute event.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("swatch_in_flight_listings", "Listings consumed and not yet finished.", registry=r)
        self.paused = Gauge("swatch_paused_partitions", "Partitions paused for backpressure.", registry=r)
        self.pauses = Counter("swatch_backpressure_pauses", "Times the worker paused its partitions.", registry=r)
        self.assigned = Gauge("swatch_assigned_partitions", "Partitions assigned to this worker.", registry=r)
        self.commits = Counter("swatch_offset_commits", "Offset commits that the broker accepted.", registry=r)
        self.rebalances = Counter("swatch_rebalances", "Partition assignment changes, by kind.", ["kind"], registry=r)
        self.commit_failures = Counter(
            "swatch_offset_commit_failures",
            "Partitions whose offset commit failed (retried at the next commit), by error.",
            ["error"],
            registry=r,
        )
        self.internal_errors = Counter(
            "swatch_internal_errors", "Unexpected exceptions (bugs) while processing a listing.", registry=r
        )
        self.retries = Counter(
            "swatch_listing_retries",
            "Listings retried, by cause (broker, registry, model).",
            ["cause"],
            registry=r,
        )
        self.delivery_errors = Counter(
            "swatch_delivery_errors",
            "Outputs the broker did not acknowledge, by error code (retried, dead-lettered or fatal).",
            ["error"],
            registry=r,
        )
        self.version_gate = Counter(
            "swatch_version_gate", "Version checks before publishing, by result (pass, stale).", ["result"], registry=r
        )
        self.degraded = Gauge(
            "swatch_degraded", "1 while a component (broker, registry, redis) is failing.", ["component"], registry=r
        )

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when absent): for tests and the demo summary."""
        found = self.registry.get_sample_value(name, labels or {})
        return float(found or 0.0)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
