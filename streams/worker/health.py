"""/metrics, /healthz and /readyz, served from their own thread so a stalled event loop fails the probes.

The event loop writes facts into :class:`HealthState` (a heartbeat every tick, the oldest listing in
flight, partitions whose commit position is stuck, components that are failing); the HTTP thread
only reads them. A wedged loop therefore gives 503 instead of a probe timeout.

Rules (the README's "Health" section says the same):

- ``/healthz`` (liveness) is 503 when the worker has failed fatally, when the event loop has not
  turned for ``loop_stall_s``, when a listing has been in flight for longer than ``stuck_after_s``,
  or when an assigned partition's commit position has not moved for ``stuck_after_s`` while records
  wait behind it. Restarting the pod is the right fix for each of these.
- ``/readyz`` (readiness) is 200 once the model is loaded, the Kafka clients are up and the schemas
  are registered, until draining starts. It does not require owning a partition: replicas beyond
  the partition count must stay Ready, or a rolling update stalls. Failing components (Redis, the
  broker, the registry) are listed in both bodies without failing readiness.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streams.metrics import WorkerMetrics
from streams.threads import set_os_thread_name

logger = logging.getLogger(__name__)


@dataclass
class HealthState:
    """Facts for the probes; single assignments from the loop, read from the HTTP thread."""

    loop_stall_s: float = 30.0
    stuck_after_s: float = 300.0
    beat: float = field(default_factory=time.monotonic)
    ready: bool = False
    draining: bool = False
    fatal: str | None = None
    detail: str = "starting"
    oldest_in_flight_s: float = 0.0
    stuck_partitions: tuple[str, ...] = ()
    degraded: dict[str, str] = field(default_factory=dict)
    gauge: Gauge | None = field(default=None, repr=False)  # swatch_degraded, kept in step with ``degraded``
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def tick(self) -> None:
        """The event loop is alive."""
        self.beat = time.monotonic()

    def failing(self, component: str, message: str) -> None:
        """A component (redis, broker, registry) is failing; shown in the probe bodies and ``swatch_degraded``."""
        with self._lock:
            self.degraded[component] = message
        if self.gauge is not None:
            self.gauge.labels(component).set(1)

    def recovered(self, component: str) -> None:
        """The component works again (cheap when it was not failing: called on every acknowledgement)."""
        if component not in self.degraded:
            return
        with self._lock:
            self.degraded.pop(component, None)
        if self.gauge is not None:
            self.gauge.labels(component).set(0)

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """``(alive, body)`` by the module's rules."""
        loop_age = time.monotonic() - self.beat
        problems = []
        if self.fatal is not None:
            problems.append(f"stopping after a fatal error: {self.fatal}")
        if loop_age > self.loop_stall_s:
            problems.append(f"event loop stalled for {loop_age:.0f}s")
        if self.oldest_in_flight_s > self.stuck_after_s:
            problems.append(f"a listing has been in flight for {self.oldest_in_flight_s:.0f}s")
        if self.stuck_partitions:
            problems.append(
                f"commit position stuck for over {self.stuck_after_s:.0f}s on {', '.join(self.stuck_partitions)}"
            )
        with self._lock:
            degraded = dict(self.degraded)
        body = {
            "ok": not problems,
            "problems": problems,
            "loop_age_s": round(loop_age, 3),
            "oldest_in_flight_s": round(self.oldest_in_flight_s, 3),
            "degraded": degraded,
        }
        return not problems, body

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, body)`` by the module's rules."""
        ready = self.ready and not self.draining and self.fatal is None
        reason = "draining" if self.draining else self.fatal or self.detail
        with self._lock:
            degraded = dict(self.degraded)
        return ready, {"ready": ready, "reason": reason, "degraded": degraded}


class HealthServer:
    """Serves the three endpoints from a daemon thread (``ThreadingHTTPServer``)."""

    def __init__(self, metrics: WorkerMetrics, state: HealthState, host: str, port: int) -> None:
        self.metrics = metrics
        self.state = state
        self.host = host
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Bind and serve; ``port`` is the bound port afterwards (useful with 0)."""
        handler = _handler(self.metrics, self.state)
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=_serve_named, args=(self._server,), name="swatch-health", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop serving and close the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)


def _handler(metrics: WorkerMetrics, state: HealthState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, body = state.liveness()
                self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
            elif path == "/readyz":
                ok, body = state.readiness()
                self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b'{"error": "not found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("health %s", format % args)

    return Handler


def _serve_named(server: ThreadingHTTPServer) -> None:
    set_os_thread_name("swatch-health")  # its request threads inherit the name
    server.serve_forever()
