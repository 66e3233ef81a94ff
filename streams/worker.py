"""The stream worker: listing events in; attribute events, review requests and dead letters out.

Threads and ownership:

- The **event loop** (main thread of the worker) runs everything that waits: one task per
  listing (decode, fetch, cache, batch, decide, publish), the micro-batcher, the producer's
  delivery callbacks (it polls the producer), offset bookkeeping and the HTTP endpoints.
- One **Kafka thread** owns the consumer: every consumer call (consume, pause, resume, commit,
  close) runs there, so rebalance callbacks also run there. A revoke waits (up to
  ``revoke_timeout_s``) for the event loop to finish the revoked partitions' work, commits what
  finished, and drops the rest, all before the revoke returns.
- One **model thread** runs the batches; a small pool decodes and resizes images.

Delivery (at-least-once, the default): a record's offset finishes when every output it caused is
acknowledged by the broker, and the committed position of a partition only moves past a
contiguous run of finished records (:mod:`streams.tracker`). Outputs have deterministic event ids,
so a redelivered record produces the same events again. Listings in flight are bounded: at
``max_in_flight`` every assigned partition is paused (polling goes on, so the group membership
stays alive), and resumed at half of it.

Transactional mode (``SWATCH_WORKER_TRANSACTIONAL_ID``) follows librdkafka's
``examples/transactions.c``: outputs are held until their record and every earlier one of the
partition is finished, then produced with the offsets in one transaction every
``transaction_interval_ms``; an abortable error aborts and rewinds the consumer to the last
committed offsets, a fatal one also recreates the producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.batcher import MicroBatcher
from streams.cache import Probabilities, RedisStore, unique
from streams.codec import (
    Codec,
    attribute_event_id,
    dead_letter_id,
    now_millis,
    review_request_id,
    to_millis,
)
from streams.combine import ImageOutcome, decide, resolve_thresholds
from streams.config import Settings
from streams.errors import DecodeError, SwatchError
from streams.fetch import FetchOutcome, FetchResult, ImageFetcher
from streams.kafka import consumer_config, producer_config
from streams.metrics import HealthServer, WorkerMetrics
from streams.tracker import OffsetTracker, TopicPartitionKey
from tagger.predict import Predictor
from tagger.preprocess import ImageError

logger = logging.getLogger(__name__)

T = TypeVar("T")
SCHEMA_VERSION = 1


class WorkerError(SwatchError):
    """The worker cannot start or cannot go on (a fatal Kafka error, an unacknowledged output)."""


class InvalidEventError(SwatchError):
    """A decoded listing event breaks a rule the schema cannot express."""


@dataclass
class _Output:
    topic: str
    key: bytes
    value: bytes | None
    on_ack: Callable[[], None] | None = None


@dataclass(eq=False)
class _Job:
    """One consumed record on its way through the worker."""

    tp: TopicPartitionKey
    offset: int
    message: Message
    outputs: list[_Output] = field(default_factory=list)
    pending: int = 0
    task: asyncio.Task[None] | None = None
    finished: bool = False

    @property
    def context(self) -> dict[str, Any]:
        return {"topic": self.tp[0], "partition": self.tp[1], "offset": self.offset}


@dataclass
class _Computed:
    """An image's probabilities, shared by every listing waiting on the same content hash."""

    probabilities: Probabilities | None
    outcome: str
    reason: str | None = None


class Worker:
    """Consumes listing events and publishes attribute events; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        predictor: Predictor | None = None,
        bootstrap: str | None = None,
        redis_url: str | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap or settings.kafka.bootstrap
        self.redis_url = redis_url if redis_url is not None else settings.redis.url
        self.worker_id = settings.worker.id or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = metrics or WorkerMetrics()
        if settings.model.threads is not None:
            torch.set_num_threads(settings.model.threads)
        self.predictor = predictor or Predictor.load(settings.model.dir, settings.model.device)
        self.model_id = self.predictor.model_id
        self.taxonomy = self.predictor.taxonomy
        self.thresholds = resolve_thresholds(
            self.taxonomy, self.predictor.card.thresholds, dict(settings.model.thresholds)
        )
        self.codec = Codec.from_settings(settings.registry)
        self.topics = settings.topics
        self.transactional = settings.worker.transactional_id is not None
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_turn = time.monotonic()
        self._assigned: set[TopicPartitionKey] = set()
        self._paused = False
        self._tracker = OffsetTracker()
        self._jobs: dict[TopicPartitionKey, dict[int, _Job]] = {}
        self._ready: list[_Job] = []  # transactional mode: finished jobs whose outputs wait for a transaction
        self._listing_tail: dict[str, asyncio.Future[None]] = {}
        self._computing: dict[str, asyncio.Future[_Computed]] = {}
        self._fatal: BaseException | None = None
        self._kafka = ThreadPoolExecutor(1, thread_name_prefix="swatch-kafka")
        self._decode_pool = ThreadPoolExecutor(settings.worker.preprocess_threads, thread_name_prefix="swatch-decode")
        self._consumer: Consumer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._image_slots = _Slots(settings.worker.max_images_in_flight)
        self._producer: Producer | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`stop`); returns the exit code (0 after a clean drain)."""
        return asyncio.run(self.run_async())

    def stop(self) -> None:
        """Ask the worker to drain and exit; safe from any thread and from signal handlers."""
        self._stop.set()

    async def run_async(self) -> int:
        """The worker's main coroutine."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._signalled, sig)
        health = HealthServer(
            self.metrics,
            self.settings.worker.metrics_host,
            self.settings.worker.metrics_port,
            last_turn=lambda: self._last_turn,
            ready=self._readiness,
        )
        self.metrics_port = await health.start()
        store = RedisStore(self.redis_url, self.settings.redis, self.model_id, self.metrics)
        self._store = store
        batcher: MicroBatcher[dict[str, list[float]]] = MicroBatcher(
            self.predictor.probabilities,
            self.settings.batch.max_size,
            self.settings.batch.max_wait_ms / 1000,
            on_batch=self._batch_done,
        )
        self._batcher = batcher
        batcher.start()
        fetcher = ImageFetcher(self.settings.fetch, observer=self)
        await fetcher.start()
        self._fetcher = fetcher
        poller = loop.create_task(self._serve_producer(), name="producer-poll")
        code = 0
        try:
            self._producer = self._new_producer()
            self._consumer = await self._kcall(self._new_consumer)
            logger.info(
                "worker %s consuming %s with model %s (metrics on port %s)",
                self.worker_id,
                self.topics.listings,
                self.model_id,
                self.metrics_port,
            )
            await self._consume_loop()
        except (WorkerError, KafkaException) as exc:
            logger.error("worker stopping: %s", exc)
            self._fatal = self._fatal or exc
        finally:
            await self._shutdown()
            poller.cancel()
            await batcher.close()
            await fetcher.close()
            await store.close()
            await health.stop()
            self._kafka.shutdown(wait=True)
            self._decode_pool.shutdown(wait=False, cancel_futures=True)
            self._producer = self._consumer = None  # let librdkafka's threads go with the clients
        if self._fatal is not None:
            code = 1
        logger.info("worker %s stopped (exit %d)", self.worker_id, code)
        return code

    def _signalled(self, sig: signal.Signals) -> None:
        logger.info("%s received: draining for up to %.0fs", sig.name, self.settings.worker.drain_timeout_s)
        self.stop()

    def _readiness(self) -> tuple[bool, str]:
        if self._stop.is_set():
            return False, "draining"
        if not self._assigned:
            return False, "no partitions assigned"
        return True, f"model {self.model_id}, {len(self._assigned)} partition(s)"

    def _new_producer(self) -> Producer:
        conf = producer_config(self.settings.kafka, self.bootstrap)
        if self.transactional:
            conf["transactional.id"] = self.settings.worker.transactional_id
        producer = Producer(conf)
        if self.transactional:
            producer.init_transactions(30)
        return producer

    def _new_consumer(self) -> Consumer:
        conf = consumer_config(self.settings.kafka, bootstrap=self.bootstrap)
        if self.settings.worker.instance_id:
            conf["group.instance.id"] = self.settings.worker.instance_id
        if self.transactional:
            conf["isolation.level"] = "read_committed"
        consumer = Consumer(conf)
        consumer.subscribe(
            [self.topics.listings], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        return consumer

    @property
    def consumer(self) -> Consumer:
        """The live consumer (only while running)."""
        if self._consumer is None:
            raise WorkerError("the consumer is not running")
        return self._consumer

    @property
    def producer(self) -> Producer:
        """The live producer (only while running)."""
        if self._producer is None:
            raise WorkerError("the producer is not running")
        return self._producer

    async def _kcall(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a consumer call on the Kafka thread (never from inside a rebalance callback)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._kafka, lambda: fn(*args, **kwargs))

    # -- the consume loop -----------------------------------------------------------------------

    async def _consume_loop(self) -> None:
        consumer = self.consumer
        last_commit = time.monotonic()
        interval = (
            self.settings.worker.transaction_interval_ms
            if self.transactional
            else self.settings.worker.commit_interval_ms
        ) / 1000
        while not self._stop.is_set():
            self._last_turn = time.monotonic()
            if self._fatal is not None:
                raise WorkerError(f"cannot go on: {self._fatal}")
            await self._backpressure()
            room = max(1, self.settings.batch.max_in_flight - self._tracker.in_flight())
            messages = await self._kcall(consumer.consume, min(500, room), 0.1)
            for message in messages:
                self._dispatch(message)
            if time.monotonic() - last_commit >= interval:
                last_commit = time.monotonic()
                if self.transactional:
                    await self._commit_transaction()
                else:
                    await self._commit()
            if not messages:
                await asyncio.sleep(0)  # let tasks run between empty polls

    def _dispatch(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise WorkerError(f"fatal consumer error: {error}")
            if error.code() != KafkaError._PARTITION_EOF:
                logger.warning("consumer error: %s", error)
            return
        tp = (message.topic(), message.partition())
        if tp not in self._assigned:
            return  # fetched before a revoke; the new owner reads it again
        self.metrics.consumed.labels(tp[0]).inc()
        job = _Job(tp, message.offset() or 0, message)
        self._tracker.start(tp, job.offset)
        self._jobs.setdefault(tp, {})[job.offset] = job
        self.metrics.in_flight.inc()
        job.task = asyncio.get_running_loop().create_task(self._process(job), name=f"listing {tp}@{job.offset}")

    async def _backpressure(self) -> None:
        in_flight = self._tracker.in_flight()
        limit = self.settings.batch.max_in_flight
        if not self._paused and in_flight >= limit:
            self._paused = True
            count = await self._kcall(self._pause_all)
            self.metrics.pauses.inc()
            logger.info("paused %d partition(s): %d listings in flight", count, in_flight)
        elif self._paused and in_flight <= limit // 2:
            self._paused = False
            await self._kcall(self._resume_all)
            self.metrics.paused.set(0)
            logger.info("resumed partitions: %d listings in flight", in_flight)

    def _pause_all(self) -> int:
        partitions = self.consumer.assignment()
        if partitions:
            self.consumer.pause(partitions)
        self.metrics.paused.set(len(partitions))
        return len(partitions)

    def _resume_all(self) -> None:
        partitions = self.consumer.assignment()
        if partitions:
            self.consumer.resume(partitions)

    # -- one listing ----------------------------------------------------------------------------

    async def _process(self, job: _Job) -> None:
        try:
            await self._handle(job)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # a bug must not take the stream down: this record becomes a dead letter
            logger.exception("unexpected failure on a record", extra=job.context)
            job.outputs = [self._dead_letter(job, "internal_error", exc)]
        self._ready_job(job)

    async def _handle(self, job: _Job) -> None:
        try:
            listing = self.codec.decode("listing_event", job.message.value())
            _validate(listing)
        except DecodeError as exc:
            job.outputs.append(self._dead_letter(job, "undecodable", exc))
            return
        except InvalidEventError as exc:
            job.outputs.append(self._dead_letter(job, "invalid_event", exc))
            return
        listing_id = listing["listing_id"]
        previous = self._listing_tail.get(listing_id)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._listing_tail[listing_id] = mine
        try:
            images: list[ImageOutcome] = []
            fresh = False
            if listing["operation"] == "UPSERT":
                images, fresh = await self._tag_images(listing)
            if previous is not None:  # publish a listing's versions in the order they were consumed
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(previous)
            await self._publish(job, listing, images, fresh)
        finally:
            if not mine.done():
                mine.set_result(None)
            if self._listing_tail.get(listing_id) is mine:
                del self._listing_tail[listing_id]

    async def _publish(self, job: _Job, listing: dict[str, Any], images: list[ImageOutcome], fresh: bool) -> None:
        listing_id, version = listing["listing_id"], int(listing["listing_version"])
        last = await self._store.last_version(listing_id)
        if last is not None and version < last:
            logger.info(
                "skipping version %d of %s: version %d is already published",
                version,
                listing_id,
                last,
                extra={**job.context, "listing_id": listing_id},
            )
            self.metrics.listings.labels("stale").inc()
            return
        self._store.note_version(listing_id, version)
        key = listing_id.encode()
        record_version = self._version_recorder(listing_id, version)
        if listing["operation"] == "DELETE":
            job.outputs.append(_Output(self.topics.attributes, key, None, record_version))
            self.metrics.listings.labels("deleted").inc()
            return
        decision = decide(
            self.taxonomy,
            listing["category_path"],
            images,
            self.thresholds,
            listing.get("declared_attributes") or {},
            fresh=fresh,
        )
        now = now_millis()
        source_time = listing["event_time"]
        source_ms = to_millis(source_time)
        image_records = [image.record() for image in images]
        event = {
            "schema_version": SCHEMA_VERSION,
            "event_id": attribute_event_id(listing_id, version, self.model_id),
            "listing_id": listing_id,
            "listing_version": version,
            "model_id": self.model_id,
            "category_group": decision.group,
            "attributes": decision.attributes,
            "images": image_records,
            "review_pending": decision.review_pending,
            "processing_latency_ms": max(0, now - source_ms),
            "source_event_time": source_time,
            "event_time": now,
        }

        def acked() -> None:
            record_version()
            self.metrics.end_to_end.observe(max(0.0, time.time() - source_ms / 1000))

        job.outputs.append(_Output(self.topics.attributes, key, self._encode("attribute_event", event), acked))
        if decision.review_pending:
            request = {
                "schema_version": SCHEMA_VERSION,
                "event_id": review_request_id(listing_id, version, self.model_id),
                "listing_id": listing_id,
                "listing_version": version,
                "merchant_id": listing["merchant_id"],
                "category_path": listing["category_path"],
                "category_group": decision.group,
                "title": listing.get("title"),
                "model_id": self.model_id,
                "images": image_records,
                "accepted": decision.attributes,
                "uncertain": decision.uncertain,
                "source_event_time": source_time,
                "event_time": now,
            }
            job.outputs.append(_Output(self.topics.review, key, self._encode("review_request", request)))
        usable = any(image.outcome in ("TAGGED", "CACHE_HIT") for image in images)
        result = "no_group" if decision.group is None else "review" if decision.review_pending else "tagged"
        self.metrics.listings.labels(result if usable or decision.group is None else "no_usable_image").inc()

    def _version_recorder(self, listing_id: str, version: int) -> Callable[[], None]:
        def record() -> None:
            self._background(self._store.record_version(listing_id, version))

        return record

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a fire-and-forget coroutine, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _encode(self, name: str, record: dict[str, Any]) -> bytes:
        return self.codec.encode(name, record, topic=None)

    def _dead_letter(self, job: _Job, reason: str, exc: BaseException) -> _Output:
        message = job.message
        timestamp_type, timestamp = message.timestamp()
        headers = [{"key": str(k), "value": v} for k, v in _headers(message)]
        record = {
            "schema_version": SCHEMA_VERSION,
            "event_id": dead_letter_id(job.tp[0], job.tp[1], job.offset),
            "original_topic": job.tp[0],
            "original_partition": job.tp[1],
            "original_offset": job.offset,
            "original_timestamp": timestamp if timestamp_type != 0 and timestamp >= 0 else None,
            "original_key": message.key(),
            "original_value": message.value(),
            "original_headers": headers,
            "reason": reason,
            "error_class": type(exc).__name__,
            "error_message": str(exc)[:2000],
            "worker_id": self.worker_id,
            "event_time": now_millis(),
        }
        logger.warning("dead letter (%s): %s", reason, exc, extra=job.context)
        self.metrics.dead_letters.labels(reason).inc()
        self.metrics.listings.labels("dead_letter").inc()
        return _Output(self.topics.dlq, message.key() or b"", self._encode("dead_letter", record))

    # -- images: fetch, hash, cache, batch ------------------------------------------------------

    async def _tag_images(self, listing: dict[str, Any]) -> tuple[list[ImageOutcome], bool]:
        urls: list[str] = list(listing["image_urls"])
        limit = self.settings.worker.max_images
        async with self._image_slots.hold(len(urls[:limit])):  # bounds the image bytes held in memory
            fetched = await asyncio.gather(*(self._fetcher.fetch(url) for url in urls[:limit]))
            hashes = unique(r.content_hash for r in fetched if r.ok and r.content_hash)
            computed = await self._predictions(hashes, {r.content_hash: r for r in fetched if r.content_hash})
        outcomes: list[ImageOutcome] = []
        fresh = False
        for result in fetched:
            if not result.ok or result.content_hash is None:
                outcomes.append(ImageOutcome(result.url, result.outcome.value, None, result.reason))
                continue
            c = computed[result.content_hash]
            fresh = fresh or c.outcome == "TAGGED"
            outcomes.append(ImageOutcome(result.url, c.outcome, result.content_hash, c.reason, c.probabilities))
        for url in urls[limit:]:
            reason = f"not fetched: more than {limit} images in the listing"
            outcomes.append(ImageOutcome(url, FetchOutcome.FETCH_FAILED.value, None, reason))
        return outcomes, fresh

    async def _predictions(self, hashes: list[str], results: dict[str, FetchResult]) -> dict[str, _Computed]:
        """Probabilities per hash: shared with identical images in flight, else from the cache, else the model."""
        loop = asyncio.get_running_loop()
        waiting = {h: self._computing[h] for h in hashes if h in self._computing}
        self.metrics.dedup.inc(len(waiting))
        mine = {h: loop.create_future() for h in hashes if h not in waiting}
        self._computing.update(mine)
        try:
            cached = await self._store.get_predictions(list(mine))
            for h, probs in cached.items():
                mine[h].set_result(_Computed(probs, "CACHE_HIT"))
            misses = [h for h in mine if h not in cached]
            computed = await asyncio.gather(*(self._infer(results[h].data or b"") for h in misses))
            fresh = {h: c.probabilities for h, c in zip(misses, computed, strict=True) if c.probabilities}
            await self._store.put_predictions(fresh)
            for h, c in zip(misses, computed, strict=True):
                mine[h].set_result(c)
        except BaseException as exc:
            for future in mine.values():
                if not future.done():
                    future.set_exception(exc) if not isinstance(exc, asyncio.CancelledError) else future.cancel()
            raise
        finally:
            for h, future in mine.items():
                if self._computing.get(h) is future:
                    del self._computing[h]
        out = {h: f.result() for h, f in mine.items()}
        for h, future in waiting.items():
            try:
                shared = await asyncio.shield(future)
            except (asyncio.CancelledError, Exception):  # the other listing was dropped: do it ourselves
                shared = await self._infer(results[h].data or b"")
            out[h] = shared
        return out

    async def _infer(self, data: bytes) -> _Computed:
        loop = asyncio.get_running_loop()
        try:
            tensor = await loop.run_in_executor(self._decode_pool, self.predictor.preprocess, data)
        except ImageError as exc:
            return _Computed(None, "DECODE_FAILED", str(exc))
        try:
            probs = await self._batcher.submit(tensor)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("model failed on an image")
            return _Computed(None, "UNKNOWN", f"model failed: {type(exc).__name__}: {exc}")
        return _Computed(probs, "TAGGED")

    def fetched(self, result: FetchResult) -> None:
        """Fetch observer: outcome counts and latency."""
        self.metrics.fetches.labels(result.outcome.value).inc()
        self.metrics.fetch_seconds.observe(result.seconds)

    def _batch_done(self, size: int, seconds: float) -> None:
        self.metrics.inferred.inc(size)
        self.metrics.batch_size.observe(size)
        self.metrics.inference_seconds.observe(seconds)

    # -- outputs and offsets --------------------------------------------------------------------

    def _ready_job(self, job: _Job) -> None:
        """The job's outputs are decided: produce them (at-least-once) or queue them for a transaction."""
        if job.finished or job.tp not in self._assigned:
            return
        if self.transactional:
            self._ready.append(job)
            self._finish(job)
            return
        for output in job.outputs:
            self._produce(job, output)
        if job.pending == 0:
            self._finish(job)

    def _produce(self, job: _Job, output: _Output) -> None:
        producer = self.producer
        job.pending += 1

        def delivered(err: KafkaError | None, _: Message) -> None:
            if err is not None:
                self._fatal = WorkerError(f"output to {output.topic} not acknowledged: {err}")
                logger.error("delivery failed: %s; the worker stops without committing", err, extra=job.context)
                return
            self.metrics.produced.labels(output.topic).inc()
            if output.on_ack is not None:
                output.on_ack()
            job.pending -= 1
            if job.pending == 0:
                self._finish(job)

        while True:
            try:
                producer.produce(output.topic, value=output.value, key=output.key, on_delivery=delivered)
                return
            except BufferError:
                producer.poll(0.05)  # the local queue is full: serve delivery reports, then retry

    def _finish(self, job: _Job) -> None:
        if job.finished:
            return
        job.finished = True
        self._tracker.finish(job.tp, job.offset)
        jobs = self._jobs.get(job.tp)
        if jobs is not None:
            jobs.pop(job.offset, None)
        self.metrics.in_flight.dec()

    async def _serve_producer(self) -> None:
        while True:
            if self._producer is not None:
                self._producer.poll(0)
            await asyncio.sleep(0.005)

    async def _commit(self) -> None:
        positions = self._tracker.committable()
        if positions:
            committed = await self._kcall(self._commit_positions, positions)
            self._tracker.mark_committed(committed)

    def _commit_positions(self, positions: dict[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
        """Kafka thread: commit positions of partitions still owned; returns what the broker accepted."""
        owned = {(p.topic, p.partition) for p in self.consumer.assignment()}
        wanted = {tp: pos for tp, pos in positions.items() if tp in owned}
        if not wanted:
            return {}
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in wanted.items()], asynchronous=False)
        except KafkaException as exc:
            logger.warning("offset commit failed (will retry): %s", exc)
            return {}
        self.metrics.commits.inc()
        return wanted

    # -- transactional mode ---------------------------------------------------------------------

    async def _commit_transaction(self) -> None:
        positions = self._tracker.committable()
        if not positions:
            return
        emit = sorted(
            (j for j in self._ready if j.tp in positions and j.offset < positions[j.tp]),
            key=lambda j: (j.tp, j.offset),
        )
        producer = self.producer
        try:
            producer.begin_transaction()
            for job in emit:
                for output in job.outputs:
                    producer.produce(output.topic, value=output.value, key=output.key)
            offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
            producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
        except KafkaException as exc:
            await self._transaction_failed(exc)
            return
        emitted = set(map(id, emit))
        self._ready = [j for j in self._ready if id(j) not in emitted]
        self._tracker.mark_committed(positions)
        self.metrics.commits.inc()
        for job in emit:
            for output in job.outputs:
                self.metrics.produced.labels(output.topic).inc()
                if output.on_ack is not None:
                    output.on_ack()

    async def _transaction_failed(self, exc: KafkaException) -> None:
        error = exc.args[0] if exc.args else None
        fatal = bool(getattr(error, "fatal", lambda: False)())
        logger.warning(
            "transaction failed (%s): %s; rewinding to the last committed offsets",
            "fatal" if fatal else "abortable",
            exc,
        )
        if fatal:
            self.producer.flush(5)
            self._producer = self._new_producer()
        else:
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(30)
        dropped = set(self._assigned)
        await self._drop(dropped)
        await self._kcall(self._rewind)

    def _rewind(self) -> None:
        """Kafka thread: seek every owned partition back to its committed offset."""
        consumer = self.consumer
        for committed in consumer.committed(consumer.assignment(), timeout=30):
            offset = committed.offset if committed.offset >= 0 else -2  # OFFSET_BEGINNING when none
            consumer.seek(TopicPartition(committed.topic, committed.partition, offset))

    # -- rebalances -----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(p.topic, p.partition) for p in partitions}
        self._assigned |= keys
        self.metrics.assigned.set(len(self._assigned))
        self.metrics.rebalances.labels("assign").inc()
        if self._paused and partitions:
            consumer.pause(partitions)
        logger.info("assigned %s", sorted(keys))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, partitions, lost=False)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, partitions, lost=True)

    def _release(self, consumer: Consumer, partitions: list[TopicPartition], *, lost: bool) -> None:
        """Kafka thread: finish (or drop) the partitions' work on the loop, commit what finished."""
        keys = {(p.topic, p.partition) for p in partitions}
        self.metrics.rebalances.labels("lost" if lost else "revoke").inc()
        if not keys or self._loop is None:
            return
        wait_s = 0.0 if lost or self.transactional else self.settings.worker.revoke_timeout_s
        future = asyncio.run_coroutine_threadsafe(self._settle(keys, wait_s), self._loop)
        try:
            positions = future.result(timeout=wait_s + 30)
        except Exception as exc:  # the loop is gone (shutdown): nothing more to finish
            logger.warning("could not settle revoked partitions: %s", exc)
            positions = {}
        self._assigned -= keys
        self.metrics.assigned.set(len(self._assigned))
        if positions and not lost and not self.transactional:
            try:
                consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()], asynchronous=False
                )
                self.metrics.commits.inc()
            except KafkaException as exc:
                logger.warning("commit on revoke failed: %s", exc)
        logger.info("%s %s", "lost" if lost else "revoked", sorted(keys))

    async def _settle(self, keys: set[TopicPartitionKey], wait_s: float) -> dict[TopicPartitionKey, int]:
        """Event loop: wait up to ``wait_s`` for the partitions' jobs, drop the rest, return commit positions."""
        deadline = time.monotonic() + wait_s
        while self._tracker.in_flight(keys) and time.monotonic() < deadline:
            if self._producer is not None:
                self._producer.poll(0)
            await asyncio.sleep(0.01)
        positions = self._tracker.committable(keys)
        await self._drop(keys)
        return positions

    async def _drop(self, keys: set[TopicPartitionKey]) -> None:
        """Forget the partitions' unfinished work: its offsets are not committed, so it will be redone."""
        tasks = []
        for tp in keys:
            for job in list(self._jobs.pop(tp, {}).values()):
                if not job.finished:
                    job.finished = True
                    self.metrics.in_flight.dec()
                if job.task is not None and not job.task.done():
                    job.task.cancel()
                    tasks.append(job.task)
        self._ready = [j for j in self._ready if j.tp not in keys]
        self._tracker.forget(keys)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- shutdown -------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        deadline = time.monotonic() + self.settings.worker.drain_timeout_s
        while self._tracker.in_flight() and time.monotonic() < deadline and self._fatal is None:
            await asyncio.sleep(0.02)
        if self.transactional and self._fatal is None and self._consumer is not None:
            await self._commit_transaction()
        leftover = self._tracker.in_flight()
        if leftover:
            logger.warning("dropping %d listing(s) still in flight; they will be redelivered", leftover)
        if self._producer is not None:
            remaining = max(1.0, deadline - time.monotonic())
            while len(self._producer) and remaining > 0:
                self._producer.poll(0.05)
                remaining -= 0.05
        if self._consumer is not None:
            if not self.transactional and self._fatal is None:
                await self._commit()
            await self._drop(set(self._jobs))
            await self._kcall(self._consumer.close)


class _Slots:
    """A counting limit whose holders take all their slots at once (no hold-and-wait, so no deadlock)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self._changed: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
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


def _validate(listing: dict[str, Any]) -> None:
    if not listing["listing_id"].strip():
        raise InvalidEventError("listing_id is empty")
    if listing["operation"] not in ("UPSERT", "DELETE"):
        raise InvalidEventError(f"operation {listing['operation']} is neither UPSERT nor DELETE")
    if listing["listing_version"] < 0:
        raise InvalidEventError(f"listing_version {listing['listing_version']} is negative")


def _headers(message: Message) -> list[tuple[str, bytes | None]]:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(str(k), v if isinstance(v, bytes | None) else str(v).encode()) for k, v in pairs]
