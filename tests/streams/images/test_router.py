"""The scheme router: http(s) to the HTTP source, any other registered scheme to its source, the rest refused."""

from __future__ import annotations

import hashlib

import pytest

from streams.images import FetchOutcome, FetchResult, ImageRouter
from tests.streams.images.harness import JPEG, Recorder, run, serving, settings


class Canned:
    """An in-process source (what an S3 source would plug in as): logs its calls, returns ``JPEG``."""

    def __init__(self, name: str, log: list[tuple[str, ...]], *, fail_start: bool = False) -> None:
        self.name, self.log, self.fail_start = name, log, fail_start

    async def fetch(self, url: str) -> FetchResult:
        self.log.append(("fetch", self.name, url))
        return FetchResult(url, FetchOutcome.OK, JPEG, hashlib.sha256(JPEG).hexdigest(), None, None, 1, 0.0, "JPEG")

    async def start(self) -> None:
        self.log.append(("start", self.name))
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")

    async def close(self) -> None:
        self.log.append(("close", self.name))


def test_http_and_https_go_to_the_http_source() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        async with serving() as server, ImageRouter.from_settings(settings(), observer=recorder) as router:
            result = await router.fetch(server.url("/image.jpg"))
        assert router.schemes == {"http", "https"}
        assert (result.outcome, result.data) == (FetchOutcome.OK, JPEG)
        assert recorder.results == [result]  # the HTTP source reported it, once

    run(scenario)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/image.jpg",
        "gopher://127.0.0.1:70/_GET",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(document.domain)",
        "s3://bucket/image.jpg",
    ],
)
def test_a_scheme_without_a_source_is_blocked_without_raising(url: str) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        async with ImageRouter.from_settings(settings(), observer=recorder) as router:
            result = await router.fetch(url)
        scheme = url.split(":", 1)[0]
        assert (result.outcome, result.reason, result.attempts) == (
            FetchOutcome.BLOCKED_URL,
            f"scheme {scheme!r} not allowed",
            1,
        )
        assert recorder.results == [result]  # operators count refusals by the router too

    run(scenario)


@pytest.mark.parametrize(
    ("url", "outcome", "reason"),
    [
        ("s3://key:secret@bucket/image.jpg", FetchOutcome.BLOCKED_URL, "credentials in URL"),
        ("s3://bucket/" + "k" * 2048, FetchOutcome.FETCH_FAILED, "URL longer than 2048 characters"),
        ("bucket/image.jpg", FetchOutcome.FETCH_FAILED, "invalid URL: no scheme"),
    ],
)
def test_source_independent_rules_are_applied_before_dispatch(url: str, outcome: FetchOutcome, reason: str) -> None:
    async def scenario() -> None:
        log: list[tuple[str, ...]] = []
        async with ImageRouter({"s3": Canned("s3", log)}) as router:
            result = await router.fetch(url)
        assert (result.outcome, result.reason) == (outcome, reason)
        assert ("fetch", "s3", url) not in log

    run(scenario)


def test_another_source_is_one_more_entry() -> None:
    """One source under two schemes is started and closed once; sources close in reverse order."""

    async def scenario() -> None:
        log: list[tuple[str, ...]] = []
        s3 = Canned("s3", log)
        router = ImageRouter({"S3": s3, "s3a": s3, "gs": Canned("gs", log)})
        async with router:
            first = await router.fetch("s3://bucket/a.jpg")
            second = await router.fetch("S3A://bucket/b.jpg")
            third = await router.fetch("gs://bucket/c.jpg")
        assert all(result.ok for result in (first, second, third))
        assert router.schemes == {"s3", "s3a", "gs"}
        assert log == [
            ("start", "s3"),
            ("start", "gs"),
            ("fetch", "s3", "s3://bucket/a.jpg"),
            ("fetch", "s3", "S3A://bucket/b.jpg"),
            ("fetch", "gs", "gs://bucket/c.jpg"),
            ("close", "gs"),
            ("close", "s3"),
        ]

    run(scenario)


def test_a_source_that_cannot_start_closes_those_already_started() -> None:
    async def scenario() -> None:
        log: list[tuple[str, ...]] = []
        router = ImageRouter({"s3": Canned("s3", log), "gs": Canned("gs", log, fail_start=True)})
        with pytest.raises(RuntimeError, match="gs cannot start"):
            await router.start()
        assert log == [("start", "s3"), ("start", "gs"), ("close", "s3")]

    run(scenario)
