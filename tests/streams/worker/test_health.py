"""The probes run on their own thread: a blocked event loop fails them instead of hanging them."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

from streams.metrics import WorkerMetrics
from streams.worker.app import metrics_host
from streams.worker.health import HealthServer, HealthState


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            body = response.read()
            return response.status, body if path == "/metrics" else json.loads(body)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_blocked_loop_fails_liveness_instead_of_timing_out() -> None:
    state = HealthState(loop_stall_s=0.3)
    server = HealthServer(WorkerMetrics(), state, "127.0.0.1", 0)

    async def main() -> None:
        await server.start()
        state.ready = True
        state.tick()
        assert _get(server.port, "/healthz")[0] == 200
        time.sleep(0.5)  # the event loop is blocked: nothing ticks, yet the probe answers
        status, body = _get(server.port, "/healthz")
        assert status == 503 and "event loop stalled" in body["problems"][0]
        await server.stop()

    asyncio.run(main())


def test_stuck_listings_and_partitions_fail_liveness() -> None:
    state = HealthState(stuck_after_s=60)
    state.tick()
    assert state.liveness()[0]
    state.oldest_in_flight_s = 61
    alive, body = state.liveness()
    assert not alive and "in flight for 61s" in body["problems"][0]
    state.oldest_in_flight_s = 0
    state.stuck_partitions = ("listings[3]",)
    alive, body = state.liveness()
    assert not alive and "listings[3]" in body["problems"][0]


def test_readiness_needs_no_partition_and_ends_with_draining_or_a_fatal_error() -> None:
    state = HealthState()
    assert not state.readiness()[0], "not ready while starting"
    state.ready = True
    state.failing("redis", "connection refused")
    ready, body = state.readiness()
    assert ready and body["degraded"] == {"redis": "connection refused"}, "a failing cache does not fail readiness"
    state.draining = True
    assert state.readiness() == (False, {"ready": False, "reason": "draining", "degraded": body["degraded"]})
    state.draining = False
    state.fatal = "WorkerError: boom"
    assert not state.readiness()[0] and not state.liveness()[0]


def test_metrics_and_unknown_paths() -> None:
    metrics = WorkerMetrics()
    metrics.consumed.labels("listings").inc()
    server = HealthServer(metrics, HealthState(), "127.0.0.1", 0)

    async def main() -> None:
        await server.start()
        status, body = _get(server.port, "/metrics")
        assert status == 200 and b'swatch_events_consumed_total{topic="listings"} 1.0' in body
        assert _get(server.port, "/nope")[0] == 404
        await server.stop()

    asyncio.run(main())


def test_probes_listen_on_loopback_outside_kubernetes(monkeypatch: Any) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert metrics_host(None) == "127.0.0.1"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert metrics_host(None) == "0.0.0.0"  # noqa: S104
    assert metrics_host("10.1.2.3") == "10.1.2.3"


def test_the_consumer_loop_reports_a_partition_whose_commit_is_stuck(monkeypatch: Any) -> None:
    from streams.config import Settings
    from streams.tracker import OffsetTracker
    from streams.worker import consumer as consumer_module
    from streams.worker.consumer import ConsumerLoop

    class Runner:
        def oldest_age(self) -> float:
            return 0.0

    monkeypatch.setattr(consumer_module, "OBSERVE_EVERY_S", 0.0)
    state = HealthState(stuck_after_s=0.05)
    tracker = OffsetTracker()
    loop = ConsumerLoop(
        Settings(kafka={"bootstrap": "127.0.0.1:9"}),
        None,  # type: ignore[arg-type]  # _observe needs no client
        runner=Runner(),  # type: ignore[arg-type]
        tracker=tracker,
        delivery=None,  # type: ignore[arg-type]
        metrics=WorkerMetrics(),
        health=state,
    )
    loop.assigned = {("listings", 0), ("listings", 1)}
    tracker.start(("listings", 0), 5)  # waits, and its position never moves
    loop._observe()
    time.sleep(0.1)
    loop._observe()
    assert state.stuck_partitions == ("listings[0]",), "an idle partition with nothing waiting is not stuck"
    assert not state.liveness()[0]
    tracker.finish(("listings", 0), 5)
    tracker.mark_committed({("listings", 0): 6})
    loop._observe()
    assert state.stuck_partitions == () and state.liveness()[0]
