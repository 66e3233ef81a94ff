"""The HTTP source's URL cache against a real local origin: fresh hits, conditional GETs, the bound.

Nothing of the cache is mocked: the source talks HTTP to :mod:`tests.streams.images.origin`; only
the cache's clock is a test clock, so that "stale" needs no sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from multidict import CIMultiDict

from streams.images import FetchOutcome, HttpImageSource, ImageRouter, UrlCache, UrlCacheOutcome
from streams.images.urlcache import MAX_ETAG_CHARS, cache_headers
from tests.streams.images.harness import FAST_RETRIES, JPEG, PNG, FakeResolver, Recorder, run, settings
from tests.streams.images.origin import Origin, origin_serving

JPEG_HASH = hashlib.sha256(JPEG).hexdigest()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def source(cache: UrlCache | None = None, **overrides: Any) -> HttpImageSource:
    resolver = overrides.pop("resolver", None)
    observer = overrides.pop("observer", None)
    return HttpImageSource(
        settings(**overrides),
        resolver=resolver,
        observer=observer,
        retry_policy=FAST_RETRIES,
        url_cache=cache if cache is not None else True,
    )


def served(**per_name: dict[str, Any]) -> Origin:
    """An origin serving JPEG under each name, with that name's settings."""
    origin = Origin()
    for name, options in per_name.items():
        origin.bodies[name] = options.get("body", JPEG)
        if "validators" in options:
            origin.validators[name] = options["validators"]
        if "cache_control" in options:
            origin.extra[name] = {"Cache-Control": options["cache_control"]}
    return origin


# -- fresh, stale, changed ------------------------------------------------------------------------


def test_a_fresh_entry_makes_no_request() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        async with (
            origin_serving(served(a={"cache_control": "max-age=60"})) as origin,
            source(observer=recorder) as fetcher,
        ):
            first = await fetcher.fetch(origin.url("a"))
            second = await fetcher.fetch(origin.url("a"))
        assert (first.data, first.url_cache, first.status) == (JPEG, UrlCacheOutcome.MISS, 200)
        assert second.ok and second.data is None and not second.has_bytes
        assert (second.content_hash, second.image_format, second.url_cache) == (
            JPEG_HASH,
            "JPEG",
            UrlCacheOutcome.FRESH,
        )
        assert (second.attempts, second.status) == (0, None)
        assert origin.hits("a") == 1
        assert len(recorder.results) == 1  # the observer hears about requests, not about fresh hits

    run(scenario)


def test_a_stale_entry_is_revalidated_and_304_gives_the_hash_without_a_body() -> None:
    async def scenario() -> None:
        clock = Clock()
        cache = UrlCache(10, 30, clock=clock)
        async with origin_serving(served(a={"cache_control": "max-age=3600"})) as origin, source(cache) as fetcher:
            await fetcher.fetch(origin.url("a"))
            clock.now += 29
            assert (await fetcher.fetch(origin.url("a"))).url_cache is UrlCacheOutcome.FRESH
            clock.now += 2  # max-age=3600 is cut to url_cache_max_age_s (30)
            revalidated = await fetcher.fetch(origin.url("a"))
            again = await fetcher.fetch(origin.url("a"))  # the 304 renewed the lifetime
        assert (revalidated.ok, revalidated.data, revalidated.status) == (True, None, 304)
        assert (revalidated.content_hash, revalidated.url_cache) == (JPEG_HASH, UrlCacheOutcome.REVALIDATED)
        assert again.url_cache is UrlCacheOutcome.FRESH
        assert origin.conditional("a") == [False, True]
        assert origin.requests[1][1]["If-None-Match"] == f'"{JPEG_HASH[:16]}"'

    run(scenario)


def test_without_max_age_every_repeat_is_revalidated() -> None:
    async def scenario() -> None:
        async with origin_serving(served(a={}, b={"validators": "last-modified"})) as origin, source() as fetcher:
            results = [await fetcher.fetch(origin.url(name)) for name in ("a", "a", "b", "b", "b")]
        assert [r.url_cache for r in results] == [
            UrlCacheOutcome.MISS,
            UrlCacheOutcome.REVALIDATED,
            UrlCacheOutcome.MISS,
            UrlCacheOutcome.REVALIDATED,
            UrlCacheOutcome.REVALIDATED,
        ]
        assert all(r.content_hash == JPEG_HASH for r in results)
        assert origin.conditional("b") == [False, True, True]
        assert [h.get("If-Modified-Since") for n, h in origin.requests if n == "b"][1:] == [
            "Tue, 01 Oct 2024 10:00:00 GMT"
        ] * 2

    run(scenario)


def test_changed_content_on_revalidation_is_downloaded_with_its_new_hash() -> None:
    async def scenario() -> None:
        async with origin_serving(served(a={})) as origin, source() as fetcher:
            await fetcher.fetch(origin.url("a"))
            origin.bodies["a"] = PNG  # a new image behind the same URL: a new ETag
            changed = await fetcher.fetch(origin.url("a"))
            after = await fetcher.fetch(origin.url("a"))
        assert (changed.data, changed.status, changed.url_cache) == (PNG, 200, UrlCacheOutcome.CHANGED)
        assert (changed.content_hash, changed.image_format) == (hashlib.sha256(PNG).hexdigest(), "PNG")
        assert (after.url_cache, after.content_hash, after.image_format) == (
            UrlCacheOutcome.REVALIDATED,
            changed.content_hash,
            "PNG",
        )
        assert origin.conditional("a") == [False, True, True]

    run(scenario)


def test_need_bytes_downloads_even_when_fresh_and_updates_the_entry() -> None:
    async def scenario() -> None:
        async with origin_serving(served(a={"cache_control": "max-age=60"})) as origin, source() as fetcher:
            await fetcher.fetch(origin.url("a"))
            full = await fetcher.fetch(origin.url("a"), need_bytes=True)
            fresh = await fetcher.fetch(origin.url("a"))
        assert (full.data, full.url_cache) == (JPEG, None)
        assert fresh.url_cache is UrlCacheOutcome.FRESH
        assert origin.conditional("a") == [False, False]

    run(scenario)


# -- what is not cached ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"cache_control": "no-store"},
        {"cache_control": "max-age=60, no-store"},
        {"validators": "none"},  # nothing to revalidate with, nothing fresh
        {"validators": "none", "cache_control": "no-cache, max-age=60"},
    ],
)
def test_responses_that_may_not_or_need_not_be_cached_are_downloaded_every_time(options: dict[str, Any]) -> None:
    async def scenario() -> None:
        async with origin_serving(served(a=options)) as origin, source() as fetcher:
            results = [await fetcher.fetch(origin.url("a")) for _ in range(3)]
            assert fetcher.url_cache is not None and len(fetcher.url_cache) == 0
        assert [(r.data, r.url_cache) for r in results] == [(JPEG, UrlCacheOutcome.MISS)] * 3
        assert origin.conditional("a") == [False] * 3

    run(scenario)


def test_no_cache_is_remembered_but_always_revalidated() -> None:
    async def scenario() -> None:
        async with origin_serving(served(a={"cache_control": "no-cache, max-age=60"})) as origin, source() as fetcher:
            results = [await fetcher.fetch(origin.url("a")) for _ in range(3)]
        assert [r.url_cache for r in results] == [UrlCacheOutcome.MISS] + [UrlCacheOutcome.REVALIDATED] * 2
        assert origin.conditional("a") == [False, True, True]

    run(scenario)


def test_no_store_on_a_later_answer_forgets_the_url() -> None:
    async def scenario() -> None:
        async with origin_serving(served(a={})) as origin, source() as fetcher:
            await fetcher.fetch(origin.url("a"))
            origin.bodies["a"] = PNG
            origin.extra["a"] = {"Cache-Control": "no-store"}
            await fetcher.fetch(origin.url("a"))
            assert fetcher.url_cache is not None and origin.url("a") not in fetcher.url_cache

    run(scenario)


def test_a_failed_revalidation_is_that_failure_and_forgets_the_url() -> None:
    async def scenario() -> None:
        async with origin_serving(served(a={})) as origin, source() as fetcher:
            await fetcher.fetch(origin.url("a"))
            del origin.bodies["a"]
            gone = await fetcher.fetch(origin.url("a"))
            assert fetcher.url_cache is not None and len(fetcher.url_cache) == 0
        assert (gone.outcome, gone.reason, gone.content_hash, gone.url_cache) == (
            FetchOutcome.FETCH_FAILED,
            "HTTP 404",
            None,
            None,
        )

    run(scenario)


# -- the bound and the switch ---------------------------------------------------------------------


def test_the_cache_keeps_the_most_recently_used_urls() -> None:
    async def scenario() -> None:
        cache = UrlCache(2, 60)
        origin = served(a={"cache_control": "max-age=60"}, b={"cache_control": "max-age=60"})
        origin.bodies["c"] = JPEG
        origin.extra["c"] = {"Cache-Control": "max-age=60"}
        async with origin_serving(origin), source(cache) as fetcher:
            for name in ("a", "b", "a", "c"):  # a is used again after b, so c pushes b out
                await fetcher.fetch(origin.url(name))
            assert len(cache) == 2
            assert origin.url("b") not in cache
            results = {name: (await fetcher.fetch(origin.url(name))).url_cache for name in ("a", "c", "b")}
        assert results == {"a": UrlCacheOutcome.FRESH, "b": UrlCacheOutcome.MISS, "c": UrlCacheOutcome.FRESH}
        assert origin.hits("b") == 2

    run(scenario)


def test_zero_entries_switch_it_off_and_it_is_off_unless_asked_for() -> None:
    async def scenario() -> None:
        async with origin_serving(served(a={"cache_control": "max-age=60"})) as origin:
            for fetcher in (
                HttpImageSource(settings(url_cache_entries=0), url_cache=True),
                HttpImageSource(settings()),  # the review service and exports need every image's bytes
            ):
                assert fetcher.url_cache is None
                async with fetcher:
                    results = [await fetcher.fetch(origin.url("a")) for _ in range(2)]
                assert [(r.data, r.url_cache) for r in results] == [(JPEG, None)] * 2
        assert origin.conditional("a") == [False] * 4

    run(scenario)


def test_the_settings_size_the_cache() -> None:
    fetcher = HttpImageSource(settings(url_cache_entries=7, url_cache_max_age_s=12.5), url_cache=True)
    assert fetcher.url_cache is not None
    assert (fetcher.url_cache.entries, fetcher.url_cache.max_age_s) == (7, 12.5)
    with pytest.raises(ValueError, match="at least one entry"):
        UrlCache(0, 1)


# -- fetches in flight ----------------------------------------------------------------------------


def test_concurrent_fetches_of_one_url_share_one_request() -> None:
    async def scenario() -> None:
        origin = served(a={}, b={"validators": "none"})
        origin.delay_s = 0.2
        async with origin_serving(origin), source() as fetcher:
            shared = await asyncio.gather(*(fetcher.fetch(origin.url("a")) for _ in range(3)))
            uncacheable = await asyncio.gather(*(fetcher.fetch(origin.url("b")) for _ in range(2)))
            revalidated = await asyncio.gather(*(fetcher.fetch(origin.url("a")) for _ in range(2)))
        assert [r.data for r in shared] == [JPEG] * 3
        assert sorted(r.url_cache or "" for r in shared) == ["miss", "shared", "shared"]
        assert [r.data for r in uncacheable] == [JPEG] * 2
        assert sorted(r.url_cache or "" for r in revalidated) == ["revalidated", "shared"]
        assert all(r.content_hash == JPEG_HASH and r.data is None for r in revalidated)
        assert (origin.hits("a"), origin.hits("b")) == (2, 1)

    run(scenario)


def test_a_cancelled_caller_does_not_cancel_the_others_nor_the_last_one_leaves_it_running() -> None:
    async def scenario() -> None:
        origin = served(a={})
        origin.delay_s = 0.3
        async with origin_serving(origin), source() as fetcher:
            first = asyncio.ensure_future(fetcher.fetch(origin.url("a")))
            second = asyncio.ensure_future(fetcher.fetch(origin.url("a")))
            await asyncio.sleep(0.05)
            first.cancel()
            result = await second
            assert result.data == JPEG
            alone = asyncio.ensure_future(fetcher.fetch(origin.url("a")))
            await asyncio.sleep(0.05)
            alone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await alone
            await asyncio.sleep(0)
            assert not fetcher._in_flight  # the abandoned fetch is gone, a new caller starts afresh
            assert (await fetcher.fetch(origin.url("a"))).url_cache is UrlCacheOutcome.REVALIDATED

    run(scenario)


def test_a_fetch_for_bytes_is_not_served_by_a_revalidation_in_flight() -> None:
    async def scenario() -> None:
        origin = served(a={})
        async with origin_serving(origin), source() as fetcher:
            await fetcher.fetch(origin.url("a"))
            origin.delay_s = 0.2
            plain, full = await asyncio.gather(
                fetcher.fetch(origin.url("a")), fetcher.fetch(origin.url("a"), need_bytes=True)
            )
        assert (plain.url_cache, plain.data) == (UrlCacheOutcome.REVALIDATED, None)
        assert full.data == JPEG
        assert origin.conditional("a") == [False, True, False]

    run(scenario)


# -- the guard still applies ----------------------------------------------------------------------


def test_revalidation_is_checked_again_when_the_host_now_resolves_to_a_refused_address() -> None:
    async def scenario() -> None:
        resolver = FakeResolver({"images.shop.test": ["127.0.0.1"]})
        fetcher = source(resolver=resolver)
        async with origin_serving(served(a={})) as origin:
            url = origin.url("a").replace("127.0.0.1", "images.shop.test")
            async with fetcher:
                assert (await fetcher.fetch(url)).data == JPEG
            # the cache outlives the session; a new session has no pooled connection to reuse
            resolver.answers["images.shop.test"] = ["10.0.0.7"]  # DNS now points inside
            async with fetcher:
                refused = await fetcher.fetch(url)
            assert fetcher.url_cache is not None and url not in fetcher.url_cache
        assert refused.outcome is FetchOutcome.BLOCKED_URL and refused.content_hash is None
        assert refused.reason is not None and "10.0.0.7" in refused.reason
        assert origin.hits("a") == 1

    run(scenario)


def test_a_redirect_on_revalidation_is_checked_like_any_other() -> None:
    async def scenario() -> None:
        origin = served(a={})
        origin.conditional_redirect["a"] = "http://169.254.169.254/latest/meta-data/"
        async with origin_serving(origin), source() as fetcher:
            await fetcher.fetch(origin.url("a"))
            refused = await fetcher.fetch(origin.url("a"))
        assert (refused.outcome, refused.status) == (FetchOutcome.BLOCKED_URL, 302)
        assert refused.reason is not None and "cloud metadata" in refused.reason

    run(scenario)


def test_the_router_passes_need_bytes_on() -> None:
    async def scenario() -> None:
        async with (
            origin_serving(served(a={"cache_control": "max-age=60"})) as origin,
            ImageRouter.from_settings(settings(), url_cache=True) as router,
        ):
            first = await router.fetch(origin.url("a"))
            fresh = await router.fetch(origin.url("a"))
            full = await router.fetch(origin.url("a"), need_bytes=True)
        assert (first.data, fresh.data, full.data) == (JPEG, None, JPEG)
        assert fresh.url_cache is UrlCacheOutcome.FRESH

    run(scenario)


# -- the headers ----------------------------------------------------------------------------------


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def test_cache_control_and_age_give_the_lifetime() -> None:
    parsed = cache_headers(headers(("Cache-Control", "public, max-age=120"), ("Age", "20")), 300)
    assert (parsed.lifetime, parsed.no_store, parsed.no_cache) == (100.0, False, False)
    assert cache_headers(headers(("Cache-Control", "max-age=900")), 300).lifetime == 300.0
    assert cache_headers(headers(("Cache-Control", 'max-age="60"')), 300).lifetime == 60.0
    assert cache_headers(headers(("Cache-Control", "max-age=30"), ("Age", "90")), 300).lifetime == 0.0
    assert cache_headers(headers(("Cache-Control", "max-age=soon")), 300).lifetime is None
    split = cache_headers(headers(("Cache-Control", "max-age=60"), ("cache-control", "No-Store")), 300)
    assert (split.lifetime, split.no_store) == (60.0, True)
    assert cache_headers(headers(), 300) == cache_headers({}, 300)


def test_oversized_validators_are_ignored() -> None:
    parsed = cache_headers(headers(("ETag", '"' + "x" * MAX_ETAG_CHARS + '"'), ("Last-Modified", "y" * 100)), 300)
    assert (parsed.etag, parsed.last_modified) == (None, None)
