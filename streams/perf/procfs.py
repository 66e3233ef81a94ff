"""What a process and the machine used, read from Linux's /proc: CPU per thread group, RSS, descriptors.

The benchmarks sample the worker's process (its threads are named: ``swatch-model``,
``swatch-decode``, ``rdk:*`` for librdkafka, the main thread runs the event loop) and the whole
machine, so every result says how much CPU other processes took while it ran: on a shared host a
ratio measured while something else was busy is not the same ratio.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(path: Path) -> list[str] | None:
    """The fields of a ``stat`` file after the ``(comm)`` one (which may itself hold spaces)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a whole process (all its threads); 0 when it is gone."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_group(comm: str, tid: int, pid: int) -> str:
    """The group a worker thread's CPU is reported under."""
    if tid == pid:
        return "event loop"
    if comm.startswith("rdk:"):
        return "kafka client"
    for prefix, group in (
        ("swatch-model", "model"),
        ("swatch-decode", "preprocess"),
        ("swatch-kafka", "kafka client"),
        ("swatch-registr", "registry"),
        ("swatch-health", "health server"),
    ):
        if comm.startswith(prefix):
            return group
    return "other threads"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread group of ``pid`` (threads that already exited are not counted)."""
    groups: dict[str, float] = {}
    try:
        tids = [int(name) for name in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    for tid in tids:
        base = Path(f"/proc/{pid}/task/{tid}")
        fields = _stat_fields(base / "stat")
        if fields is None:
            continue
        try:
            comm = (base / "comm").read_text().strip()
        except OSError:
            continue
        group = thread_group(comm, tid, pid)
        groups[group] = groups.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return groups


def memory(pid: int) -> dict[str, float]:
    """``rss_mb`` and ``peak_rss_mb`` (VmHWM) of ``pid``; empty when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.MULTILINE))
    return {"rss_mb": int(values.get("VmRSS", 0)) / 1024, "peak_rss_mb": int(values.get("VmHWM", 0)) / 1024}


def open_descriptors(pid: int) -> int:
    """Open file descriptors of ``pid`` (sockets included); -1 when unreadable."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (children, grandchildren, ...)."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(Path(f"/proc/{name}/stat"))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(name))
    found, todo = {pid}, [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy (not idle or waiting for I/O) since boot."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLOCK_TICKS


@dataclass
class CpuWindow:
    """CPU over a stretch of time: the machine's, ours (a process tree) and everybody else's.

    ``start`` records the counters; ``stop`` returns cores busy on average: ``machine`` (all
    processes), ``ours`` (the benchmark's tree: itself, the worker, broker, Redis) and ``others``
    (the rest of the machine: what the run had to share the cores with).
    """

    root: int = field(default_factory=os.getpid)
    _started: float = 0.0
    _machine: float = 0.0
    _ours: dict[int, float] = field(default_factory=dict)

    def start(self) -> None:
        """Take the starting counters."""
        self._started = time.monotonic()
        self._machine = machine_busy_seconds()
        self._ours = {pid: cpu_seconds(pid) for pid in descendants(self.root)}

    def stop(self) -> dict[str, float]:
        """Average busy cores since :meth:`start` (and the window's seconds)."""
        seconds = max(1e-6, time.monotonic() - self._started)
        machine = machine_busy_seconds() - self._machine
        ours = sum(cpu_seconds(pid) - self._ours.get(pid, 0.0) for pid in descendants(self.root))
        return {
            "seconds": round(seconds, 2),
            "machine_cores_busy": round(machine / seconds, 3),
            "ours_cores_busy": round(ours / seconds, 3),
            "others_cores_busy": round(max(0.0, machine - ours) / seconds, 3),
        }


def machine_facts() -> dict[str, Any]:
    """CPU model and count, GPU, and the versions of the runtimes that set the speed."""
    import platform  # noqa: PLC0415

    import torch  # noqa: PLC0415

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import onnxruntime  # noqa: PLC0415

        ort_version: str | None = onnxruntime.__version__
    except ImportError:
        ort_version = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * PAGE_BYTES / 2**30, 1),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "torch_threads": torch.get_num_threads(),
    }
