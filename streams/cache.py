"""Redis as an accelerator: predictions by image hash and model id, and each listing's last published version.

The version rule itself (never publish an older version) lives in :mod:`streams.worker.gate`;
this module only stores the numbers.

Every call has a timeout, and every Redis failure is logged, counted and treated as a miss (or, for
the version store, as "unknown"): the worker fails open and keeps tagging. After a failure the
store stays out of the way for a short, growing back-off instead of making every listing wait for
another timeout.

Calls from concurrent listings are coalesced: lookups that arrive within a millisecond go to Redis
as one MGET, writes as one pipeline, so a burst of a few hundred listings costs a few round trips
on a handful of connections rather than a connection and a round trip each.

Predictions are stored in a compact binary format (see ``FORMAT`` below: head names, who computed
it, probabilities in millionths), exact to the 6 decimals the worker rounds to; the JSON entries
earlier versions wrote are read too.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from streams.config import RedisSettings
from streams.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")
Probabilities = dict[str, list[float]]
DECIMALS = 6  # probabilities are rounded once, when inferred, so a cached answer equals a fresh one


def rounded(probs: Mapping[str, Sequence[float]]) -> Probabilities:
    """Probabilities as the cache keeps them (and as the worker decides on them): rounded to 6 decimals."""
    return {str(k): [round(float(p), DECIMALS) for p in v] for k, v in probs.items()}


@dataclass(frozen=True)
class Cached:
    """A cached prediction and the listing version it was first computed for (``by``), when known.

    Knowing who computed it lets a redelivered listing report the same image outcome (TAGGED for
    its own inference, CACHE_HIT for someone else's) as the first time.
    """

    probabilities: Probabilities
    by: str | None = None


COALESCE_S = 0.001  # calls arriving within this window share one round trip
MAX_BATCH = 512  # callers per round trip
MAX_CONNECTIONS = 16


def version_key_prefix(version_prefix: str, namespace: str = "") -> str:
    """Prefix of the keys holding each listing's last published version, in a deployment's namespace.

    The namespace is the attribute topic, so deployments sharing a Redis never see each other's
    versions; the worker's cache and the review service both build their keys here.
    """
    return f"{version_prefix}{namespace}:" if namespace else version_prefix


# Store the larger version only: concurrent workers never move a listing's version backwards.
# KEYS: version keys; ARGV: one version per key, then the TTL in seconds.
MAX_VERSION_SCRIPT = """
for i, key in ipairs(KEYS) do
  local current = tonumber(redis.call('GET', key) or '-1')
  if tonumber(ARGV[i]) > current then
    redis.call('SET', key, ARGV[i], 'EX', ARGV[#KEYS + 1])
  end
end
return #KEYS
"""


BREAKER_BASE_S = 0.5
BREAKER_CAP_S = 2.0  # short, so the cache is back within a few seconds of Redis (one cheap failed call per cap)


class _Breaker:
    """Skip Redis for a while after a failure: 0.5 s, doubling up to 2 s, reset by a success."""

    def __init__(self) -> None:
        self.failures = 0
        self.open_until = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self.open_until

    def failed(self) -> None:
        if self.open:
            return  # concurrent failures of one outage count once
        self.failures += 1
        self.open_until = time.monotonic() + min(BREAKER_CAP_S, BREAKER_BASE_S * 2 ** (self.failures - 1))

    def succeeded(self) -> None:
        self.failures = 0
        self.open_until = 0.0


class _Coalescer(Generic[V]):
    """Merges the requests of concurrent callers into one call of ``flush`` per short window.

    Each caller passes a mapping (key -> argument, e.g. hash -> probabilities, or hash -> None for
    a lookup) and gets back ``flush``'s answers for its own keys, or None when the call failed.
    """

    def __init__(self, flush: Callable[[dict[str, Any]], Awaitable[dict[str, V] | None]]) -> None:
        self._flush = flush
        self._pending: list[tuple[dict[str, Any], asyncio.Future[dict[str, V] | None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, items: Mapping[str, Any]) -> dict[str, V] | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, V] | None] = loop.create_future()
        self._pending.append((dict(items), future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        await asyncio.sleep(COALESCE_S)
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            merged: dict[str, Any] = {}
            for items, _ in batch:
                merged.update(items)
            try:
                answers = await self._flush(merged)
            except Exception as exc:  # never strand a caller
                logger.exception("redis batch failed")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for items, future in batch:
                if not future.done():
                    future.set_result(None if answers is None else {k: answers[k] for k in items if k in answers})


class RedisStore:
    """The worker's Redis: prediction cache and version store, sharing one client and one breaker."""

    def __init__(
        self,
        url: str | None,
        settings: RedisSettings,
        model_id: str,
        metrics: WorkerMetrics,
        *,
        version_namespace: str = "",
        on_state: Callable[[str | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.model_id = model_id
        self.version_namespace = version_namespace
        self.metrics = metrics
        self.timeout_s = settings.timeout_ms / 1000
        self._client: aioredis.Redis | None = None
        if url:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_CONNECTIONS,
                timeout=self.timeout_s,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                health_check_interval=30,
                # After a Redis restart every pooled connection is dead: retry once on a fresh one
                # instead of failing (and backing off) once per stale connection.
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[RedisConnectionError],
            )
            self._client = aioredis.Redis(connection_pool=pool)
        self._breaker = _Breaker()
        self._on_state = on_state or (lambda problem: None)  # told "why" when Redis starts failing, None when back
        self._failing = False
        self._lookups: _Coalescer[Cached] = _Coalescer(self._get_many)
        self._writes: _Coalescer[None] = _Coalescer(self._set_many)
        self._version_reads: _Coalescer[int] = _Coalescer(self._versions_many)
        self._version_writes: _Coalescer[None] = _Coalescer(self._record_many)

    @property
    def enabled(self) -> bool:
        """Whether a Redis URL is configured at all."""
        return self._client is not None

    def prediction_key(self, content_hash: str) -> str:
        """Cache key: prefix, model id and image hash (a new model never reads an old model's answer)."""
        return f"{self.settings.key_prefix}{self.model_id}:{content_hash}"

    def version_key(self, listing_id: str) -> str:
        """Key of a listing's last published version, in this deployment's namespace (its output topic).

        Two deployments sharing a Redis with different topics never see each other's versions.
        """
        return version_key_prefix(self.settings.version_prefix, self.version_namespace) + listing_id

    # -- predictions ----------------------------------------------------------------------------

    async def get_predictions(self, hashes: Sequence[str]) -> dict[str, Cached]:
        """Cached predictions for the hashes that have them; errors count as misses."""
        if not hashes:
            return {}
        found = await self._lookups.submit(dict.fromkeys(hashes))
        if found is None:
            self.metrics.cache.labels("error").inc(len(hashes))
            return {}
        self.metrics.cache.labels("hit").inc(len(found))
        self.metrics.cache.labels("miss").inc(len(hashes) - len(found))
        return found

    async def put_predictions(self, items: Mapping[str, Probabilities], by: str | None = None) -> None:
        """Store probabilities computed for listing version ``by`` with the configured TTL.

        The first answer for an image is kept (SET NX): which listing computed it stays stable, so
        repeats of that listing report the same outcome. A failure is counted and otherwise ignored.
        """
        if items:
            await self._writes.submit({h: Cached(rounded(p), by) for h, p in items.items()})

    async def _get_many(self, hashes: dict[str, Any]) -> dict[str, Cached] | None:
        keys = list(hashes)

        async def run(client: aioredis.Redis) -> list[Any]:
            return list(await client.mget([self.prediction_key(h) for h in keys]))

        raw = await self._call("get", run)
        if raw is None:
            return None
        found: dict[str, Cached] = {}
        for h, value in zip(keys, raw, strict=True):
            if value is None:
                continue
            try:
                found[h] = _decode(value)
            except (ValueError, TypeError) as exc:
                logger.warning("ignoring unreadable cache entry %s: %s", self.prediction_key(h), exc)
        return found

    async def _set_many(self, items: dict[str, Any]) -> dict[str, None] | None:
        async def run(client: aioredis.Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for h, cached in items.items():
                    pipe.set(self.prediction_key(h), _encode(cached), ex=self.settings.ttl_s, nx=True)
                return list(await pipe.execute())

        return None if await self._call("set", run) is None else {}

    # -- listing versions -----------------------------------------------------------------------

    async def last_version(self, listing_id: str) -> int | None:
        """The highest version any worker published for a listing (None when unknown or Redis fails)."""
        return (await self._version_reads.submit({listing_id: None}) or {}).get(listing_id)

    async def record_version(self, listing_id: str, version: int) -> None:
        """Remember in Redis, for every worker, that ``version`` of a listing was published (keeps the maximum)."""
        await self._version_writes.submit({listing_id: version})

    async def _versions_many(self, ids: dict[str, Any]) -> dict[str, int] | None:
        keys = list(ids)

        async def run(client: aioredis.Redis) -> list[Any]:
            return list(await client.mget([self.version_key(i) for i in keys]))

        raw = await self._call("version_get", run)
        if raw is None:
            return None
        return {i: int(v) for i, v in zip(keys, raw, strict=True) if v is not None}

    async def _record_many(self, versions: dict[str, Any]) -> dict[str, None] | None:
        keys = [self.version_key(i) for i in versions]
        args = [*versions.values(), self.settings.ttl_s]

        async def run(client: aioredis.Redis) -> Any:
            return await client.eval(MAX_VERSION_SCRIPT, len(keys), *keys, *args)

        return None if await self._call("version_set", run) is None else {}

    # -- plumbing -------------------------------------------------------------------------------

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
        if self._client is None:
            return None
        if self._breaker.open:
            self.metrics.redis_skipped.labels(op).inc()
            return None
        try:
            result = await asyncio.wait_for(run(self._client), self.timeout_s * 2)
        except (RedisError, OSError, TimeoutError) as exc:
            self._breaker.failed()
            if not self._failing:
                self._failing = True
                self._on_state(f"{op}: {type(exc).__name__}: {exc}")
            self.metrics.cache_errors.labels(op).inc()
            logger.warning(
                "redis %s failed (%s: %s); carrying on without Redis for %.1fs",
                op,
                type(exc).__name__,
                exc,
                max(0.0, self._breaker.open_until - time.monotonic()),
            )
            return None
        self._breaker.succeeded()
        if self._failing:
            self._failing = False
            self._on_state(None)
        return result


# -- the prediction cache's values --------------------------------------------------------------
#
# Format 1, little-endian: u8 1 | u32 length of ``by`` (0xFFFFFFFF: None) | ``by`` in UTF-8 | u16 head
# count N | u16 length of the names | the head names in UTF-8, NUL-separated | N x u16 value counts |
# one i32 per probability, in millionths. Each entry names its heads: reading needs no taxonomy.
# Millionths are exact: round(p, 6) == k / 1e6 for k = round(p * 1e6) (both correctly rounded), so a
# cached answer equals a fresh one. What the format cannot hold (non-finite values or beyond +-2147,
# NUL in a name, over 65535 heads or values per head) is written as JSON, as old entries were; both
# are read.
FORMAT = 1
_NO_OWNER = 0xFFFFFFFF
_OWNER = struct.Struct("<BI")
_LAYOUT = struct.Struct("<HH")
_MAX_MILLIONTHS = 2**31 - 1


@functools.lru_cache(maxsize=64)
def _layout_bytes(names: tuple[str, ...], counts: tuple[int, ...]) -> bytes | None:
    """The layout part of an entry for these heads, or None when format 1 cannot hold them."""
    packed = "\0".join(names).encode()
    if (
        any("\0" in name for name in names)
        or len(names) > 0xFFFF
        or len(packed) > 0xFFFF
        or max(counts, default=0) > 0xFFFF
    ):
        return None
    return _LAYOUT.pack(len(names), len(packed)) + packed + struct.pack(f"<{len(counts)}H", *counts)


@functools.lru_cache(maxsize=64)
def _layout(raw: bytes) -> tuple[tuple[str, ...], tuple[int, ...], struct.Struct]:
    """Head names, value counts and the values' struct of a layout part."""
    heads, length = _LAYOUT.unpack_from(raw)
    names = tuple(raw[_LAYOUT.size : _LAYOUT.size + length].decode().split("\0")) if heads else ()
    counts = struct.unpack_from(f"<{heads}H", raw, _LAYOUT.size + length)
    if len(names) != heads:
        raise ValueError("the head names do not match the head count")
    return names, counts, struct.Struct(f"<{sum(counts)}i")


def _encode(cached: Cached) -> bytes:
    probs = cached.probabilities  # rounded already
    layout = _layout_bytes(tuple(probs), tuple(len(v) for v in probs.values()))
    try:
        flat = [round(p * 1e6) for values in probs.values() for p in values]
    except (OverflowError, ValueError):  # inf, NaN
        layout = None
    if layout is None or (flat and max(map(abs, flat)) > _MAX_MILLIONTHS):
        return json.dumps({"p": probs, "by": cached.by}, separators=(",", ":")).encode()
    owner = b"" if cached.by is None else cached.by.encode()
    head = _OWNER.pack(FORMAT, _NO_OWNER if cached.by is None else len(owner))
    return head + owner + layout + struct.pack(f"<{len(flat)}i", *flat)


def _decode(raw: bytes | str) -> Cached:
    if isinstance(raw, bytes) and raw[:1] == bytes([FORMAT]):
        try:
            return _decode_binary(raw)
        except struct.error as exc:
            raise ValueError(f"truncated entry: {exc}") from exc
    data = json.loads(raw)  # the format before 1
    if not isinstance(data, dict):
        raise ValueError("expected an object")
    if "p" in data:  # head keys always hold a dot ("group.attribute"), so "p" and "by" cannot clash
        by = data.get("by")
        return Cached(rounded(data["p"]), str(by) if by is not None else None)
    return Cached(rounded(data))  # written before entries said who computed them


def _decode_binary(raw: bytes) -> Cached:
    _, owner_length = _OWNER.unpack_from(raw)
    at = _OWNER.size + (0 if owner_length == _NO_OWNER else owner_length)
    by = None if owner_length == _NO_OWNER else raw[_OWNER.size : at].decode()
    heads, length = _LAYOUT.unpack_from(raw, at)
    end = at + _LAYOUT.size + length + 2 * heads
    names, counts, values = _layout(raw[at:end])
    if len(raw) - end != values.size:
        raise ValueError(f"{len(raw) - end} bytes of values, not {values.size}")
    flat = [k / 1e6 for k in values.unpack_from(raw, end)]
    probs: Probabilities = {}
    start = 0
    for name, count in zip(names, counts, strict=True):
        probs[name] = flat[start : start + count]
        start += count
    return Cached(probs, by)
