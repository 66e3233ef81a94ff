"""The stream worker: a thin composition of its parts, started and stopped as one ordered chain.

:mod:`streams.worker.assembly` builds the parts and starts them in order on one exit stack (its
docstring writes the order down; stopping runs it backwards, like faust's ``BootStrategy``). Then
the consumer loop runs until SIGTERM/SIGINT or a fatal error. Draining: stop polling, let in-flight
listings finish for ``drain_timeout_s``, commit (or commit the last transaction), drop the rest
(redelivered later), flush the producer, then the chain in reverse (the consumer leaves the group).
The exit code is 0 after a clean drain and 1 after a fatal error, with no commit past the record
that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time

import torch

from streams.codec import Codec
from streams.codec.wire import RegistryFactory
from streams.combine import resolve_thresholds
from streams.config import Settings
from streams.errors import FatalError
from streams.images import FetchResult
from streams.metrics import WorkerMetrics
from streams.threads import named_os_thread
from streams.worker.assembly import metrics_host, start_parts
from streams.worker.clients import ConsumerFactory, ProducerFactory
from streams.worker.consumer import ConsumerLoop
from streams.worker.health import HealthState
from streams.worker.jobs import WorkerError
from streams.worker.tagging import ImageSource
from tagger.predict import Predictor

__all__ = ["Worker", "metrics_host"]

logger = logging.getLogger(__name__)


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
        # SWATCH_MODEL_RUNTIME: auto serves torch on CUDA and ONNX Runtime on the CPU when installed
        # (tagger.predict.resolve_runtime); ONNX Runtime's intra-op threads follow torch's, set above.
        # Loaded under the model thread's name: the runtime's thread pools (ONNX Runtime starts its
        # own here) inherit it, so /proc and the benchmarks count them as the model.
        with named_os_thread("swatch-model"):
            self.predictor = predictor or Predictor.load(
                settings.model.dir, settings.model.device, runtime=settings.model.runtime
            )
        logger.info(
            "serving model %s with the %s runtime on %s, %d threads (runtime setting %s)",
            self.predictor.model_id,
            self.predictor.runtime,
            self.predictor.device,
            self.predictor.threads,
            settings.model.runtime,
        )
        self.model_id = self.predictor.model_id
        self.taxonomy = self.predictor.taxonomy
        self.thresholds = resolve_thresholds(
            self.taxonomy, self.predictor.card.thresholds, dict(settings.model.thresholds)
        )
        self.codec = Codec.from_settings(settings.registry, registry_factory)
        self.health = HealthState(
            loop_stall_s=settings.worker.loop_stall_s,
            stuck_after_s=settings.worker.stuck_after_s,
            gauge=self.metrics.degraded,
        )
        self.metrics_port: int | None = None
        self.factories = (consumer_factory, producer_factory)
        self.image_source = image_source
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

    def stop_requested(self) -> bool:
        """Whether :meth:`stop` (or a fatal error) asked the worker to stop."""
        return self._stop.is_set()

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
                consumer_loop = await start_parts(self, chain)
                # Half a million objects live from start-up (torch, the runtime, the model): a full
                # collection walks them all (0.2-0.7 s), and the first one came while the first
                # listings waited. Frozen, later collections only look at what was made since.
                gc.collect()
                gc.freeze()
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

    def _signalled(self, sig: signal.Signals) -> None:
        logger.info("%s received: draining for up to %.0fs", sig.name, self.settings.worker.drain_timeout_s)
        self.stop()

    # -- observers ---------------------------------------------------------------------------------

    def fetched(self, result: FetchResult) -> None:
        """Fetch observer: outcome counts and latency."""
        self.metrics.fetches.labels(result.outcome.value).inc()
        self.metrics.fetch_seconds.observe(result.seconds)

    def redis_state(self, problem: str | None) -> None:
        """Redis started failing (``problem``) or works again (None): shown in health and metrics."""
        if problem is None:
            self.health.recovered("redis")
        else:
            self.health.failing("redis", problem)

    def batch_done(self, size: int, seconds: float) -> None:
        """Model batch observer: images inferred, batch sizes and model time."""
        self.metrics.inferred.inc(size)
        self.metrics.batch_size.observe(size)
        self.metrics.inference_seconds.observe(seconds)
