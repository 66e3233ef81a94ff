"""Micro-batching: images from any listing and partition share model batches.

A batch runs when it holds ``max_size`` images or when its first image has waited ``max_wait_s``.
``concurrency`` model threads (default one) each take their own batch from one thread-safe queue,
run it and hand the rows back to the event loop; so a busy model gets full batches and an idle one
answers a lone image after at most ``max_wait_s``. The event loop is never between two batches: a
model thread collects its next batch itself, and :meth:`MicroBatcher.run` has the decode thread
that preprocessed an image queue it for the model directly, so neither a batch nor an image waits
for a busy loop. On a busy CPU two single-threaded batches keep the cores fuller than one batch on
two threads, whose threads wait for each other whenever one is descheduled.

A batch that raises is run again one image at a time, so an image that makes the model fail (a
poison input) fails only its own caller, not every listing that happened to share its batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from streams.errors import SwatchError
from streams.threads import set_os_thread_name

logger = logging.getLogger(__name__)

R = TypeVar("R")


class PrepareError(SwatchError):
    """Preparing an image (``prepare`` of :meth:`MicroBatcher.run`) raised ``original``; the model never saw it."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"{type(original).__name__}: {original}")
        self.original = original


@dataclass(eq=False)
class _Item(Generic[R]):
    tensor: torch.Tensor
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop

    def settle(self, row: R | None = None, exc: BaseException | None = None) -> None:
        """Answer the caller on its own loop (from any thread); a caller that gave up is skipped."""
        self.loop.call_soon_threadsafe(_settle, self.future, row, exc)


def _settle(future: asyncio.Future[R], row: R | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(row)  # type: ignore[arg-type]


_STOP = None
CPU_BATCH = 8
CUDA_BATCH = 128


def default_max_size(device_type: str) -> int:
    """The batch size when none is configured: the fastest of `swatch bench model` on each device.

    On 2 cores EfficientNet-B0 at 224 px ran 184 images/s at batch 8 and 140 at batch 32 (ONNX
    Runtime, 2 threads; the demo model 348 at both): larger CPU batches fall out of the caches.
    """
    return CUDA_BATCH if device_type == "cuda" else CPU_BATCH


class MicroBatcher(Generic[R]):
    """Collects input tensors into batches and runs ``infer`` on each; callers await their own row."""

    def __init__(
        self,
        infer: Callable[[torch.Tensor], Sequence[R]],
        max_size: int,
        max_wait_s: float,
        *,
        on_batch: Callable[[int, float], None] | None = None,
        concurrency: int = 1,
        warm_up: Callable[[], object] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self._infer = infer
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.concurrency = concurrency
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._queue: queue.Queue[_Item[R] | None] = queue.Queue()
        self._warm_up = warm_up
        self._warm: list[threading.Event] = []
        self._threads: list[threading.Thread] = []
        self._in_flight: set[_Item[R]] = set()
        self._closed = False

    def start(self) -> None:
        """Start the model threads (each runs ``warm_up`` first, see :meth:`wait_warm`)."""
        for i in range(self.concurrency):
            warm = threading.Event()
            thread = threading.Thread(target=self._serve, args=(warm,), name=f"swatch-model_{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
            self._warm.append(warm)

    async def wait_warm(self) -> None:
        """Wait until every model thread has run ``warm_up`` (first calls allocate and plan; they are slow)."""
        loop = asyncio.get_running_loop()
        for warm in self._warm:
            await loop.run_in_executor(None, warm.wait)

    async def close(self) -> None:
        """Stop batching: queued callers and those of the batches in flight get a CancelledError."""
        self._closed = True
        for item in list(self._in_flight):
            item.loop.call_soon_threadsafe(item.future.cancel)
        for _ in self._threads:
            self._queue.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._join)
        while True:
            try:
                left = self._queue.get_nowait()
            except queue.Empty:
                break
            if left is not None:
                left.loop.call_soon_threadsafe(left.future.cancel)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()

    async def submit(self, tensor: torch.Tensor) -> R:
        """Queue one (3, S, S) input; returns its row of the batch's result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if self._closed:
            future.cancel()
        else:
            self._queue.put(_Item(tensor, future, loop))
        return await future

    async def run(self, prepare: Callable[[], torch.Tensor], pool: Executor) -> R:
        """``prepare()`` on ``pool``, whose thread queues the tensor for the model; returns its row.

        A failure of ``prepare`` is raised as :class:`PrepareError` (the model never saw the image).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()

        def job() -> None:
            try:
                tensor = prepare()
            except BaseException as exc:  # handed to the caller, whatever it is
                loop.call_soon_threadsafe(_settle, future, None, PrepareError(exc))
                return
            if self._closed:
                loop.call_soon_threadsafe(future.cancel)
            else:
                self._queue.put(_Item(tensor, future, loop))

        submitted = pool.submit(job)
        # a pool shut down before running the job cancels it: so is the caller, instead of waiting forever
        submitted.add_done_callback(lambda f: f.cancelled() and loop.call_soon_threadsafe(future.cancel))
        return await future

    # -- the model threads ----------------------------------------------------------------------

    def _serve(self, warm: threading.Event) -> None:
        set_os_thread_name("swatch-model")
        try:
            if self._warm_up is not None:
                self._warm_up()
        except Exception:  # a model that cannot run fails its first batch instead, with the reason
            logger.exception("model warm-up failed")
        finally:
            warm.set()
        while True:
            batch = self._collect()
            if batch is None:
                return
            live = [item for item in batch if not item.future.done()]  # callers that gave up need no answer
            try:
                if live:
                    self._execute(live)
            except Exception:  # the thread must outlive a bug here, or the model stops for good
                logger.exception("model thread: a batch of %d could not be answered", len(live))

    def _collect(self) -> list[_Item[R]] | None:
        first = self._queue.get()
        if first is None:
            return None
        if self._closed:  # closing: what is still queued is cancelled, not run
            first.loop.call_soon_threadsafe(first.future.cancel)
            return None
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # closing: run what we have, and let the next round see the stop
                self._queue.put(_STOP)
                break
            batch.append(item)
        return batch

    def _execute(self, live: list[_Item[R]]) -> None:
        self._in_flight.update(live)
        try:
            self._run_batch(live)
        finally:
            self._in_flight.difference_update(live)

    def _run_batch(self, live: list[_Item[R]]) -> None:
        started = time.perf_counter()
        try:
            rows = self._infer(torch.stack([item.tensor for item in live]))
        except Exception as exc:  # a model failure fails this batch's callers, not the batcher
            logger.warning("model batch of %d failed (%s: %s)", len(live), type(exc).__name__, exc)
            self._one_by_one(live, exc)
            return
        self._on_batch(len(live), time.perf_counter() - started)
        for item, row in zip(live, rows, strict=True):
            item.settle(row)

    def _one_by_one(self, items: Sequence[_Item[R]], first: Exception) -> None:
        """After a failed batch, each image alone: only the ones that fail by themselves get the error."""
        if len(items) == 1:
            items[0].settle(exc=first)
            return
        for item in items:
            started = time.perf_counter()
            try:
                (row,) = self._infer(item.tensor.unsqueeze(0))
            except Exception as exc:
                logger.exception("model failed on one image of a failed batch")
                item.settle(exc=exc)
                continue
            self._on_batch(1, time.perf_counter() - started)
            item.settle(row)
