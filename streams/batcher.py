"""Micro-batching: images from any listing and partition share model batches.

A batch runs when it holds ``max_size`` images or when its first image has waited ``max_wait_s``.
``concurrency`` batches run at a time (default one), each on its own model thread (the model
releases the GIL), while the next one fills; so a busy model gets full batches and an idle one
answers a lone image after at most ``max_wait_s``. On a busy CPU two single-threaded batches keep
the cores fuller than one batch on two threads, whose threads wait for each other whenever one is
descheduled.

A batch that raises is run again one image at a time, so an image that makes the model fail (a
poison input) fails only its own caller, not every listing that happened to share its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch

from streams.threads import named_pool

logger = logging.getLogger(__name__)

R = TypeVar("R")


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
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self._infer = infer
        self.concurrency = concurrency
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future[R]]] = asyncio.Queue()
        self._executor = named_pool(concurrency, "swatch-model")
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def close(self) -> None:
        """Stop batching; queued callers get a CancelledError."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._running):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            future.cancel()
        self._executor.shutdown(wait=True)

    async def submit(self, tensor: torch.Tensor) -> R:
        """Queue one (3, S, S) input; returns its row of the batch's result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((tensor, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        free = asyncio.Semaphore(self.concurrency)
        while True:
            await free.acquire()  # a model thread is free: collect its batch (the queue filled meanwhile)
            try:
                live = await self._collect(loop)
            except BaseException:
                free.release()
                raise
            if not live:
                free.release()
                continue
            task = loop.create_task(self._execute(live), name="model-batch")
            self._running.add(task)
            task.add_done_callback(functools.partial(self._finished, free))

    def _finished(self, free: asyncio.Semaphore, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        free.release()

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[tuple[torch.Tensor, asyncio.Future[R]]]:
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_size:
            if not self._queue.empty():  # take what is queued without a timer per image
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [(t, f) for t, f in batch if not f.done()]  # callers cancelled meanwhile need no answer

    async def _execute(self, live: list[tuple[torch.Tensor, asyncio.Future[R]]]) -> None:
        started = time.perf_counter()
        try:
            rows = await self._run_batch(live)
        except asyncio.CancelledError:  # closing: callers of the batch in flight get a CancelledError too
            for _, future in live:
                future.cancel()
            raise
        except Exception as exc:  # a model failure fails this batch's callers, not the batcher
            logger.warning("model batch of %d failed (%s: %s)", len(live), type(exc).__name__, exc)
            await self._one_by_one(live, exc)
            return
        self._on_batch(len(live), time.perf_counter() - started)
        for (_, future), row in zip(live, rows, strict=True):
            if not future.done():
                future.set_result(row)

    async def _run_batch(self, items: Sequence[tuple[torch.Tensor, asyncio.Future[R]]]) -> Sequence[R]:
        tensors = [t for t, _ in items]
        # stacking copies the whole batch: on the model thread, not the event loop
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._stack_and_infer, tensors)

    def _stack_and_infer(self, tensors: list[torch.Tensor]) -> Sequence[R]:
        return self._infer(torch.stack(tensors))

    async def _one_by_one(self, items: Sequence[tuple[torch.Tensor, asyncio.Future[R]]], first: Exception) -> None:
        """After a failed batch, each image alone: only the ones that fail by themselves get the error."""
        if len(items) == 1:
            _, future = items[0]
            if not future.done():
                future.set_exception(first)
            return
        for tensor, future in items:
            if future.done():
                continue
            started = time.perf_counter()
            try:
                (row,) = await self._run_batch([(tensor, future)])
            except Exception as exc:
                logger.exception("model failed on one image of a failed batch")
                if not future.done():
                    future.set_exception(exc)
                continue
            self._on_batch(1, time.perf_counter() - started)
            if not future.done():
                future.set_result(row)
