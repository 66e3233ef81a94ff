"""Helpers for review-service tests: settings, review requests, a `swatch review` subprocess, its API."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from streams.codec import Codec
from streams.combine import Decision, ImageOutcome
from streams.config import Settings
from streams.embedded import free_port
from streams.events import ListingContext, review_request
from streams.tail import read_topic
from tests.streams.worker_harness import env_for, make_settings

MODEL = "tiny@1+abc"


def review_settings(kafka_bootstrap: str, redis_url: str, prefix: str, **sections: dict[str, Any]) -> Settings:
    """Worker-harness settings plus a review section of this test's own (group, Redis prefix, port)."""
    review = {"group_id": f"{prefix}-review", "key_prefix": f"{prefix}:rv:", "port": free_port(), "lease_ttl_s": 30}
    review.update(sections.pop("review", {}))
    return make_settings(kafka_bootstrap, redis_url, prefix, review=review, **sections)


def request_record(
    listing_id: str,
    version: int = 1,
    *,
    uncertain: list[dict[str, Any]] | None = None,
    accepted: list[dict[str, Any]] | None = None,
    images: list[ImageOutcome] | None = None,
    group: str = "apparel",
    category: str = "women/clothing/dresses",
    model_id: str = MODEL,
) -> dict[str, Any]:
    """A review request as the worker builds it."""
    context = ListingContext(
        listing_id=listing_id,
        version=version,
        merchant_id="merchant-1",
        category_path=category.split("/"),
        title=f"listing {listing_id}",
        source_event_time=int(time.time() * 1000) - 1000,
        received_ms=int(time.time() * 1000),
    )
    if uncertain is None:
        uncertain = [low("colour", [("navy", 0.55), ("black", 0.30)])]
    decision = Decision(group=group, attributes=accepted or [], uncertain=uncertain)
    images = images or [ImageOutcome(f"http://127.0.0.1:9/{listing_id}.png", "TAGGED", content_hash="a" * 64)]
    return review_request(context, model_id, decision, images)


def low(
    name: str, candidates: list[tuple[str, float]], reason: str = "LOW_CONFIDENCE", declared: str | None = None
) -> dict[str, Any]:
    """An uncertain attribute."""
    return {
        "name": name,
        "candidates": [{"value": v, "confidence": c} for v, c in candidates],
        "threshold": 0.8,
        "reason": reason,
        "declared_value": declared,
    }


def model_value(name: str, value: str, confidence: float = 0.95) -> dict[str, Any]:
    """An accepted model attribute."""
    return {
        "name": name,
        "value": value,
        "confidence": confidence,
        "source": "MODEL",
        "declared_value": None,
        "conflicts_with_declared": False,
    }


def produce(settings: Settings, topic: str, schema: str, *records: dict[str, Any]) -> None:
    """Encode and send records (keyed by listing id) to ``topic``."""
    codec = Codec()
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "enable.idempotence": True})
    for record in records:
        producer.produce(topic, key=record["listing_id"].encode(), value=codec.encode(schema, record))
    assert producer.flush(15) == 0


def produce_raw(settings: Settings, topic: str, key: bytes, value: bytes) -> None:
    """Send raw bytes."""
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    producer.produce(topic, key=key, value=value)
    assert producer.flush(15) == 0


def read_all(
    settings: Settings, topic: str, schema: str, *, expect: int, timeout_s: float = 20.0
) -> list[dict[str, Any]]:
    """Read ``topic`` from the start until ``expect`` records arrived (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = [r.value for r in read_topic(settings, topic, schema=schema, idle_timeout_s=1.0)]
        if len(records) >= expect or time.monotonic() >= deadline:
            return records
        time.sleep(0.3)


@dataclass
class Api:
    """The review service's JSON API as one reviewer."""

    base: str
    reviewer: str | None = "alice"
    header: str = "X-Forwarded-User"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One request; returns status and decoded JSON (or bytes for non-JSON)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.reviewer:
            request.add_header(self.header, self.reviewer)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw, status, kind = response.read(), response.status, response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw, status, kind = exc.read(), exc.code, exc.headers.get("Content-Type", "")
        return status, (json.loads(raw) if "json" in kind else raw)

    def get(self, path: str) -> Any:
        """GET expecting 200."""
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """POST a JSON body."""
        return self.call("POST", path, body or {})

    def as_(self, reviewer: str | None) -> Api:
        """The same API as another reviewer."""
        return Api(self.base, reviewer, self.header)


@dataclass
class ReviewProcess:
    """A running `swatch review`."""

    process: subprocess.Popen[bytes]
    api: Api
    log: Path

    def log_tail(self) -> str:
        """The end of its log."""
        return self.log.read_text(errors="replace")[-4000:]


def review_env(settings: Settings) -> dict[str, str]:
    """SWATCH_* variables for a review subprocess with these settings."""
    env = env_for(settings)
    r = settings.review
    env.update(
        {
            "SWATCH_REVIEW_GROUP_ID": r.group_id,
            "SWATCH_REVIEW_KEY_PREFIX": r.key_prefix,
            "SWATCH_REVIEW_PORT": str(r.port),
            "SWATCH_REVIEW_HOST": r.host,
            "SWATCH_REVIEW_LEASE_TTL_S": str(r.lease_ttl_s),
            "SWATCH_REVIEW_BEHIND_PROXY": "true" if r.behind_proxy else "false",
            "SWATCH_REVIEW_EXPLAIN": "true" if r.explain else "false",
            "SWATCH_LOG_LEVEL": "INFO",
        }
    )
    if settings.model.dir:
        env["SWATCH_MODEL_DIR"] = str(settings.model.dir)
    if settings.registry.url:
        env["SWATCH_REGISTRY_URL"] = settings.registry.url
    return env


@contextlib.contextmanager
def running_review(settings: Settings, log_dir: Path, *, ready_timeout_s: float = 60.0) -> Iterator[ReviewProcess]:
    """Start `swatch review` and wait until /readyz answers 200; stop it (SIGTERM) afterwards."""
    log = log_dir / f"review-{settings.review.port}.log"
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streams", "review"],
        env=review_env(settings),
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=log_dir,  # the service must leave nothing in its working directory
    )
    api = Api(f"http://127.0.0.1:{settings.review.port}")
    running = ReviewProcess(process, api, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise AssertionError(f"swatch review exited with {process.returncode}:\n{running.log_tail()}")
            with contextlib.suppress(OSError):
                if api.call("GET", "/readyz")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"swatch review not ready in {ready_timeout_s} s:\n{running.log_tail()}")
            time.sleep(0.3)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        handle.close()


def wait_for(predicate: Any, timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; returns its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def read_for(
    settings: Settings, topic: str, schema: str, listing_id: str, *, expect: int, timeout_s: float = 20.0
) -> list[dict[str, Any]]:
    """The records of one listing on ``topic`` once ``expect`` of them arrived (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        mine = [r for r in read_all(settings, topic, schema, expect=0, timeout_s=0) if r["listing_id"] == listing_id]
        if len(mine) >= expect:
            return mine
        time.sleep(0.3)
    return mine
