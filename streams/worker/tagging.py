"""A listing's images: fetch, hash, share identical ones in flight, cache, preprocess, micro-batch.

Written against three small protocols (an image source, a prediction store, a batcher) so that it
runs in a unit test with fakes. Failures of an image (unreachable, hostile, not an image, does not
decode) are outcomes of that image; a failure of the model is :class:`ModelError`, which the
caller retries and finally dead-letters, because no image of the batch is at fault.

Repeats give the same answer: probabilities are rounded when inferred, exactly as the cache keeps
them, and every prediction remembers the listing version it was computed for. An image is
``TAGGED`` for the listing version whose inference produced it and ``CACHE_HIT`` for every other
one (a cached answer, or one shared from an identical image in flight), so a redelivered listing
reports what it reported the first time.

An image source with a URL cache may vouch for an image by its hash alone, without bytes. That is
all the tagger needs when the prediction cache knows the hash; when it does not (evicted, expired,
Redis down), the URL is fetched again with ``need_bytes=True`` and the image goes on from there,
ending as that refetch ends (its failure, if it fails): an image is never lost for want of bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import torch

from streams.batcher import PrepareError
from streams.cache import Cached, rounded
from streams.combine import ImageOutcome
from streams.errors import SwatchError
from streams.images import FetchOutcome, FetchResult
from streams.metrics import WorkerMetrics
from tagger.preprocess import ImageError

logger = logging.getLogger(__name__)

Probabilities = dict[str, list[float]]


class ModelError(SwatchError):
    """The model failed on a batch; the listings in it are retried, then dead-lettered (``model_failed``)."""


class ImageSource(Protocol):
    """Fetches one image; never raises for bad URLs or hosts (the failure is the result's outcome)."""

    async def start(self) -> None:
        """Open connections (inside the event loop that will fetch)."""

    async def close(self) -> None:
        """Close connections."""

    async def fetch(self, url: str, *, need_bytes: bool = False) -> FetchResult:
        """Download ``url``; an ``OK`` result may carry only the hash unless ``need_bytes``."""


class PredictionStore(Protocol):
    """The prediction cache; fails open (errors are misses)."""

    async def get_predictions(self, hashes: Sequence[str]) -> dict[str, Cached]:
        """Cached predictions of the hashes that have them."""

    async def put_predictions(self, items: Mapping[str, Probabilities], by: str | None = None) -> None:
        """Cache probabilities computed for listing version ``by``; keeps the first; never raises."""


class Batcher(Protocol):
    """Runs preprocessed images through the model in micro-batches."""

    async def run(self, prepare: Callable[[], torch.Tensor], pool: Executor) -> Probabilities:
        """``prepare()`` on ``pool``, then the image's probabilities.

        Raises :class:`streams.batcher.PrepareError` when ``prepare`` failed, anything else when
        the model failed on the image's batch.
        """


@dataclass(frozen=True)
class Computed:
    """An image's probabilities, shared by every listing waiting on the same content hash.

    ``by`` is the listing version the probabilities were computed for (None when unknown).
    """

    probabilities: Probabilities | None
    outcome: str
    reason: str | None = None
    by: str | None = None

    def seen_by(self, owner: str) -> tuple[str, bool]:
        """``(outcome, inferred for this listing version)`` as the listing version ``owner`` reports it."""
        if self.probabilities is None:
            return self.outcome, False
        mine = self.by == owner
        return ("TAGGED" if mine else "CACHE_HIT"), mine


_NEEDS_BYTES = Computed(None, "NEEDS_BYTES", "no prediction for the hash and no bytes to infer")
"""What a hash gets whose image came without bytes and has no prediction: refetch it (never published)."""


class _NeedsBytesError(Exception):
    """Given to listings waiting on a hash whose owner has no bytes for it: they do it themselves."""


class Slots:
    """A counting limit whose holders take all their slots at once (no hold-and-wait, so no deadlock)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self._changed: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        """Hold ``n`` slots (at most the capacity) for the duration of the block."""
        n = min(max(n, 0), self.capacity)
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(lambda: self.free >= n)
            self.free -= n
        try:
            yield
        finally:
            async with self._changed:
                self.free += n
                self._changed.notify_all()


class ImageTagger:
    """Turns a listing's image URLs into image outcomes with probabilities."""

    def __init__(
        self,
        images: ImageSource,
        store: PredictionStore,
        batcher: Batcher,
        *,
        preprocess: Callable[[bytes], torch.Tensor],
        decode_pool: Executor,
        metrics: WorkerMetrics,
        max_images: int,
        max_images_in_flight: int,
    ) -> None:
        self._images = images
        self._store = store
        self._batcher = batcher
        self._preprocess = preprocess
        self._decode_pool = decode_pool
        self._metrics = metrics
        self.max_images = max_images
        self._slots = Slots(max_images_in_flight)
        self._computing: dict[str, asyncio.Future[Computed]] = {}

    async def tag(self, urls: Sequence[str], owner: str) -> tuple[list[ImageOutcome], bool]:
        """Outcomes in listing order, and whether any usable image was inferred for ``owner``.

        ``owner`` names the listing version (``listing_id@version``) the inference is for.
        """
        urls = list(urls)
        limit = self.max_images
        async with self._slots.hold(len(urls[:limit])):  # bounds the image bytes held in memory
            fetched = list(await asyncio.gather(*(self._images.fetch(url) for url in urls[:limit])))
            for result in fetched:
                if result.ok and result.url_cache is not None:
                    self._metrics.url_cache.labels(result.url_cache.value).inc()
            computed = await self._predictions(_by_hash(fetched), owner)
            blind = [
                i for i, r in enumerate(fetched) if r.content_hash and computed.get(r.content_hash) is _NEEDS_BYTES
            ]
            if blind:  # vouched for by the URL cache, unknown to the prediction cache: download after all
                self._metrics.url_cache.labels("refetch").inc(len(blind))
                again = await asyncio.gather(*(self._images.fetch(fetched[i].url, need_bytes=True) for i in blind))
                for i, result in zip(blind, again, strict=True):
                    fetched[i] = result
                computed.update(await self._predictions(_by_hash(again), owner))
        outcomes: list[ImageOutcome] = []
        fresh = False
        for result in fetched:
            if not result.ok or result.content_hash is None:
                outcomes.append(ImageOutcome(result.url, result.outcome.value, None, result.reason))
                continue
            c = computed[result.content_hash]
            if c is _NEEDS_BYTES:  # a source that still sent no bytes when asked for them
                reason = "the image source sent no bytes when asked for them"
                outcomes.append(ImageOutcome(result.url, FetchOutcome.FETCH_FAILED.value, None, reason))
                continue
            outcome, mine = c.seen_by(owner)
            fresh = fresh or mine
            outcomes.append(ImageOutcome(result.url, outcome, result.content_hash, c.reason, c.probabilities))
        for url in urls[limit:]:
            reason = f"not fetched: more than {limit} images in the listing"
            outcomes.append(ImageOutcome(url, FetchOutcome.FETCH_FAILED.value, None, reason))
        return outcomes, fresh

    async def _predictions(self, results: dict[str, FetchResult], owner: str) -> dict[str, Computed]:
        """Per hash: shared with an identical image in flight, else from the cache, else the model.

        A hash the cache misses and whose result has no bytes gets :data:`_NEEDS_BYTES`.
        """
        loop = asyncio.get_running_loop()
        hashes = list(results)
        waiting = {h: self._computing[h] for h in hashes if h in self._computing}
        self._metrics.dedup.inc(len(waiting))
        mine: dict[str, asyncio.Future[Computed]] = {h: loop.create_future() for h in hashes if h not in waiting}
        self._computing.update(mine)
        try:
            cached = await self._store.get_predictions(list(mine))
            for h, entry in cached.items():
                mine[h].set_result(Computed(entry.probabilities, "CACHE_HIT", by=entry.by))
            misses = [h for h in mine if h not in cached and results[h].data is not None]
            for h, future in mine.items():
                if h not in cached and results[h].data is None:
                    del self._computing[h]  # nothing to share: whoever needs it infers it
                    future.set_exception(_NeedsBytesError(h))
                    future.add_done_callback(_retrieve)
            computed = await asyncio.gather(*(self._infer(results[h].data or b"", owner) for h in misses))
            fresh = {h: c.probabilities for h, c in zip(misses, computed, strict=True) if c.probabilities}
            await self._store.put_predictions(fresh, owner)
            for h, c in zip(misses, computed, strict=True):
                mine[h].set_result(c)
        except BaseException as exc:
            _fail_waiters(mine.values(), exc)
            raise
        finally:
            for h, future in mine.items():
                if self._computing.get(h) is future:
                    del self._computing[h]
        out = {h: _NEEDS_BYTES if f.exception() else f.result() for h, f in mine.items()}
        for h, future in waiting.items():
            try:
                out[h] = await asyncio.shield(future)
            except ModelError:
                raise
            except (asyncio.CancelledError, Exception):  # the other listing was dropped: do it ourselves
                out[h] = await self._infer(data, owner) if (data := results[h].data) is not None else _NEEDS_BYTES
        return out

    async def _infer(self, data: bytes, owner: str) -> Computed:
        # The decode thread that preprocesses the image queues it for the model itself.
        try:
            probs = await self._batcher.run(functools.partial(self._preprocess, data), self._decode_pool)
        except PrepareError as exc:
            if isinstance(exc.original, ImageError):  # clipped with every echoed text in streams.events
                return Computed(None, "DECODE_FAILED", str(exc.original))
            raise exc.original from None  # a bug in preprocessing, not the model's failure
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise ModelError(f"model failed on a batch: {type(exc).__name__}: {exc}") from exc
        return Computed(rounded(probs), "TAGGED", by=owner)


def _by_hash(results: Iterable[FetchResult]) -> dict[str, FetchResult]:
    """One result per content hash of the fetched images, one with bytes where there is one."""
    out: dict[str, FetchResult] = {}
    for result in results:
        h = result.content_hash
        if result.ok and h and (h not in out or out[h].data is None):
            out[h] = result
    return out


def _fail_waiters(futures: Iterable[asyncio.Future[Computed]], exc: BaseException) -> None:
    """Pass the owner's failure to listings waiting on the same images (cancellation as cancellation)."""
    for future in futures:
        if future.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)
        # Waiters retrieve it; mark it retrieved here too, so one nobody awaits is not logged.
        future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Computed]) -> None:
    if not future.cancelled():
        future.exception()
