"""Thread pools whose threads carry their name into the operating system (``top -H``, /proc, py-spy).

Python 3.11 names threads for Python only; the kernel sees every thread as the process. Naming
them (``prctl(PR_SET_NAME)``, 15 bytes) lets an operator, and ``swatch bench``, see which part of
the worker uses the CPU: ``swatch-model``, ``swatch-decode``, ``swatch-kafka``, ``swatch-registry``,
``swatch-health``. Threads a named thread starts inherit its name, so the model's runtime pools
(OpenMP, ONNX Runtime) count as the model when they are created on the model thread or inside
:func:`os_thread_name`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_PR_SET_NAME = 15
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None


def set_os_thread_name(name: str) -> None:
    """Name the calling thread for the kernel (first 15 bytes); a no-op off Linux."""
    if _libc is not None:
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def os_thread_name() -> str:
    """The calling thread's kernel name ('' off Linux)."""
    try:
        return Path("/proc/thread-self/comm").read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def named_os_thread(name: str) -> Iterator[None]:
    """Run a block under another kernel thread name (threads it starts keep that name), then restore."""
    before = os_thread_name()
    set_os_thread_name(name)
    try:
        yield
    finally:
        if before:
            set_os_thread_name(before)


def named_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads are ``name`` for Python and for the kernel."""
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=set_os_thread_name, initargs=(name,))
