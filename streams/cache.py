"""Redis as an accelerator: predictions by image hash and model id, and the last published listing version.

Every call has a timeout, and every Redis failure is logged, counted and treated as a miss (or, for
the version store, as "unknown"): the worker fails open and keeps tagging. After a failure the
cache stays out of the way for a short, growing back-off instead of making every listing wait for
another timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streams.config import RedisSettings
from streams.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

T = TypeVar("T")
Probabilities = dict[str, list[float]]

# Store the larger version only: concurrent workers never move a listing's version backwards.
_MAX_VERSION = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


class _Breaker:
    """Skip Redis for a while after a failure: 0.5 s, doubling up to 30 s, reset by a success."""

    def __init__(self) -> None:
        self.failures = 0
        self.open_until = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self.open_until

    def failed(self) -> None:
        self.failures += 1
        self.open_until = time.monotonic() + min(30.0, 0.5 * 2 ** (self.failures - 1))

    def succeeded(self) -> None:
        self.failures = 0
        self.open_until = 0.0


class RedisStore:
    """The worker's Redis: prediction cache and version store, sharing one client and one breaker."""

    def __init__(self, url: str | None, settings: RedisSettings, model_id: str, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.model_id = model_id
        self.metrics = metrics
        self.timeout_s = settings.timeout_ms / 1000
        self._client: aioredis.Redis | None = None
        if url:
            self._client = aioredis.Redis.from_url(
                url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry_on_timeout=False,
                health_check_interval=30,
            )
        self._breaker = _Breaker()
        self._versions: OrderedDict[str, int] = OrderedDict()  # local memory of published versions
        self._versions_max = 100_000

    @property
    def enabled(self) -> bool:
        """Whether a Redis URL is configured at all."""
        return self._client is not None

    def prediction_key(self, content_hash: str) -> str:
        """Cache key: prefix, model id and image hash (a new model never reads an old model's answer)."""
        return f"{self.settings.key_prefix}{self.model_id}:{content_hash}"

    def version_key(self, listing_id: str) -> str:
        """Key of a listing's last published version."""
        return f"{self.settings.version_prefix}{listing_id}"

    async def get_predictions(self, hashes: Sequence[str]) -> dict[str, Probabilities]:
        """Cached probabilities for the hashes that have them; errors count as misses."""
        if not hashes:
            return {}

        async def run(client: aioredis.Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for h in hashes:
                    pipe.get(self.prediction_key(h))
                return list(await pipe.execute())

        raw = await self._call("get", run)
        if raw is None:
            self.metrics.cache.labels("error").inc(len(hashes))
            return {}
        found: dict[str, Probabilities] = {}
        for h, value in zip(hashes, raw, strict=True):
            if value is None:
                continue
            try:
                found[h] = _decode(value)
            except (ValueError, TypeError) as exc:
                logger.warning("ignoring unreadable cache entry %s: %s", self.prediction_key(h), exc)
        self.metrics.cache.labels("hit").inc(len(found))
        self.metrics.cache.labels("miss").inc(len(hashes) - len(found))
        return found

    async def put_predictions(self, items: Mapping[str, Probabilities]) -> None:
        """Store probabilities with the configured TTL; a failure is counted and otherwise ignored."""
        if not items:
            return

        async def run(client: aioredis.Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for h, probs in items.items():
                    pipe.set(self.prediction_key(h), _encode(probs), ex=self.settings.ttl_s)
                return list(await pipe.execute())

        await self._call("set", run)

    async def last_version(self, listing_id: str) -> int | None:
        """The highest version published for a listing, from this process or Redis (None when unknown)."""
        local = self._versions.get(listing_id)

        async def run(client: aioredis.Redis) -> Any:
            return await client.get(self.version_key(listing_id))

        remote = await self._call("version_get", run)
        known = [v for v in (local, int(remote) if remote is not None else None) if v is not None]
        return max(known) if known else None

    def note_version(self, listing_id: str, version: int) -> None:
        """Remember locally that ``version`` of a listing is being published (kept as the maximum)."""
        self._versions[listing_id] = max(version, self._versions.get(listing_id, version))
        self._versions.move_to_end(listing_id)
        while len(self._versions) > self._versions_max:
            self._versions.popitem(last=False)

    async def record_version(self, listing_id: str, version: int) -> None:
        """Remember, here and in Redis for every worker, that ``version`` of a listing was published."""
        self.note_version(listing_id, version)

        async def run(client: aioredis.Redis) -> Any:
            return await client.eval(_MAX_VERSION, 1, self.version_key(listing_id), version, self.settings.ttl_s)

        await self._call("version_set", run)

    async def ping(self) -> bool:
        """Whether Redis answers now."""

        async def run(client: aioredis.Redis) -> Any:
            return await client.ping()

        return bool(await self._call("ping", run))

    async def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()

    async def _call(self, op: str, run: Callable[[aioredis.Redis], Awaitable[T]]) -> T | None:
        if self._client is None or self._breaker.open:
            return None
        try:
            result = await asyncio.wait_for(run(self._client), self.timeout_s * 2)
        except (RedisError, OSError, TimeoutError) as exc:
            self._breaker.failed()
            self.metrics.cache_errors.labels(op).inc()
            logger.warning(
                "redis %s failed (%s: %s); carrying on without the cache for %.1fs",
                op,
                type(exc).__name__,
                exc,
                self._breaker.open_until - time.monotonic(),
            )
            return None
        self._breaker.succeeded()
        return result


def _encode(probs: Probabilities) -> str:
    return json.dumps({k: [round(p, 6) for p in v] for k, v in probs.items()}, separators=(",", ":"))


def _decode(raw: bytes | str) -> Probabilities:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("expected an object of head -> probabilities")
    return {str(k): [float(p) for p in v] for k, v in data.items()}


def unique(items: Iterable[str]) -> list[str]:
    """Items in first-seen order without repeats."""
    return list(dict.fromkeys(items))
