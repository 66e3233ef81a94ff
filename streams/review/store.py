"""The review queue's durable state, in Redis: pending items, filter indexes, leases, decisions.

Why Redis and not a Faust Table: on the embedded broker a Table restored wrong values after a
restart without an error (Tansu reports a partition's end offset as the first offset of its last
batch + 1), and auto-created changelogs made tables crash with ``PartitionsMismatch``. Redis is
already a dependency, survives a restart of every replica, and gives the two things the queue
needs atomically: a version check with the write (Lua scripts) and leases (``SET NX PX``).

Keys, under ``<prefix><review topic>:`` so deployments sharing a Redis stay apart:

- ``item:<listing>``: the pending review request (JSON); ``queue``: sorted set of pending
  listings by priority (conflicts first, then oldest); ``idx:<reason|attr|group>:<value>`` sets,
  and ``idxkeys`` (every index set, for the counts); ``itemidx:<listing>`` (the sets an item is in);
  ``hash:<sha256>``: pending listings showing that image;
- ``ver:<listing>``: the highest listing version seen (a delete at version v stores v + 0.5, so a
  late review request for v is refused and v + 1 is accepted); a request is also refused when a
  worker has published a newer version (the worker's version store, read in the same script);
- ``lease:<listing>`` (reviewer, with a TTL) and ``leases`` (sorted set by expiry, to count
  expiries exactly once across replicas);
- ``token:<decision id>``: a decision's answer, so a repeated submission is answered, not applied
  twice; ``history:<listing>`` and ``undo:<reviewer>`` (lists); ``skipped:<reviewer>`` (set).

Multi-key scripts assume one Redis (not Redis Cluster), as the worker's cache does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from streams.review.items import ReviewItem

# KEYS: none (names are built from ARGV[1], the prefix). ARGV: prefix, listing, version, item json,
# priority, the worker's published-version key, index names... Returns 1 when stored, 0 when a newer
# version is known here (a newer request, a listing event, a delete) or was published by a worker.
_UPSERT = """
local p, id, version = ARGV[1], ARGV[2], tonumber(ARGV[3])
local known = tonumber(redis.call('GET', p .. 'ver:' .. id) or '-1')
if version < known then return 0 end
if version < tonumber(redis.call('GET', ARGV[6]) or '-1') then return 0 end
local old = redis.call('SMEMBERS', p .. 'itemidx:' .. id)
for _, key in ipairs(old) do redis.call('SREM', key, id) end
redis.call('DEL', p .. 'itemidx:' .. id)
redis.call('SET', p .. 'item:' .. id, ARGV[4])
redis.call('SET', p .. 'ver:' .. id, ARGV[3])
redis.call('ZADD', p .. 'queue', tonumber(ARGV[5]), id)
for i = 7, #ARGV do
  local key = p .. ARGV[i]
  redis.call('SADD', key, id)
  redis.call('SADD', p .. 'itemidx:' .. id, key)
  if string.sub(ARGV[i], 1, 9) ~= 'idx:hash:' then redis.call('SADD', p .. 'idxkeys', key) end
end
return 1
"""

# ARGV: prefix, listing, newer-than version (the marker to store), remove items with version below it.
# Returns 1 when a pending item was removed.
_SUPERSEDE = """
local p, id, marker = ARGV[1], ARGV[2], tonumber(ARGV[3])
local known = tonumber(redis.call('GET', p .. 'ver:' .. id) or '-1')
if marker > known then redis.call('SET', p .. 'ver:' .. id, ARGV[3]) end
local raw = redis.call('GET', p .. 'item:' .. id)
if not raw then return 0 end
local item = cjson.decode(raw)
if tonumber(item['listing_version']) >= marker then return 0 end
for _, key in ipairs(redis.call('SMEMBERS', p .. 'itemidx:' .. id)) do redis.call('SREM', key, id) end
redis.call('DEL', p .. 'itemidx:' .. id, p .. 'item:' .. id)
redis.call('ZREM', p .. 'queue', id)
return 1
"""

# ARGV: prefix, listing, version. Removes the item only when it is still that version.
_REMOVE = """
local p, id = ARGV[1], ARGV[2]
local raw = redis.call('GET', p .. 'item:' .. id)
if not raw then return 0 end
if tonumber(cjson.decode(raw)['listing_version']) ~= tonumber(ARGV[3]) then return 0 end
for _, key in ipairs(redis.call('SMEMBERS', p .. 'itemidx:' .. id)) do redis.call('SREM', key, id) end
redis.call('DEL', p .. 'itemidx:' .. id, p .. 'item:' .. id)
redis.call('ZREM', p .. 'queue', id)
return 1
"""

# ARGV: prefix, listing, reviewer, ttl ms, now ms. Returns the holder after the call.
_LEASE = """
local p, id, who = ARGV[1], ARGV[2], ARGV[3]
local key = p .. 'lease:' .. id
local holder = redis.call('GET', key)
if holder and holder ~= who then return holder end
redis.call('SET', key, who, 'PX', tonumber(ARGV[4]))
redis.call('ZADD', p .. 'leases', tonumber(ARGV[5]) + tonumber(ARGV[4]), id)
return who
"""

# ARGV: prefix, listing, reviewer. Returns 1 when the reviewer's lease was released.
_RELEASE = """
local p, id = ARGV[1], ARGV[2]
if redis.call('GET', p .. 'lease:' .. id) ~= ARGV[3] then return 0 end
redis.call('DEL', p .. 'lease:' .. id)
redis.call('ZREM', p .. 'leases', id)
return 1
"""

# ARGV: prefix, now ms. Counts leases that ran out (each once, whichever replica sweeps first).
_SWEEP = """
local p = ARGV[1]
local due = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', ARGV[2], 'LIMIT', 0, 1000)
local expired = 0
for _, id in ipairs(due) do
  if redis.call('EXISTS', p .. 'lease:' .. id) == 0 then
    expired = expired + redis.call('ZREM', p .. 'leases', id)
  end
end
return expired
"""

# KEYS: the token. ARGV: the in-progress marker. Returns nil when claimed fresh; the stored state
# otherwise, and a "retry" state is claimed again (its decided_at kept) in the same step.
_CLAIM = """
local raw = redis.call('GET', KEYS[1])
if not raw then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', 60)
  return false
end
local state = cjson.decode(raw)
if state['status'] == 'retry' then
  redis.call('SET', KEYS[1], cjson.encode({status = 'in_progress', decided_at = state['decided_at']}), 'EX', 60)
end
return raw
"""

HISTORY_KEPT = 50
RETRY_MEMORY_S = 24 * 3600
UNDO_KEPT = 20
SKIP_TTL_S = 3600
CANDIDATE_LIMIT = 20_000  # items a filtered queue view considers


@dataclass(frozen=True)
class QueueFilter:
    """What the queue page and API filter by; None means any."""

    reason: str | None = None
    attribute: str | None = None
    group: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None

    def index_names(self) -> list[str]:
        """The index sets an item must be in."""
        names = []
        if self.reason:
            names.append(f"reason:{self.reason}")
        if self.attribute:
            names.append(f"attr:{self.attribute}")
        if self.group:
            names.append(f"group:{self.group}")
        return names

    def admits(self, item: ReviewItem) -> bool:
        """Whether the item's lowest confidence is in the range."""
        low = item.min_confidence
        if self.min_confidence is not None and low < self.min_confidence:
            return False
        return not (self.max_confidence is not None and low > self.max_confidence)


class ReviewStore:
    """Every Redis operation of the review service (see the module docstring for the keys)."""

    def __init__(self, client: aioredis.Redis, prefix: str, published_prefix: str = "") -> None:
        """``published_prefix`` + listing id is the worker's last published version of a listing."""
        self.client = client
        self.prefix = prefix
        self.published_prefix = published_prefix
        self._upsert = client.register_script(_UPSERT)
        self._supersede = client.register_script(_SUPERSEDE)
        self._remove = client.register_script(_REMOVE)
        self._lease = client.register_script(_LEASE)
        self._release = client.register_script(_RELEASE)
        self._sweep = client.register_script(_SWEEP)
        self._claim = client.register_script(_CLAIM)

    def key(self, name: str) -> str:
        """A key of this deployment."""
        return self.prefix + name

    # -- the queue -------------------------------------------------------------------------------

    async def upsert(self, item: ReviewItem) -> bool:
        """Queue the item unless a newer version (or a delete) of the listing is known; True when stored."""
        indexes = [f"idx:{n}" for n in item.index_names()]
        indexes += [f"idx:hash:{h}" for h in dict.fromkeys(item.usable_hashes)]
        args: list[str | int | float] = [self.prefix, item.listing_id, item.version, item.dumps(), item.priority]
        args += [self.published_prefix + item.listing_id, *indexes]
        return bool(await self._upsert(args=args))

    async def supersede(self, listing_id: str, version: int, *, deleted: bool) -> bool:
        """A listing event arrived: drop pending items of older versions (and of this one if deleted)."""
        marker = version + 0.5 if deleted else version
        return bool(await self._supersede(args=[self.prefix, listing_id, marker]))

    async def remove(self, listing_id: str, version: int) -> bool:
        """Take a decided item out of the queue, unless a newer version replaced it meanwhile."""
        return bool(await self._remove(args=[self.prefix, listing_id, version]))

    async def pending(self, listing_id: str) -> bool:
        """Whether the listing has a pending item (one round trip, nothing decoded)."""
        return bool(await self.client.exists(self.key(f"item:{listing_id}")))

    async def get(self, listing_id: str) -> ReviewItem | None:
        """The pending item of a listing."""
        raw = await self.client.get(self.key(f"item:{listing_id}"))
        return None if raw is None else ReviewItem.loads(raw)

    async def get_many(self, listing_ids: Sequence[str]) -> list[ReviewItem]:
        """The pending items of these listings, in order, skipping ones decided meanwhile."""
        if not listing_ids:
            return []
        raws = await self.client.mget([self.key(f"item:{i}") for i in listing_ids])
        return [ReviewItem.loads(r) for r in raws if r is not None]

    async def known_version(self, listing_id: str) -> float | None:
        """The highest version of the listing the service has seen (x.5: deleted at x)."""
        raw = await self.client.get(self.key(f"ver:{listing_id}"))
        return None if raw is None else float(raw)

    async def ordered(self, flt: QueueFilter, limit: int | None = None) -> list[str]:
        """Pending listings matching the filter's indexes, in review order (at most ``CANDIDATE_LIMIT``)."""
        limit = CANDIDATE_LIMIT if limit is None else limit
        names = flt.index_names()
        if not names:
            return [_text(v) for v in await self.client.zrange(self.key("queue"), 0, limit - 1)]
        members = await self.client.sinter([self.key(f"idx:{n}") for n in names])
        ids = [_text(m) for m in members]
        if not ids:
            return []
        scores = await self.client.zmscore(self.key("queue"), ids)
        ranked = sorted((s, i) for s, i in zip(scores, ids, strict=True) if s is not None)
        return [i for _, i in ranked[:limit]]

    async def page(self, offset: int, limit: int) -> list[str]:
        """Pending listings ``offset`` to ``offset + limit`` of the whole queue, in review order."""
        return [_text(v) for v in await self.client.zrange(self.key("queue"), offset, offset + limit - 1)]

    async def depth(self) -> int:
        """Pending items."""
        return int(await self.client.zcard(self.key("queue")))

    async def counts(self) -> dict[str, dict[str, int]]:
        """Pending items per reason, attribute and group (``{"reason": {"LOW_CONFIDENCE": 3}, ...}``)."""
        keys = sorted(_text(k) for k in await self.client.smembers(self.key("idxkeys")))
        if not keys:
            return {"reason": {}, "attr": {}, "group": {}}
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.scard(key)
            sizes = await pipe.execute()
        out: dict[str, dict[str, int]] = {"reason": {}, "attr": {}, "group": {}}
        for key, size in zip(keys, sizes, strict=True):
            kind, _, value = key[len(self.prefix) + len("idx:") :].partition(":")
            if int(size) and kind in out:
                out[kind][value] = int(size)
        return out

    async def sharing_image(self, content_hash: str) -> list[str]:
        """Pending listings that show an image with this content hash."""
        return sorted(_text(m) for m in await self.client.smembers(self.key(f"idx:hash:{content_hash}")))

    # -- leases ----------------------------------------------------------------------------------

    async def lease(self, listing_id: str, reviewer: str, ttl_s: float, now_ms: int) -> str:
        """Take or renew the lease on an item; returns who holds it now (``reviewer`` on success)."""
        holder = await self._lease(args=[self.prefix, listing_id, reviewer, int(ttl_s * 1000), now_ms])
        return _text(holder)

    async def holder(self, listing_id: str) -> str | None:
        """Who holds the item's lease, if anyone."""
        raw = await self.client.get(self.key(f"lease:{listing_id}"))
        return None if raw is None else _text(raw)

    async def holders(self, listing_ids: Sequence[str]) -> dict[str, str]:
        """The lease holders of these items (items without one are absent)."""
        if not listing_ids:
            return {}
        raws = await self.client.mget([self.key(f"lease:{i}") for i in listing_ids])
        return {i: _text(r) for i, r in zip(listing_ids, raws, strict=True) if r is not None}

    async def release(self, listing_id: str, reviewer: str) -> bool:
        """Give the lease back (only its holder can)."""
        return bool(await self._release(args=[self.prefix, listing_id, reviewer]))

    async def sweep_expired(self, now_ms: int) -> int:
        """Leases that ran out since the last sweep (counted once across replicas)."""
        return int(await self._sweep(args=[self.prefix, now_ms]))

    async def skip(self, listing_id: str, reviewer: str) -> None:
        """Remember for an hour that the reviewer skipped the item (their next item is another one)."""
        key = self.key(f"skipped:{reviewer}")
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(key, listing_id)
            pipe.expire(key, SKIP_TTL_S)
            await pipe.execute()

    async def skipped(self, reviewer: str) -> set[str]:
        """Items the reviewer skipped in the last hour."""
        return {_text(m) for m in await self.client.smembers(self.key(f"skipped:{reviewer}"))}

    # -- decisions -------------------------------------------------------------------------------

    async def claim_token(self, decision_id: str) -> dict[str, Any] | None:
        """Start a decision: None when the id is new (claimed now), else what is known of it.

        A finished decision answers with its result; one being applied ``{"status": "in_progress"}``;
        one whose last try failed ``{"status": "retry", "decided_at": ...}``, claimed again now.
        """
        raw = await self._claim(keys=[self.key(f"token:{decision_id}")], args=[json.dumps({"status": "in_progress"})])
        return None if raw is None else cast("dict[str, Any]", json.loads(raw))

    async def retry_token(self, decision_id: str, decided_at: int) -> None:
        """A try failed after it may have published: the retry must reuse ``decided_at`` (same event ids)."""
        value = json.dumps({"status": "retry", "decided_at": decided_at})
        await self.client.set(self.key(f"token:{decision_id}"), value, ex=RETRY_MEMORY_S)

    async def finish_token(self, decision_id: str, result: dict[str, Any], ttl_s: int) -> None:
        """Remember a decision's result for ``ttl_s``."""
        await self.client.set(self.key(f"token:{decision_id}"), json.dumps(result), ex=ttl_s)

    async def drop_token(self, decision_id: str) -> None:
        """Forget a decision that failed, so a retry applies it."""
        await self.client.delete(self.key(f"token:{decision_id}"))

    async def _push_capped(self, name: str, entry: dict[str, Any], kept: int) -> None:
        """Push ``entry`` on the list ``name`` (newest first) and keep its last ``kept`` entries."""
        key = self.key(name)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(key, json.dumps(entry))
            pipe.ltrim(key, 0, kept - 1)
            await pipe.execute()

    async def add_history(self, listing_id: str, entry: dict[str, Any]) -> None:
        """Append to the listing's decision history (newest first, the last 50)."""
        await self._push_capped(f"history:{listing_id}", entry, HISTORY_KEPT)

    async def history(self, listing_id: str) -> list[dict[str, Any]]:
        """The listing's decisions, newest first."""
        raws = await self.client.lrange(self.key(f"history:{listing_id}"), 0, HISTORY_KEPT - 1)
        return [json.loads(r) for r in raws]

    async def push_undo(self, reviewer: str, entry: dict[str, Any]) -> None:
        """Remember a decision the reviewer may undo (the last 20)."""
        await self._push_capped(f"undo:{reviewer}", entry, UNDO_KEPT)

    async def pop_undo(self, reviewer: str) -> dict[str, Any] | None:
        """The reviewer's last decision, taken off the undo stack."""
        raw = await self.client.lpop(self.key(f"undo:{reviewer}"))
        return None if raw is None else cast("dict[str, Any]", json.loads(cast("str | bytes", raw)))

    async def restore_undo(self, reviewer: str, entry: dict[str, Any]) -> None:
        """Put an entry back on top of the undo stack (its undo failed)."""
        await self.client.lpush(self.key(f"undo:{reviewer}"), json.dumps(entry))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
