"""The stream worker: a thin composition of its parts, started and stopped as one ordered chain.

Start order (stop runs it backwards, like faust's ``BootStrategy``):

1. the health server (first up, last down: probes answer during start-up and draining);
2. the Redis store (prediction cache and version store; fails open);
3. the micro-batcher (model thread) and the image source;
4. the codec: with a registry, every output subject is registered (with its compatibility level)
   before anything is consumed; an unreachable registry is waited for, a refusal stops the worker;
5. the Kafka clients (producer, then the consumer's subscription) and the producer's poller.

Then the consumer loop runs until SIGTERM/SIGINT or a fatal error. Draining: stop polling, let
in-flight listings finish for ``drain_timeout_s``, commit (or commit the last transaction), drop the
rest (redelivered later), close the consumer (leaving the group), flush the producer, then the
chain above in reverse. The exit code is 0 after a clean drain and 1 after a fatal error, with no
commit past the record that caused it.
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
from concurrent.futures import ThreadPoolExecutor

import torch

from streams.batcher import MicroBatcher
from streams.cache import RedisStore
from streams.codec import Codec
from streams.codec.wire import RegistryFactory
from streams.combine import resolve_thresholds
from streams.config import Settings
from streams.errors import FatalError, RegistryUnavailableError
from streams.images import FetchResult, ImageFetcher
from streams.kafka import max_message_bytes
from streams.metrics import WorkerMetrics
from streams.tracker import OffsetTracker
from streams.worker.clients import ConsumerFactory, KafkaClients, ProducerFactory
from streams.worker.consumer import ConsumerLoop
from streams.worker.delivery import AtLeastOnce, Delivery, backoff
from streams.worker.gate import VersionGate
from streams.worker.health import HealthServer, HealthState
from streams.worker.jobs import ErrorBudget, JobRunner, WorkerError
from streams.worker.letters import DeadLetters
from streams.worker.pipeline import Pipeline
from streams.worker.tagging import ImageSource, ImageTagger
from streams.worker.transactions import Transactional
from tagger.predict import Predictor

logger = logging.getLogger(__name__)

OUTPUT_SCHEMAS = (("attribute_event", "attributes"), ("review_request", "review"), ("dead_letter", "dlq"))


def metrics_host(configured: str | None) -> str:
    """The probes' address: as configured, else all interfaces in Kubernetes and loopback elsewhere."""
    if configured:
        return configured
    return "0.0.0.0" if os.environ.get("KUBERNETES_SERVICE_HOST") else "127.0.0.1"  # noqa: S104


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
        consumer_factory: ConsumerFactory | None = None,
        producer_factory: ProducerFactory | None = None,
        registry_factory: RegistryFactory | None = None,
        image_source: ImageSource | None = None,
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
        self.codec = Codec.from_settings(settings.registry, registry_factory)
        self.health = HealthState(
            loop_stall_s=settings.worker.loop_stall_s, stuck_after_s=settings.worker.stuck_after_s
        )
        self.metrics_port: int | None = None
        self._factories = (consumer_factory, producer_factory)
        self._image_source = image_source
        self._stop = threading.Event()
        self._fatal: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- control ------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`stop`); returns the exit code (0 after a clean drain)."""
        return asyncio.run(self.run_async())

    def stop(self) -> None:
        """Ask the worker to drain and exit; safe from any thread and from signal handlers."""
        self._stop.set()

    def fail(self, exc: BaseException) -> None:
        """Stop with exit code 1 and no commit past the work in flight (first failure wins)."""
        if self._fatal is None:
            self._fatal = exc
            self.health.fatal = f"{type(exc).__name__}: {exc}"
            logger.error("worker stopping after a fatal error: %s", exc)
        self._stop.set()

    @property
    def failed(self) -> bool:
        """Whether a fatal error stopped (or is stopping) the worker."""
        return self._fatal is not None

    # -- the chain ---------------------------------------------------------------------------------

    async def run_async(self) -> int:
        """The worker's main coroutine: start the chain, consume, drain, stop the chain."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._signalled, sig)
        async with contextlib.AsyncExitStack() as chain:
            try:
                consumer_loop = await self._start(chain)
                if consumer_loop is not None:
                    await self._consume(consumer_loop)
            except (FatalError, WorkerError) as exc:
                self.fail(exc)
            except Exception as exc:  # anything else escaping the loop is a bug: stop, commit nothing more
                logger.exception("worker failed")
                self.fail(exc)
        code = 1 if self._fatal is not None else 0
        logger.info("worker %s stopped (exit %d)", self.worker_id, code)
        return code

    async def _start(self, chain: contextlib.AsyncExitStack) -> ConsumerLoop | None:
        settings = self.settings
        host = metrics_host(settings.worker.metrics_host)
        health_server = HealthServer(self.metrics, self.health, host, settings.worker.metrics_port)
        await health_server.start()
        chain.push_async_callback(health_server.stop)
        self.metrics_port = health_server.port
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(), name="heartbeat")
        chain.push_async_callback(_cancel, heartbeat)

        namespace = settings.topics.attributes  # deployments sharing a Redis do not share versions
        store = RedisStore(
            self.redis_url,
            settings.redis,
            self.model_id,
            self.metrics,
            version_namespace=namespace,
            on_state=self._redis_state,
        )
        chain.push_async_callback(store.close)
        batcher: MicroBatcher[dict[str, list[float]]] = MicroBatcher(
            self.predictor.probabilities,
            settings.batch.max_size,
            settings.batch.max_wait_ms / 1000,
            on_batch=self._batch_done,
        )
        batcher.start()
        chain.push_async_callback(batcher.close)
        images = self._image_source or ImageFetcher(settings.fetch, observer=self)
        await images.start()
        chain.push_async_callback(images.close)
        decode_pool = ThreadPoolExecutor(settings.worker.preprocess_threads, thread_name_prefix="swatch-decode")
        chain.callback(decode_pool.shutdown, wait=False, cancel_futures=True)
        registry_pool = ThreadPoolExecutor(1, thread_name_prefix="swatch-registry")
        chain.callback(registry_pool.shutdown, wait=False, cancel_futures=True)
        if not await self._prepare_schemas(registry_pool):
            return None

        gate = VersionGate(store, self.metrics)
        chain.push_async_callback(gate.close)
        clients = KafkaClients(
            settings, self.bootstrap, consumer_factory=self._factories[0], producer_factory=self._factories[1]
        )
        tracker = OffsetTracker()
        letters = DeadLetters(settings.topics.dlq, self.worker_id, max_message_bytes(settings.kafka))
        tagger = ImageTagger(
            images,
            store,
            batcher,
            preprocess=self.predictor.preprocess,
            decode_pool=decode_pool,
            metrics=self.metrics,
            max_images=settings.worker.max_images,
            max_images_in_flight=settings.worker.max_images_in_flight,
        )
        pipeline = Pipeline(
            codec=self.codec,
            topics=settings.topics,
            model_id=self.model_id,
            taxonomy=self.taxonomy,
            thresholds=self.thresholds,
            tagger=tagger,
            gate=gate,
            letters=letters,
            metrics=self.metrics,
            registry_pool=registry_pool,
        )
        holder: list[ConsumerLoop] = []
        delivery: Delivery
        if clients.transactional:
            delivery = Transactional(clients, tracker, self.metrics, self.health, lambda: self._rewind(holder[0]))
        else:
            delivery = AtLeastOnce(clients, tracker, self.metrics, self.health)
        budget = ErrorBudget(settings.worker.max_internal_errors, settings.worker.internal_error_window_s)
        runner = JobRunner(
            pipeline,
            delivery,
            tracker,
            self.metrics,
            self.health,
            fail=self.fail,
            budget=budget,
            listing_retries=settings.worker.listing_retries,
        )
        consumer_loop = ConsumerLoop(
            settings,
            clients,
            runner=runner,
            tracker=tracker,
            delivery=delivery,
            metrics=self.metrics,
            health=self.health,
        )
        holder.append(consumer_loop)
        chain.push_async_callback(clients.stop)
        await clients.start(consumer_loop.on_assign, consumer_loop.on_revoke, consumer_loop.on_lost)
        poller = asyncio.get_running_loop().create_task(self._serve_producer(clients), name="producer-poll")
        chain.push_async_callback(_cancel, poller)
        self.health.ready = True
        self.health.detail = f"model {self.model_id}"
        logger.info(
            "worker %s consuming %s with model %s (metrics on port %s)",
            self.worker_id,
            settings.topics.listings,
            self.model_id,
            self.metrics_port,
        )
        return consumer_loop

    async def _consume(self, consumer_loop: ConsumerLoop) -> None:
        try:
            await consumer_loop.run(self._stop.is_set)
        finally:
            self.health.draining = True
            await self._drain(consumer_loop)

    async def _drain(self, consumer_loop: ConsumerLoop) -> None:
        """Finish in-flight work within the drain timeout, commit it, drop the rest, leave the group."""
        tracker, runner, clients = consumer_loop.tracker, consumer_loop.runner, consumer_loop.clients
        deadline = time.monotonic() + self.settings.worker.drain_timeout_s
        while tracker.in_flight() and time.monotonic() < deadline and self._fatal is None:
            await asyncio.sleep(0.02)
        if self._fatal is None:
            await consumer_loop.delivery.commit(final=True)
        leftover = tracker.in_flight()
        if leftover:
            logger.warning("dropping %d listing(s) still in flight; they will be redelivered", leftover)
        await runner.drop(runner.partitions())
        await clients.flush(max(1.0, deadline - time.monotonic()))

    async def _prepare_schemas(self, pool: ThreadPoolExecutor) -> bool:
        """Register every output subject before consuming; wait for an unreachable registry."""
        if self.codec.registry is None:
            return True
        loop = asyncio.get_running_loop()
        attempt = 0
        topics = self.settings.topics
        for name, kind in OUTPUT_SCHEMAS:
            while not self._stop.is_set():
                try:
                    await loop.run_in_executor(pool, self.codec.prepare, name, getattr(topics, kind))
                    break
                except RegistryUnavailableError as exc:
                    self.health.detail = "waiting for the schema registry"
                    self.health.failing("registry", str(exc))
                    self.metrics.degraded.labels("registry").set(1)
                    delay = backoff(attempt)
                    attempt += 1
                    logger.warning("%s; retry %d in %.2fs", exc, attempt, delay)
                    await asyncio.sleep(delay)
        self.health.recovered("registry")
        self.metrics.degraded.labels("registry").set(0)
        return not self._stop.is_set()

    async def _rewind(self, consumer_loop: ConsumerLoop) -> None:
        """Transactional mode after an abort: drop all work and seek back to the committed offsets."""
        await consumer_loop.runner.drop(set(consumer_loop.assigned))
        delivery = consumer_loop.delivery
        if isinstance(delivery, Transactional):
            await consumer_loop.clients.call(delivery.rewind_consumer)

    async def _heartbeat(self) -> None:
        while True:
            self.health.tick()
            await asyncio.sleep(0.25)

    @staticmethod
    async def _serve_producer(clients: KafkaClients) -> None:
        while True:
            producer = clients.producer_or_none
            if producer is not None:
                producer.poll(0)
            await asyncio.sleep(0.005)

    def _signalled(self, sig: signal.Signals) -> None:
        logger.info("%s received: draining for up to %.0fs", sig.name, self.settings.worker.drain_timeout_s)
        self.stop()

    # -- observers ---------------------------------------------------------------------------------

    def fetched(self, result: FetchResult) -> None:
        """Fetch observer: outcome counts and latency."""
        self.metrics.fetches.labels(result.outcome.value).inc()
        self.metrics.fetch_seconds.observe(result.seconds)

    def _redis_state(self, problem: str | None) -> None:
        """Redis started failing (``problem``) or works again (None): shown in health and metrics."""
        if problem is None:
            self.health.recovered("redis")
        else:
            self.health.failing("redis", problem)
        self.metrics.degraded.labels("redis").set(0 if problem is None else 1)

    def _batch_done(self, size: int, seconds: float) -> None:
        self.metrics.inferred.inc(size)
        self.metrics.batch_size.observe(size)
        self.metrics.inference_seconds.observe(seconds)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

