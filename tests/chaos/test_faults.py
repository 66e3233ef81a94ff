"""Faults that need a hand inside the worker: a failing model, outputs the broker refuses, a registry away.

These run the real worker in-process (so a predictor, a producer or a registry client can be handed
in that fails on cue) against the real broker and Redis, feed it a known input and check the same
promises as the process scenarios: every listing ends with an attribute event or a dead letter with
a reason, repeats are identical, nothing stale, and the partitions keep committing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import MockSchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streams.codec import Codec
from streams.config import Settings
from streams.images import FetchResult, ImageFetcher
from streams.worker import Worker
from tagger.predict import Predictor
from tests.chaos.checks import finish
from tests.chaos.report import ScenarioRow
from tests.chaos.scale import pick
from tests.chaos.verifier import Verifier
from tests.chaos.workload import Feeder, Planned, Row, plan_listings
from tests.streams.worker_harness import PARTITIONS, running

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

MakeSettings = Callable[..., Settings]
MakeVerifier = Callable[[str, Settings], Verifier]
MakeFeeder = Callable[[str, Settings], Feeder]


class FlakyPredictor:
    """The demo predictor, except that chosen batches raise: the next ``fail_batches``, and any with a poison pixel."""

    def __init__(self, real: Predictor, *, fail_batches: int = 0, poison: float | None = None) -> None:
        self._real = real
        self.fail_batches = fail_batches
        self.poison = poison
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def preprocess(self, data: bytes) -> torch.Tensor:
        tensor = self._real.preprocess(data)
        if self.poison is not None and data.endswith(b"POISON"):
            tensor[0, 0, 0] = self.poison
        return tensor

    def probabilities(self, batch: torch.Tensor) -> Any:
        if self.fail_batches > 0:
            self.fail_batches -= 1
            self.failures += 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if self.poison is not None and bool((batch[:, 0, 0, 0] == self.poison).any()):
            self.failures += 1
            raise RuntimeError("CUDA error: device-side assert triggered")
        return self._real.probabilities(batch)


def _committed_to_end(settings: Settings) -> dict[int, tuple[int, int]]:
    """Per input partition: (committed offset of the worker's group, end offset)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": settings.kafka.group_id})
    try:
        parts = [TopicPartition(settings.topics.listings, p) for p in range(PARTITIONS)]
        committed = consumer.committed(parts, timeout=10)
        out = {}
        for tp in committed:
            _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            out[tp.partition] = (tp.offset, high)
        return out
    finally:
        consumer.close()


def _wait_committed(settings: Settings, timeout: float = 30) -> dict[int, tuple[int, int]]:
    deadline = time.monotonic() + timeout
    state = _committed_to_end(settings)
    while time.monotonic() < deadline and any(c < high for c, high in state.values() if high > 0):
        time.sleep(0.5)
        state = _committed_to_end(settings)
    return state


# -- 5: the predictor raises ----------------------------------------------------------------------


@pytest.mark.timeout(pick(180, 600))
def test_model_fails_for_one_batch_and_for_a_poison_image(
    kafka_bootstrap: str,
    redis_url: str,
    images: str,
    rows: list[Row],
    settings_for: MakeSettings,
    verifier_for: MakeVerifier,
    feeder_for: MakeFeeder,
    chaos_row: ScenarioRow,
) -> None:
    settings = settings_for(kafka_bootstrap, redis_url, worker={"listing_retries": 2})
    predictor = FlakyPredictor(Predictor.load(None, "cpu"), fail_batches=1, poison=-1234.5)
    plan = plan_listings(rows, lambda r: images + r["image"], pick(60, 400), prefix="M", seed=5)
    poison = [Planned(f"Mpoison-{i}", 1, (f"{images}poison.jpg",), "women/clothing/dresses") for i in range(3)]
    verifier, feeder = verifier_for(kafka_bootstrap, settings), feeder_for(kafka_bootstrap, settings)
    source = _PoisonImages(settings, images + rows[0]["image"])
    worker = Worker(settings, predictor=predictor, image_source=source)
    with running(worker):
        feeder.publish(plan[: len(plan) // 2] + poison + plan[len(plan) // 2 :])
        verifier.wait_covered(feeder.snapshot, pick(120, 400))
    verdict = finish(chaos_row, verifier, feeder.snapshot())
    letters = [o for o in verifier.of("dlq") if o.value is not None]
    poisoned = {o.key for o in letters if o.value and o.value["reason"] == "model_failed"}
    expected = {p.key for p in poison}
    chaos_row.check(poisoned == expected, "the poison image's listings end as model_failed", f"{poisoned}")
    others = [(o.key, o.value["reason"]) for o in letters if o.key not in poisoned and o.value]
    chaos_row.check(not others, "no other listing is dead-lettered", f"{others[:3]}")
    retried = worker.metrics.value("swatch_listing_retries_total", {"cause": "model"})
    chaos_row.check(retried >= 3, "the failing listings were retried", f"{retried}")
    chaos_row.notes += [f"model failures {predictor.failures}", f"listing retries {retried:.0f}"]
    chaos_row.check(verdict.dead_letters.get("model_failed") == len(poison), "three model_failed dead letters")
    chaos_row.assert_all()


class _PoisonImages:
    """The real fetcher, except that ``poison.jpg`` answers a real image whose bytes end in POISON."""

    def __init__(self, settings: Settings, real_image_url: str) -> None:
        self._fetcher = ImageFetcher(settings.fetch)
        self._real = real_image_url
        self._poison: FetchResult | None = None

    async def start(self) -> None:
        await self._fetcher.start()

    async def close(self) -> None:
        await self._fetcher.close()

    async def fetch(self, url: str) -> FetchResult:
        if not url.endswith("poison.jpg"):
            return await self._fetcher.fetch(url)
        if self._poison is None:
            real = await self._fetcher.fetch(self._real)
            assert real.ok, f"no catalog image to poison: {real.reason}"
            data = (real.data or b"") + b"POISON"  # JPEG decoders ignore bytes after the end marker
            self._poison = dataclasses.replace(real, data=data, content_hash=hashlib.sha256(data).hexdigest())
        return dataclasses.replace(self._poison, url=url)


# -- 6: outputs the broker refuses ----------------------------------------------------------------


@pytest.mark.timeout(pick(180, 600))
def test_outputs_the_broker_refuses_end_as_dead_letters_and_partitions_keep_committing(
    kafka_bootstrap: str,
    redis_url: str,
    images: str,
    rows: list[Row],
    settings_for: MakeSettings,
    verifier_for: MakeVerifier,
    feeder_for: MakeFeeder,
    chaos_row: ScenarioRow,
) -> None:
    limit = 200_000
    settings = settings_for(kafka_bootstrap, redis_url, kafka={"extra": {"message.max.bytes": str(limit)}})
    # The producer really sends with a lower limit than the settings say, as a broker with a smaller
    # max.message.bytes would refuse: librdkafka refuses those records itself (MSG_SIZE_TOO_LARGE).
    lower = 60_000

    def producer(conf: dict[str, Any]) -> Producer:
        return Producer(conf | {"message.max.bytes": lower})

    url = lambda r: images + r["image"]  # noqa: E731
    plan = plan_listings(rows, url, pick(40, 300), prefix="O", seed=6)
    many = [url(rows[i % len(rows)]) + f"?copy={i}" + "x" * 60 for i in range(3_000)]  # ~300 kB of URLs
    # ~90 kB: within the settings' limit, over the producer's real one
    medium = [url(rows[i % len(rows)]) + f"?copy={i}" + "y" * 60 for i in range(900)]
    hostile = [Planned("Ohuge", 1, tuple(many)), Planned("Omedium", 1, tuple(medium))]
    first, feeder = Verifier(kafka_bootstrap, settings.topics), feeder_for(kafka_bootstrap, settings)
    worker = Worker(settings, predictor=Predictor.load(None, "cpu"), producer_factory=producer)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    with running(worker):
        feeder.publish(plan[:10] + hostile + plan[10:])
        first.wait_covered(feeder.snapshot, pick(120, 400))
        # librdkafka 2.16 crashes (SIGSEGV in its metadata cache) when a topic it is assigned is
        # deleted on Tansu, so the reader lets go of the review topic before it goes.
        first.close()
        # The review topic is deleted mid-stream: its outputs wait (the producer never recreates it),
        # then `swatch topics create` (here: the admin client) restores it and they go out.
        admin.delete_topics([settings.topics.review])[settings.topics.review].result(15)
        gone_at = time.monotonic()
        later = plan_listings(rows, url, pick(20, 100), prefix="Olate", seed=7)
        feeder.publish(later)
        time.sleep(pick(4, 10))
        admin.create_topics([NewTopic(settings.topics.review, PARTITIONS, 1)])[settings.topics.review].result(15)
        verifier = Verifier(kafka_bootstrap, settings.topics)
        covered = verifier.wait_covered(feeder.snapshot, pick(150, 400))
        chaos_row.notes.append(f"review topic gone {time.monotonic() - gone_at:.0f}s")
        committed = _wait_committed(settings)
    chaos_row.check(covered, "every listing covered after the review topic came back")
    verdict = finish(chaos_row, verifier, feeder.snapshot())
    by_key = {o.key: o.value for o in verifier.of("dlq") if o.value}
    for key in ("Ohuge", "Omedium"):
        letter = by_key.get(key)
        chaos_row.check(letter is not None and letter["reason"] == "output_too_large", f"{key}: output_too_large")
    for key in ("Ohuge", "Omedium"):
        letter = by_key.get(key) or {}
        size = len(letter.get("original_value") or b"")
        cut = letter.get("truncated") is True and size < lower
        chaos_row.check(cut, f"{key}: the dead letter was cut to fit", f"{size}")
    stuck = {p: c for p, c in committed.items() if c[0] < c[1]}
    chaos_row.check(not stuck, "every partition committed to its end", f"{stuck}")
    chaos_row.notes.append(f"dead letters {dict(verdict.dead_letters)}")
    verifier.close()
    chaos_row.assert_all()


# -- 8: the registry unreachable for a while ------------------------------------------------------


class _FlakyRegistry(MockSchemaRegistryClient):
    """An in-memory registry whose calls fail (503) while ``down`` is set."""

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        self.down = threading.Event()
        self.refused = 0

    def _check(self) -> None:
        if self.down.is_set():
            self.refused += 1
            raise SchemaRegistryError(503, 50301, "Service Unavailable")

    def set_config(self, subject_name: str | None = None, config: Any = None) -> Any:
        self._check()
        return config

    def register_schema(self, subject_name: str, schema: Schema, normalize_schemas: bool = False) -> int:
        self._check()
        return super().register_schema(subject_name, schema, normalize_schemas)

    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Schema:
        self._check()
        return super().get_schema(schema_id, *args, **kwargs)


@pytest.mark.timeout(pick(180, 600))
def test_registry_unreachable_at_start_and_mid_run(
    kafka_bootstrap: str,
    redis_url: str,
    prefix: str,
    images: str,
    rows: list[Row],
    settings_for: MakeSettings,
    verifier_for: MakeVerifier,
    feeder_for: MakeFeeder,
    chaos_row: ScenarioRow,
) -> None:
    settings = settings_for(kafka_bootstrap, redis_url, registry={"url": f"mock://{prefix}"})
    registry = _FlakyRegistry({"url": f"mock://{prefix}"})
    verifier, feeder = verifier_for(kafka_bootstrap, settings), feeder_for(kafka_bootstrap, settings)
    verifier.codec = Codec(registry=registry)
    url = lambda r: images + r["image"]  # noqa: E731
    plan = plan_listings(rows, url, pick(60, 400), prefix="G", seed=8, junk=2)
    registry.down.set()
    worker = Worker(settings, predictor=Predictor.load(None, "cpu"), registry_factory=lambda conf: registry)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        feeder.publish(plan[: len(plan) // 2])
        time.sleep(pick(5, 15))  # the worker waits for the registry and consumes nothing meanwhile
        before = len(verifier.attribute_events()) + verifier.poll(0.5)
        chaos_row.check(before == 0, "nothing is published while the schemas cannot be registered", f"{before}")
        registry.down.clear()
        verifier.wait_covered(feeder.snapshot, pick(120, 300))
        registry.down.set()  # mid-run: encoding uses the registered ids, nothing needs the registry
        feeder.publish(plan[len(plan) // 2 :])
        time.sleep(pick(3, 10))
        registry.down.clear()
        verifier.wait_covered(feeder.snapshot, pick(120, 300))
    finally:
        worker.stop()
        thread.join(60)
    verdict = finish(chaos_row, verifier, feeder.snapshot())
    only_junk = set(verdict.dead_letters) <= {"undecodable"}
    chaos_row.check(only_junk, "only the junk is dead-lettered", f"{verdict.dead_letters}")
    chaos_row.notes.append(f"registry calls refused {registry.refused}")
    chaos_row.check(registry.refused > 0, "the registry really was away")
    chaos_row.assert_all()
