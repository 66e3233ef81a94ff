"""Fakes for the worker's protocols: an image source, a prediction store, a batcher, a version store,
a delivery and a producer, each able to fail on cue. They let the parts run in unit tests without
a broker, a Redis or a model."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from confluent_kafka import KafkaError

from streams.batcher import PrepareError
from streams.cache import Cached, rounded
from streams.codec import Codec
from streams.combine import resolve_thresholds
from streams.config import TopicSettings
from streams.images import FetchOutcome, FetchResult
from streams.metrics import WorkerMetrics
from streams.tracker import TopicPartitionKey
from streams.worker.gate import VersionGate
from streams.worker.letters import DeadLetters
from streams.worker.pipeline import Pipeline
from streams.worker.records import Consumed, Output
from streams.worker.tagging import ImageTagger
from tagger.preprocess import ImageError
from tagger.taxonomy import Taxonomy, load_taxonomy

TOPICS = TopicSettings(listings="in", attributes="attrs", review="review", dlq="dlq")
MODEL = "fake-model@1+0000"
GOOD = b"\xff\xd8\xff" + b"good image"
BAD = b"\xff\xd8\xff" + b"does not decode"


def ok(url: str, data: bytes = GOOD) -> FetchResult:
    """A successful fetch of ``data``."""
    return FetchResult(url, FetchOutcome.OK, data, hashlib.sha256(data).hexdigest(), None, 200, 1, 0.01, "JPEG")


def failed(url: str, outcome: FetchOutcome = FetchOutcome.TIMEOUT, reason: str = "timed out") -> FetchResult:
    """A failed fetch."""
    return FetchResult(url, outcome, None, None, reason, None, 1, 0.01, None)


@dataclass
class FakeImages:
    """URL -> result; unknown URLs are fetched as ``GOOD``."""

    results: dict[str, FetchResult] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)
    delay_s: float = 0.0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def fetch(self, url: str) -> FetchResult:
        self.fetched.append(url)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self.results.get(url) or ok(url)


@dataclass
class FakeStore:
    """An in-memory prediction and version store that can be switched to failing (as a miss)."""

    predictions: dict[str, Cached] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    down: bool = False

    async def get_predictions(self, hashes: Sequence[str]) -> dict[str, Cached]:
        return {} if self.down else {h: self.predictions[h] for h in hashes if h in self.predictions}

    async def put_predictions(self, items: Mapping[str, dict[str, list[float]]], by: str | None = None) -> None:
        if not self.down:
            for h, probs in items.items():
                self.predictions.setdefault(h, Cached(rounded(probs), by))

    async def last_version(self, listing_id: str) -> int | None:
        return None if self.down else self.versions.get(listing_id)

    async def record_version(self, listing_id: str, version: int) -> None:
        if not self.down:
            self.versions[listing_id] = max(version, self.versions.get(listing_id, version))


def confident(taxonomy: Taxonomy) -> dict[str, list[float]]:
    """Probabilities that put 0.99 on each head's first value."""
    out = {}
    for key, _, attribute in taxonomy.heads():
        rest = 0.01 / max(1, attribute.size - 1)
        out[key] = [0.99] + [rest] * (attribute.size - 1)
    return out


@dataclass
class FakeBatcher:
    """Answers every image with ``probabilities``; ``fail`` makes the next N submissions raise."""

    probabilities: dict[str, list[float]]
    fail: int = 0
    calls: int = 0

    async def run(self, prepare: Callable[[], torch.Tensor], pool: Executor) -> dict[str, list[float]]:
        try:
            tensor = await asyncio.get_running_loop().run_in_executor(pool, prepare)
        except Exception as exc:
            raise PrepareError(exc) from exc
        return await self.submit(tensor)

    async def submit(self, tensor: torch.Tensor) -> dict[str, list[float]]:
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.probabilities


def preprocess(data: bytes) -> torch.Tensor:
    """A stand-in for the model card's preprocessing: BAD does not decode."""
    if data == BAD:
        raise ImageError("cannot identify image file")
    return torch.zeros(3, 4, 4)


@dataclass
class Parts:
    """A pipeline wired with fakes, and the fakes to steer it."""

    pipeline: Pipeline
    images: FakeImages
    store: FakeStore
    batcher: FakeBatcher
    metrics: WorkerMetrics
    codec: Codec
    taxonomy: Taxonomy


def make_pipeline(*, max_message_bytes: int = 1_000_000, codec: Codec | None = None) -> Parts:
    """A pipeline with fake images, store and batcher, and the real decision rule and codec."""
    taxonomy = load_taxonomy()
    metrics = WorkerMetrics()
    images, store = FakeImages(), FakeStore()
    batcher = FakeBatcher(confident(taxonomy))
    codec = codec or Codec()
    tagger = ImageTagger(
        images,
        store,
        batcher,
        preprocess=preprocess,
        decode_pool=ThreadPoolExecutor(1),
        metrics=metrics,
        max_images=4,
        max_images_in_flight=16,
    )
    pipeline = Pipeline(
        codec=codec,
        topics=TOPICS,
        model_id=MODEL,
        taxonomy=taxonomy,
        thresholds=resolve_thresholds(taxonomy, {}, {}),
        tagger=tagger,
        gate=VersionGate(store, metrics),
        letters=DeadLetters(TOPICS.dlq, "worker-1", max_message_bytes),
        metrics=metrics,
    )
    return Parts(pipeline, images, store, batcher, metrics, codec, taxonomy)


def consumed(value: bytes | None, offset: int = 0, key: bytes | None = b"L1", partition: int = 0) -> Consumed:
    """A consumed record of the ``in`` topic."""
    return Consumed("in", partition, offset, key, value, (("trace", b"t-1"),), 1_700_000_000_000, 1_700_000_000_500)


@dataclass
class FakeDelivery:
    """Records delivered outputs; ``refuse`` makes outputs of those kinds raise OutputRefusedError."""

    delivered: list[tuple[Consumed, list[Output]]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    refusals: dict[tuple[TopicPartitionKey, int], str] = field(default_factory=dict)
    on_deliver: Callable[[Consumed, list[Output]], Any] | None = None

    async def deliver(self, record: Consumed, outputs: list[Output]) -> None:
        from streams.worker.delivery import OutputRefusedError

        for output in outputs:
            if output.kind in self.refuse:
                too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
                raise OutputRefusedError(output, too_large)
        if self.on_deliver is not None:
            self.on_deliver(record, outputs)
        self.delivered.append((record, outputs))
        for output in outputs:
            if output.on_ack is not None:
                output.on_ack()

    async def commit(self) -> None:
        pass

    def refusal(self, tp: TopicPartitionKey, offset: int) -> str | None:
        return self.refusals.pop((tp, offset), None)

    def forget(self, keys: set[TopicPartitionKey]) -> None:
        pass
