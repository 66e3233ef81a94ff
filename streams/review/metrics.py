"""The review service's Prometheus metrics (its own registry; names start with ``swatch_review_``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class ReviewMetrics:
    """Every metric the review service exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.depth = Gauge(
            "swatch_review_queue_depth",
            "Pending items by review reason (an item can have several).",
            ["reason"],
            registry=r,
        )
        self.pending = Gauge("swatch_review_pending", "Pending items in the queue.", registry=r)
        self.requests = Counter(
            "swatch_review_requests",
            "Review requests consumed, by result (queued, superseded).",
            ["result"],
            registry=r,
        )
        self.removed = Counter(
            "swatch_review_items_removed",
            "Pending items removed by a listing event, by cause (newer, deleted).",
            ["cause"],
            registry=r,
        )
        self.invalid = Counter(
            "swatch_review_invalid_events",
            "Undecodable or invalid events dead-lettered, by topic.",
            ["topic"],
            registry=r,
        )
        self.retries = Counter(
            "swatch_review_event_retries",
            "Events retried because the registry, Redis or the broker was away, by topic (the agent waits).",
            ["topic"],
            registry=r,
        )
        self.decisions = Counter(
            "swatch_review_decisions", "Decisions published (rate: decisions per minute).", registry=r
        )
        self.agreement = Counter(
            "swatch_review_agreement",
            "Decided attributes by whether the reviewer agreed with the model (agree, disagree, not_visible, "
            "not_applicable).",
            ["attribute", "agreement"],
            registry=r,
        )
        self.decided_confidence = Histogram(
            "swatch_review_decided_confidence",
            "The model's top confidence of decided attributes.",
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.stale_decisions = Counter(
            "swatch_review_stale_decisions",
            "Decisions not published to search because a newer version was.",
            registry=r,
        )
        self.undos = Counter("swatch_review_undos", "Decisions withdrawn with undo.", registry=r)
        self.skips = Counter("swatch_review_skips", "Items skipped by a reviewer.", registry=r)
        self.lease_expiries = Counter(
            "swatch_review_lease_expiries", "Leases that ran out without a decision (abandoned items).", registry=r
        )
        self.errors = Counter(
            "swatch_review_errors",
            "Requests that failed inside the service (5xx), by operation.",
            ["operation"],
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
