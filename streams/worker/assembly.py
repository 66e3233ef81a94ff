"""The worker's parts, built and started in order on one exit stack (which stops them in reverse).

Start order, like faust's ``BootStrategy`` (the stop order is its reverse):

1. the health server (first up, last down: probes answer during start-up and draining), the
   event loop's heartbeat and the heap trimmer (:mod:`streams.memory`);
2. the Redis store (prediction cache and version store; fails open);
3. the micro-batcher (model threads, warmed up with a full batch before anything is consumed), the
   image source and the decode and registry thread pools;
4. the codec: with a registry, every output subject is registered (with its compatibility level)
   before anything is consumed; an unreachable registry is waited for, a refusal stops the worker;
5. the version gate, the pipeline, the delivery mode, the job runner and the consumer loop;
6. the Kafka clients (producer, then the consumer's subscription) and the producer's poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import torch

from streams.batcher import MicroBatcher, default_max_size
from streams.cache import RedisStore
from streams.codec import Codec
from streams.config import Settings
from streams.errors import RegistryUnavailableError
from streams.images import FetchResult, ImageFetcher
from streams.kafka import max_message_bytes
from streams.memory import trim_heap_every
from streams.metrics import WorkerMetrics
from streams.threads import named_pool
from streams.tracker import OffsetTracker
from streams.worker.clients import ConsumerFactory, KafkaClients, ProducerFactory
from streams.worker.consumer import ConsumerLoop
from streams.worker.delivery import AtLeastOnce, Delivery, backoff
from streams.worker.gate import VersionGate
from streams.worker.health import HealthServer, HealthState
from streams.worker.jobs import ErrorBudget, JobRunner
from streams.worker.letters import DeadLetters
from streams.worker.pipeline import Pipeline
from streams.worker.tagging import ImageSource, ImageTagger
from streams.worker.transactions import Transactional
from tagger.predict import Predictor
from tagger.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

OUTPUT_SCHEMAS = (("attribute_event", "attributes"), ("review_request", "review"), ("dead_letter", "dlq"))


class WorkerParts(Protocol):
    """What the assembly needs from the worker it builds parts for."""

    settings: Settings
    bootstrap: str | None
    redis_url: str | None
    worker_id: str
    model_id: str
    predictor: Predictor
    taxonomy: Taxonomy
    thresholds: dict[str, float]
    codec: Codec
    metrics: WorkerMetrics
    health: HealthState
    metrics_port: int | None
    factories: tuple[ConsumerFactory | None, ProducerFactory | None]
    image_source: ImageSource | None

    def fail(self, exc: BaseException) -> None:
        """Stop with exit code 1."""

    def stop_requested(self) -> bool:
        """Whether the worker was asked to stop."""

    def fetched(self, result: FetchResult) -> None:
        """Fetch observer."""

    def batch_done(self, size: int, seconds: float) -> None:
        """Model batch observer."""

    def redis_state(self, problem: str | None) -> None:
        """Redis started failing (``problem``) or works again (None)."""


def metrics_host(configured: str | None) -> str:
    """The probes' address: as configured, else all interfaces in Kubernetes and loopback elsewhere."""
    if configured:
        return configured
    return "0.0.0.0" if os.environ.get("KUBERNETES_SERVICE_HOST") else "127.0.0.1"  # noqa: S104


async def start_parts(w: WorkerParts, chain: contextlib.AsyncExitStack) -> ConsumerLoop | None:
    """Start the parts in the chain's order (stopped in reverse by ``chain``); None if stopped meanwhile."""
    settings = w.settings
    host = metrics_host(settings.worker.metrics_host)
    health_server = HealthServer(w.metrics, w.health, host, settings.worker.metrics_port)
    await health_server.start()
    chain.push_async_callback(health_server.stop)
    w.metrics_port = health_server.port
    _start_housekeeping(w, chain)

    namespace = settings.topics.attributes  # deployments sharing a Redis do not share versions
    store = RedisStore(
        w.redis_url,
        settings.redis,
        w.model_id,
        w.metrics,
        version_namespace=namespace,
        on_state=w.redis_state,
    )
    chain.push_async_callback(store.close)
    max_size = settings.batch.max_size or default_max_size(w.predictor.device.type)
    batcher: MicroBatcher[dict[str, list[float]]] = MicroBatcher(
        w.predictor.probabilities,
        max_size,
        settings.batch.max_wait_ms / 1000,
        on_batch=w.batch_done,
        concurrency=settings.batch.concurrency,
        warm_up=lambda: _warm_up(w.predictor, max_size),
    )
    batcher.start()
    chain.push_async_callback(batcher.close)
    await batcher.wait_warm()
    images = w.image_source or ImageFetcher(settings.fetch, observer=w, url_cache=True)
    await images.start()
    chain.push_async_callback(images.close)
    decode_pool = named_pool(settings.worker.preprocess_threads, "swatch-decode")
    chain.callback(decode_pool.shutdown, wait=False, cancel_futures=True)
    registry_pool = named_pool(1, "swatch-registry")
    chain.callback(registry_pool.shutdown, wait=False, cancel_futures=True)
    if not await _prepare_schemas(w, registry_pool):
        return None

    gate = VersionGate(store, w.metrics)
    chain.push_async_callback(gate.close)
    clients = KafkaClients(
        settings, w.bootstrap, consumer_factory=w.factories[0], producer_factory=w.factories[1]
    )
    tracker = OffsetTracker()
    letters = DeadLetters(settings.topics.dlq, w.worker_id, max_message_bytes(settings.kafka))
    tagger = ImageTagger(
        images,
        store,
        batcher,
        preprocess=w.predictor.preprocess,
        decode_pool=decode_pool,
        metrics=w.metrics,
        max_images=settings.worker.max_images,
        max_images_in_flight=settings.worker.max_images_in_flight,
    )
    pipeline = Pipeline(
        codec=w.codec,
        topics=settings.topics,
        model_id=w.model_id,
        taxonomy=w.taxonomy,
        thresholds=w.thresholds,
        tagger=tagger,
        gate=gate,
        letters=letters,
        metrics=w.metrics,
        registry_pool=registry_pool,
    )
    holder: list[ConsumerLoop] = []
    delivery: Delivery
    if clients.transactional:
        delivery = Transactional(clients, tracker, w.metrics, w.health, lambda: _rewind(holder[0]))
    else:
        delivery = AtLeastOnce(clients, tracker, w.metrics, w.health)
    budget = ErrorBudget(settings.worker.max_internal_errors, settings.worker.internal_error_window_s)
    runner = JobRunner(
        pipeline,
        delivery,
        tracker,
        w.metrics,
        w.health,
        fail=w.fail,
        budget=budget,
        listing_retries=settings.worker.listing_retries,
    )
    consumer_loop = ConsumerLoop(
        settings,
        clients,
        runner=runner,
        tracker=tracker,
        delivery=delivery,
        metrics=w.metrics,
        health=w.health,
    )
    holder.append(consumer_loop)
    chain.push_async_callback(clients.stop)
    await clients.start(consumer_loop.on_assign, consumer_loop.on_revoke, consumer_loop.on_lost)
    poller = asyncio.get_running_loop().create_task(_serve_producer(clients), name="producer-poll")
    chain.push_async_callback(_cancel, poller)
    w.health.ready = True
    w.health.detail = f"model {w.model_id} ({w.predictor.runtime})"
    logger.info(
        "worker %s consuming %s with model %s (metrics on port %s)",
        w.worker_id,
        settings.topics.listings,
        w.model_id,
        w.metrics_port,
    )
    return consumer_loop


def _warm_up(predictor: Predictor, max_size: int) -> None:
    """A full batch twice and a lone image, on the model thread: the first calls of a runtime (and of
    each batch shape) allocate and plan, and took a second or more of the first listings' latency."""
    size = predictor.preprocess_config.image_size
    started = time.perf_counter()
    for n in (max_size, max_size, 1):
        predictor.probabilities(torch.zeros(n, 3, size, size))
    logger.info("model warmed up in %.2fs", time.perf_counter() - started)


async def _prepare_schemas(w: WorkerParts, pool: ThreadPoolExecutor) -> bool:
    """Register every output subject before consuming; wait for an unreachable registry."""
    if w.codec.registry is None:
        return True
    loop = asyncio.get_running_loop()
    attempt = 0
    topics = w.settings.topics
    for name, kind in OUTPUT_SCHEMAS:
        while not w.stop_requested():
            try:
                await loop.run_in_executor(pool, w.codec.prepare, name, getattr(topics, kind))
                break
            except RegistryUnavailableError as exc:
                w.health.detail = "waiting for the schema registry"
                w.health.failing("registry", str(exc))
                delay = backoff(attempt)
                attempt += 1
                logger.warning("%s; retry %d in %.2fs", exc, attempt, delay)
                await asyncio.sleep(delay)
    w.health.recovered("registry")
    return not w.stop_requested()


async def _rewind(consumer_loop: ConsumerLoop) -> None:
    """Transactional mode after an abort: drop all work and seek back to the committed offsets."""
    await consumer_loop.runner.drop(set(consumer_loop.assigned))
    delivery = consumer_loop.delivery
    if isinstance(delivery, Transactional):
        await consumer_loop.clients.call(delivery.rewind_consumer)


def _start_housekeeping(w: WorkerParts, chain: contextlib.AsyncExitStack) -> None:
    """The event loop's heartbeat (for /healthz) and the heap trimmer, cancelled on the way out."""
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(_heartbeat(w), name="heartbeat")]
    if w.settings.worker.heap_trim_s > 0:
        tasks.append(loop.create_task(trim_heap_every(w.settings.worker.heap_trim_s), name="heap-trim"))
    for task in tasks:
        chain.push_async_callback(_cancel, task)


async def _heartbeat(w: WorkerParts) -> None:
    while True:
        w.health.tick()
        await asyncio.sleep(0.25)


async def _serve_producer(clients: KafkaClients) -> None:
    while True:
        producer = clients.producer_or_none
        if producer is not None:
            producer.poll(0)
        await asyncio.sleep(0.005)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
