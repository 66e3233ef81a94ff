"""Worker threads carry their names to the kernel, so /proc (and `swatch bench`) can tell them apart."""

from __future__ import annotations

import sys
import threading

import pytest

from streams.perf.procfs import thread_cpu, thread_group
from streams.threads import named_os_thread, named_pool, os_thread_name

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="kernel thread names are read from /proc")


def test_pool_threads_and_their_children_carry_the_name() -> None:
    with named_pool(1, "swatch-decode") as pool:
        assert pool.submit(os_thread_name).result() == "swatch-decode"
        seen: list[str] = []

        def spawn() -> None:
            child = threading.Thread(target=lambda: seen.append(os_thread_name()))
            child.start()
            child.join()

        pool.submit(spawn).result()
    assert seen == ["swatch-decode"]


def test_a_block_runs_under_a_name_and_restores_the_old_one() -> None:
    before = os_thread_name()
    with named_os_thread("swatch-model"):
        assert os_thread_name() == "swatch-model"
    assert os_thread_name() == before


def test_thread_cpu_groups_the_named_threads() -> None:
    import os

    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    with named_pool(1, "swatch-model") as pool:
        pool.submit(spin)
        threading.Event().wait(0.3)
        groups = thread_cpu(os.getpid())
        stop.set()
    assert groups.get("model", 0.0) > 0.05
    assert thread_group("rdk:broker1", 5, 1) == "kafka client"
    assert thread_group("python", 1, 1) == "event loop"
