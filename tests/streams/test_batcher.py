"""The micro-batcher: full batches under load, a lone image after max_wait, and a poison image isolated."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from streams.batcher import MicroBatcher


def _rows(batch: torch.Tensor) -> list[float]:
    return [float(x[0, 0, 0]) for x in batch]


def test_concurrent_images_share_full_batches() -> None:
    sizes: list[int] = []

    async def main() -> list[float]:
        batcher = MicroBatcher(_rows, max_size=4, max_wait_s=0.5, on_batch=lambda n, s: sizes.append(n))
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(torch.full((1, 1, 1), float(i))) for i in range(8)))
        finally:
            await batcher.close()

    assert asyncio.run(main()) == [float(i) for i in range(8)]
    assert sizes == [4, 4]


def test_a_lone_image_waits_at_most_max_wait() -> None:
    async def main() -> float:
        batcher = MicroBatcher(_rows, max_size=32, max_wait_s=0.05)
        batcher.start()
        started = time.monotonic()
        try:
            await batcher.submit(torch.zeros(1, 1, 1))
        finally:
            await batcher.close()
        return time.monotonic() - started

    assert asyncio.run(main()) < 1.0


def test_a_poison_image_fails_only_its_own_caller() -> None:
    def infer(batch: torch.Tensor) -> list[float]:
        if any(float(x[0, 0, 0]) == 13.0 for x in batch):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return _rows(batch)

    async def main() -> list[object]:
        batcher = MicroBatcher(infer, max_size=8, max_wait_s=0.2)
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(torch.full((1, 1, 1), float(i))) for i in (1, 13, 2, 3)), return_exceptions=True
            )
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert results[0] == 1.0 and results[2] == 2.0 and results[3] == 3.0
    assert isinstance(results[1], RuntimeError) and "device-side assert" in str(results[1])


def test_close_cancels_running_and_waiting_callers() -> None:
    async def main() -> None:
        def slow(batch: torch.Tensor) -> list[float]:
            time.sleep(0.2)
            return _rows(batch)

        batcher = MicroBatcher(slow, max_size=1, max_wait_s=0.0)
        batcher.start()
        running = asyncio.create_task(batcher.submit(torch.zeros(1, 1, 1)))
        waiting = asyncio.create_task(batcher.submit(torch.ones(1, 1, 1)))
        await asyncio.sleep(0.05)  # the first is in the model thread, the second queued
        await batcher.close()
        for task in (running, waiting):
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_concurrent_batches_run_on_their_own_model_threads() -> None:
    import threading

    running: list[int] = []
    peak: list[int] = []
    names: set[str] = set()
    lock = threading.Lock()

    def slow(batch: torch.Tensor) -> list[float]:
        with lock:
            running.append(1)
            peak.append(len(running))
            names.add(threading.current_thread().name)
        time.sleep(0.1)
        with lock:
            running.pop()
        return _rows(batch)

    async def main() -> list[float]:
        batcher = MicroBatcher(slow, max_size=2, max_wait_s=0.01, concurrency=2)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(torch.full((1, 1, 1), float(i))) for i in range(8)))
        finally:
            await batcher.close()

    assert asyncio.run(main()) == [float(i) for i in range(8)]
    assert max(peak) == 2 and len(names) == 2


def test_closing_cancels_the_batches_in_flight_and_the_queued_ones() -> None:
    async def main() -> None:
        batcher = MicroBatcher(lambda b: time.sleep(0.3) or _rows(b), max_size=1, max_wait_s=0.0, concurrency=2)
        batcher.start()
        calls = [asyncio.ensure_future(batcher.submit(torch.zeros(1, 1, 1))) for _ in range(4)]
        await asyncio.sleep(0.05)
        await batcher.close()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        with pytest.raises(asyncio.CancelledError):
            await batcher.submit(torch.zeros(1, 1, 1))

    asyncio.run(main())
    with pytest.raises(ValueError, match="concurrency"):
        MicroBatcher(_rows, max_size=1, max_wait_s=0.0, concurrency=0)


def test_run_prepares_on_the_pool_and_reports_a_failed_preparation_apart() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from streams.batcher import PrepareError

    def prepare_bad() -> torch.Tensor:
        raise OSError("cannot identify image file")

    async def main() -> None:
        batcher = MicroBatcher(_rows, max_size=4, max_wait_s=0.01)
        batcher.start()
        with ThreadPoolExecutor(2) as pool:
            try:
                rows = await asyncio.gather(
                    *(batcher.run(lambda i=i: torch.full((1, 1, 1), float(i)), pool) for i in range(6))
                )
                assert rows == [float(i) for i in range(6)]
                with pytest.raises(PrepareError) as caught:
                    await batcher.run(prepare_bad, pool)
                assert isinstance(caught.value.original, OSError)
            finally:
                await batcher.close()

    asyncio.run(main())


def test_a_preparation_the_pool_never_ran_cancels_its_caller() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    gate = threading.Event()

    async def main() -> None:
        batcher = MicroBatcher(_rows, max_size=4, max_wait_s=0.01)
        batcher.start()
        pool = ThreadPoolExecutor(1)
        try:
            pool.submit(gate.wait)  # the pool's only thread is busy
            call = asyncio.ensure_future(batcher.run(lambda: torch.zeros(1, 1, 1), pool))
            await asyncio.sleep(0.05)
            pool.shutdown(wait=False, cancel_futures=True)  # the queued preparation never runs
            gate.set()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(call, 5)
        finally:
            await batcher.close()

    asyncio.run(main())
