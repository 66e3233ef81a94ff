"""A process under test (the worker, or the naive agent): started, watched from /proc, scraped, stopped.

:class:`Watched` starts a command with ``SWATCH_*`` variables, samples its RSS and open descriptors
on a thread, reads its CPU by thread group and (for the worker) its Prometheus metrics, and stops it
with SIGTERM. Its output goes to a log file that a failure message points at.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streams.errors import SwatchError
from streams.perf.procfs import memory, open_descriptors, thread_cpu


class BenchError(SwatchError):
    """A benchmark could not run (a process died, outputs never came)."""


class Watched:
    """One process under test; see the module docstring."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path, metrics_port: int | None
    ) -> None:
        self.name = name
        self.log = log
        self.metrics_port = metrics_port
        self.started = time.monotonic()
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, *argv],
            env={**os.environ, **env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self.samples: list[tuple[float, float, int]] = []  # (seconds since start, rss MB, descriptors)
        self.peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name=f"bench-sample-{name}", daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            mem = memory(self.proc.pid)
            if not mem:
                return
            self.peak_rss_mb = max(self.peak_rss_mb, mem["peak_rss_mb"])
            self.samples.append((time.monotonic() - self.started, mem["rss_mb"], open_descriptors(self.proc.pid)))

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def failure(self, what: str) -> BenchError:
        """An error naming what went wrong and the tail of the process's log."""
        self._log_file.flush()
        tail = self.log.read_text(errors="replace").splitlines()[-15:]
        return BenchError(
            f"{self.name}: {what} (exit code {self.proc.poll()}); last lines of {self.log}:\n" + "\n".join(tail)
        )

    def get(self, path: str, timeout: float = 2.0) -> bytes | None:
        """GET ``path`` on its metrics port; None when it does not answer 200."""
        if self.metrics_port is None:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=timeout) as r:
                return bytes(r.read()) if r.status == 200 else None
        except OSError:
            return None

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds from start until ``/readyz`` answers 200."""
        deadline = self.started + timeout_s
        while self.get("/readyz", 0.5) is None:
            if not self.alive():
                raise self.failure("stopped during start-up")
            if time.monotonic() > deadline:
                raise self.failure(f"not ready within {timeout_s:.0f} s")
            time.sleep(0.05)
        return time.monotonic() - self.started

    def metrics(self) -> dict[str, float]:
        """Every sample of its /metrics as ``name{label=value,...}`` -> value."""
        text = self.get("/metrics")
        if text is None:
            return {}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def cpu(self) -> dict[str, float]:
        """CPU seconds by thread group so far."""
        return thread_cpu(self.proc.pid)

    def stop(self, timeout_s: float = 40.0) -> int | None:
        """SIGTERM, wait (then SIGKILL); the exit code."""
        self._stop.set()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_file.close()
        return self.proc.returncode


def metric_delta(before: Mapping[str, float], after: Mapping[str, float], prefix: str) -> float:
    """The increase of every sample whose key starts with ``prefix`` (summed)."""
    return sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix))


def cpu_cores(before: Mapping[str, float], after: Mapping[str, float], seconds: float) -> dict[str, Any]:
    """CPU cores used on average per thread group over ``seconds``."""
    groups = sorted(set(before) | set(after))
    out = {g: round((after.get(g, 0.0) - before.get(g, 0.0)) / max(seconds, 1e-6), 3) for g in groups}
    out["total"] = round(sum(out.values()), 3)
    return out
