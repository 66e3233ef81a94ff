"""Heap trimming: freed holes in glibc's heap go back to the kernel, and the worker's trimmer runs and stops."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os

import pytest

from streams import memory

MB = 2**20
pytestmark = pytest.mark.skipif(not memory.can_trim_heap(), reason="needs glibc's malloc_trim")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def test_trim_heap_returns_the_free_holes_a_raised_mmap_threshold_leaves() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # Freeing one mmapped 8 MB block raises glibc's mmap threshold to 8 MB: the 1 MB blocks below
    # then come from the heap, as a model's activations do after its first batch.
    libc.free(libc.malloc(8 * MB))
    blocks = [libc.malloc(MB) for _ in range(96)]
    for block in blocks:
        ctypes.memset(block, 1, MB)  # resident
    before_free = _rss_mb()
    for block in blocks[:-1]:  # the last one pins the top of the heap, so free() cannot trim it
        libc.free(block)
    freed = _rss_mb()
    try:
        assert freed > before_free - 32, "free() alone gave the holes back: the premise does not hold here"
        assert memory.trim_heap()
        assert _rss_mb() < freed - 64
    finally:
        libc.free(blocks[-1])


def test_the_trimmer_trims_every_interval_until_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake_trim(pad: int) -> int:
        calls.append(pad)
        return 1

    monkeypatch.setattr(memory, "_malloc_trim", fake_trim)

    async def scenario() -> int:
        task = asyncio.create_task(memory.trim_heap_every(0.01))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        seen = len(calls)
        await asyncio.sleep(0.05)
        return seen

    seen = asyncio.run(scenario())
    assert seen >= 3 and set(calls) == {0}
    assert len(calls) == seen, "the trimmer went on after it was cancelled"


def test_without_malloc_trim_the_trimmer_returns_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_malloc_trim", None)
    asyncio.run(asyncio.wait_for(memory.trim_heap_every(0.01), timeout=1))
    assert not memory.trim_heap()


def test_the_worker_starts_the_trimmer_unless_it_is_set_to_0() -> None:
    from types import SimpleNamespace

    from streams.config import Settings
    from streams.worker.assembly import _start_housekeeping
    from streams.worker.health import HealthState

    async def tasks_started(trim_s: float) -> set[str]:
        w = SimpleNamespace(settings=Settings(worker={"heap_trim_s": trim_s}), health=HealthState())
        before = asyncio.all_tasks()
        async with contextlib.AsyncExitStack() as chain:
            _start_housekeeping(w, chain)
            started = asyncio.all_tasks() - before
        assert all(task.done() for task in started), "housekeeping outlived its exit stack"
        return {task.get_name() for task in started}

    assert asyncio.run(tasks_started(10.0)) == {"heartbeat", "heap-trim"}
    assert asyncio.run(tasks_started(0)) == {"heartbeat"}
