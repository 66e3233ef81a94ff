"""The Redis store against a real redis-server: round trips, namespaced versions, and failing open."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streams.cache import FORMAT, Cached, RedisStore, rounded
from streams.config import RedisSettings
from streams.metrics import WorkerMetrics
from tests.chaos.harness import RedisServer

pytestmark = pytest.mark.integration

PROBS = {"apparel.colour": [0.1, 0.9]}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path).start()
    yield redis
    redis.stop()


def _store(url: str, namespace: str = "", **kwargs: object) -> tuple[RedisStore, WorkerMetrics, list[str | None]]:
    metrics = WorkerMetrics()
    states: list[str | None] = []
    settings = RedisSettings(url=url, timeout_ms=200)
    store = RedisStore(url, settings, "m@1", metrics, version_namespace=namespace, on_state=states.append)
    return store, metrics, states


def test_predictions_and_versions_round_trip_per_namespace(server: RedisServer) -> None:
    async def main() -> None:
        store, metrics, _ = _store(server.url, "deployment-a-attributes")
        other, _, _ = _store(server.url, "deployment-b-attributes")
        await store.put_predictions({"h1": {"apparel.colour": [0.1234567891, 0.8765432109]}}, by="L1@1")
        await store.put_predictions({"h1": PROBS}, by="L9@9")  # the first answer is kept
        assert await store.get_predictions(["h1", "h2"]) == {
            "h1": Cached({"apparel.colour": [0.123457, 0.876543]}, by="L1@1")
        }
        assert metrics.value("swatch_cache_lookups_total", {"result": "hit"}) == 1
        await store.record_version("L1", 3)
        await store.record_version("L1", 2)  # the store keeps the maximum
        assert await store.last_version("L1") == 3
        assert await other.last_version("L1") is None, "another deployment's versions are not ours"
        assert store.version_key("L1") == "swatch:ver:deployment-a-attributes:L1"
        await store.close()
        await other.close()

    asyncio.run(main())


def test_redis_down_is_a_miss_and_caching_resumes_within_seconds_of_its_return(server: RedisServer) -> None:
    async def main() -> float:
        store, metrics, states = _store(server.url)
        await store.put_predictions({"h1": PROBS})
        server.sigkill()
        assert await store.get_predictions(["h1"]) == {}, "fail open: a miss"
        assert await store.last_version("L1") is None
        for _ in range(80):  # an 8 s outage: back-offs grow to their cap
            await store.get_predictions(["h1"])
            await asyncio.sleep(0.1)
        assert states and states[0] is not None and metrics.value("swatch_cache_errors_total", {"op": "get"}) >= 1
        server.start()
        back = time.monotonic()
        await store.put_predictions({"h1": PROBS})  # an empty Redis after the restart
        while not await store.get_predictions(["h1"]):
            await store.put_predictions({"h1": PROBS})
            await asyncio.sleep(0.05)
            assert time.monotonic() - back < 10, "caching did not resume"
        assert states[-1] is None, "the store said Redis is back"
        await store.close()
        return time.monotonic() - back

    resumed = asyncio.run(main())
    assert resumed < 3.0, f"caching resumed {resumed:.1f}s after Redis came back"


def _first_byte(client: redis.Redis, key: str) -> bytes:
    value = client.get(key)
    assert isinstance(value, bytes)
    return value[:1]


def test_entries_are_written_compact_and_old_json_entries_still_read(server: RedisServer) -> None:
    """A worker of this version reads what older workers wrote into the same Redis, and writes format 1."""
    old = {"apparel.colour": [0.1234567891, 0.8765432109], "apparel.type": [1.0, 0.0, 0.5]}
    fresh = rounded(old)

    async def main() -> None:
        store, metrics, _ = _store(server.url)
        raw = redis.Redis.from_url(server.url)
        raw.set(store.prediction_key("old"), json.dumps({"p": old, "by": "L1@1"}, separators=(",", ":")))
        raw.set(store.prediction_key("older"), json.dumps(old))
        raw.set(store.prediction_key("broken"), b"\x01\x00")
        await store.put_predictions({"new": old, "old": PROBS}, by="L2@1")
        assert _first_byte(raw, store.prediction_key("new")) == bytes([FORMAT])
        assert _first_byte(raw, store.prediction_key("old")) == b"{", "SET NX: the first answer stays as written"
        assert await store.get_predictions(["new", "old", "older", "broken"]) == {
            "new": Cached(fresh, by="L2@1"),
            "old": Cached(fresh, by="L1@1"),
            "older": Cached(fresh),
        }
        assert metrics.value("swatch_cache_lookups_total", {"result": "miss"}) == 1, "unreadable is a miss"
        raw.close()
        await store.close()

    asyncio.run(main())
