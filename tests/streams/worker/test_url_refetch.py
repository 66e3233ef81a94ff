"""The tagger with the HTTP source's URL cache: a hash without bytes and without a prediction is fetched again.

The image source is the real one with its URL cache, against a local origin over HTTP
(:mod:`tests.streams.images.origin`); the prediction store and the model are the fakes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from streams.cache import Cached
from streams.combine import ImageOutcome
from streams.images import FetchOutcome, FetchResult, HttpImageSource
from streams.metrics import WorkerMetrics
from streams.worker.tagging import ImageTagger
from tagger.taxonomy import load_taxonomy
from tests.streams.images.harness import FAST_RETRIES, JPEG, PNG, settings
from tests.streams.images.origin import Origin, origin_serving
from tests.streams.worker.fakes import FakeBatcher, FakeStore, confident, preprocess

JPEG_HASH = hashlib.sha256(JPEG).hexdigest()


class SlowStore(FakeStore):
    """A store whose lookups take a moment, as Redis's do: other listings run meanwhile."""

    async def get_predictions(self, hashes: Sequence[str]) -> dict[str, Cached]:
        await asyncio.sleep(0.02)
        return await super().get_predictions(hashes)


@dataclass
class Rig:
    tagger: ImageTagger
    origin: Origin
    store: FakeStore
    batcher: FakeBatcher
    metrics: WorkerMetrics

    async def tag(self, *names: str, owner: str = "L1@1") -> list[ImageOutcome]:
        outcomes, _ = await self.tagger.tag([self.origin.url(name) for name in names], owner)
        return outcomes

    def url_cache(self, outcome: str) -> float:
        return self.metrics.value("swatch_url_cache_total", {"outcome": outcome})


@asynccontextmanager
async def rig(store: FakeStore | None = None) -> AsyncIterator[Rig]:
    origin = Origin(bodies={"a": JPEG})
    metrics, store = WorkerMetrics(), store or FakeStore()
    batcher = FakeBatcher(confident(load_taxonomy()))
    async with (
        origin_serving(origin),
        HttpImageSource(settings(), retry_policy=FAST_RETRIES, url_cache=True) as images,
    ):
        with ThreadPoolExecutor(1) as pool:
            tagger = ImageTagger(
                images,
                store,
                batcher,
                preprocess=preprocess,
                decode_pool=pool,
                metrics=metrics,
                max_images=4,
                max_images_in_flight=16,
            )
            yield Rig(tagger, origin, store, batcher, metrics)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_revalidated_url_with_a_cached_prediction_needs_no_bytes() -> None:
    async def scenario() -> None:
        async with rig() as r:
            [first] = await r.tag("a")
            [again] = await r.tag("a", owner="L1@2")
            assert (first.outcome, again.outcome) == ("TAGGED", "CACHE_HIT")
            assert again.content_hash == JPEG_HASH and again.probabilities == first.probabilities
            assert r.origin.conditional("a") == [False, True]
            assert r.batcher.calls == 1
            assert (r.url_cache("miss"), r.url_cache("revalidated"), r.url_cache("refetch")) == (1, 1, 0)

    run(scenario)


def test_an_evicted_prediction_makes_the_tagger_download_the_image_again() -> None:
    async def scenario() -> None:
        async with rig() as r:
            await r.tag("a")
            r.store.predictions.clear()  # evicted or expired in Redis
            [again] = await r.tag("a", owner="L1@2")
            assert (again.outcome, again.content_hash) == ("TAGGED", JPEG_HASH)
            assert again.probabilities
            assert r.origin.conditional("a") == [False, True, False]  # full, 304, full again
            assert r.batcher.calls == 2
            assert (r.url_cache("revalidated"), r.url_cache("refetch")) == (1, 1)

    run(scenario)


def test_with_redis_down_every_revalidated_image_is_downloaded_and_inferred() -> None:
    async def scenario() -> None:
        async with rig() as r:
            await r.tag("a")
            r.store.down = True
            outcomes = [await r.tag("a", owner=f"L1@{v}") for v in (2, 3)]
            assert [o.outcome for [o] in outcomes] == ["TAGGED", "TAGGED"]
            assert r.batcher.calls == 3
            assert r.url_cache("refetch") == 2

    run(scenario)


def test_a_failed_refetch_is_the_images_outcome() -> None:
    async def scenario() -> None:
        async with rig() as r:
            await r.tag("a")
            r.store.predictions.clear()
            r.origin.unconditional_status["a"] = 503  # the conditional GET gets 304, the download fails
            [again] = await r.tag("a", owner="L1@2")
            assert (again.outcome, again.reason, again.content_hash) == ("FETCH_FAILED", "HTTP 503", None)
            assert r.url_cache("refetch") == 1

    run(scenario)


def test_a_refetch_that_finds_other_bytes_reports_their_hash() -> None:
    async def scenario() -> None:
        async with rig() as r:
            await r.tag("a")
            r.store.predictions.clear()
            # the origin still answers 304 to the old validator, but a full download is now the PNG
            r.origin.bodies["a"] = PNG
            r.origin.validators["a"] = "none"
            r.origin.extra["a"] = {"ETag": f'"{JPEG_HASH[:16]}"'}
            [again] = await r.tag("a", owner="L1@2")
            assert r.origin.conditional("a") == [False, True, False]
            assert (again.outcome, again.content_hash) == ("TAGGED", hashlib.sha256(PNG).hexdigest())
            assert JPEG_HASH not in r.store.predictions  # nothing stored under the old hash

    run(scenario)


def test_listings_sharing_a_hash_without_bytes_each_end_with_a_prediction() -> None:
    async def scenario() -> None:
        async with rig(SlowStore()) as r:  # the listings wait on each other's lookups
            await r.tag("a")
            r.store.predictions.clear()
            r.origin.delay_s = 0.05
            results = await asyncio.gather(*(r.tag("a", owner=f"L{n}@1") for n in range(2, 6)))
            assert all(o.outcome in ("TAGGED", "CACHE_HIT") and o.probabilities for [o] in results)
            assert all(o.content_hash == JPEG_HASH for [o] in results)
            # one revalidation and one download shared by all four listings
            assert r.origin.conditional("a") == [False, True, False]
            assert r.batcher.calls == 2

    run(scenario)


def test_a_source_that_never_sends_bytes_fails_the_image_instead_of_inferring_nothing() -> None:
    class HashOnly:
        """A source that vouches for every image by its hash, even when asked for the bytes."""

        async def start(self) -> None:
            pass

        async def close(self) -> None:
            pass

        async def fetch(self, url: str, *, need_bytes: bool = False) -> FetchResult:
            return FetchResult(url, FetchOutcome.OK, None, JPEG_HASH, None, 304, 1, 0.0, "JPEG")

    async def scenario() -> None:
        metrics = WorkerMetrics()
        batcher = FakeBatcher(confident(load_taxonomy()))
        with ThreadPoolExecutor(1) as pool:
            tagger = ImageTagger(
                HashOnly(),
                FakeStore(),
                batcher,
                preprocess=preprocess,
                decode_pool=pool,
                metrics=metrics,
                max_images=4,
                max_images_in_flight=16,
            )
            [outcome], fresh = await tagger.tag(["http://images.test/a.jpg"], "L1@1")
        assert (outcome.outcome, outcome.content_hash, fresh, batcher.calls) == ("FETCH_FAILED", None, False, 0)
        assert outcome.reason == "the image source sent no bytes when asked for them"

    run(scenario)
