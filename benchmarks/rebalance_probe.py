"""How long the embedded broker's group protocol pauses a partition when a consumer joins, without Swatch.

Bare confluent-kafka consumers (cooperative-sticky, the worker's session timeout in tests) on the
embedded Tansu broker: consumer A owns both partitions of a topic fed at 20 records a second;
consumer B joins; the script prints when each rebalance callback ran and how long each partition
went without a record. This is the floor under the chaos suite's "second worker joins and leaves"
stall: whatever the worker adds comes on top of it.

    .venv/bin/python benchmarks/rebalance_probe.py [--session-timeout-ms 6000]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.embedded import start_kafka


def main() -> None:
    """Run the probe and print the timeline."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--session-timeout-ms", type=int, default=6000)
    parser.add_argument("--join-after-s", type=float, default=12.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        broker = start_kafka(Path(workdir))
        try:
            _probe(broker.address, args.session_timeout_ms, args.join_after_s)
        finally:
            broker.stop()


def _probe(bootstrap: str, session_ms: int, join_after_s: float) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("probe", 2, 1)])["probe"].result(10)
    time.sleep(1)
    t0 = time.monotonic()
    events: list[tuple[float, str]] = []
    received: dict[str, list[tuple[float, int]]] = {"A": [], "B": []}
    stop = threading.Event()

    def feed() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        i = 0
        while not stop.is_set():
            producer.produce("probe", value=b"x", partition=i % 2)
            producer.poll(0)
            i += 1
            time.sleep(0.05)
        producer.flush(5)

    def consume(name: str, start_after: float, run_s: float) -> None:
        time.sleep(start_after)
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": "probe",
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": max(100, session_ms // 3),
            "partition.assignment.strategy": "cooperative-sticky",
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
        }
        consumer = Consumer(conf)

        def note(kind: str) -> Any:
            def callback(_: Consumer, partitions: list[TopicPartition]) -> None:
                moved = [p.partition for p in partitions]
                events.append((time.monotonic() - t0, f"{name} {kind} {moved}"))

            return callback

        consumer.subscribe(["probe"], on_assign=note("assigned"), on_revoke=note("revoked"))
        end = time.monotonic() + run_s
        while time.monotonic() < end:
            for message in consumer.consume(100, 0.1):
                if message.error() is None:
                    received[name].append((time.monotonic() - t0, int(message.partition() or 0)))
        consumer.close()

    threads = [
        threading.Thread(target=feed, daemon=True),
        threading.Thread(target=consume, args=("A", 0.0, join_after_s + 25)),
        threading.Thread(target=consume, args=("B", join_after_s, 20.0)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join()
    stop.set()
    for at, what in sorted(events):
        print(f"{at:6.2f}s  {what}")  # noqa: T201
    for partition in (0, 1):
        times = sorted(at for name in received for at, p in received[name] if p == partition)
        gaps = [(b - a, a) for a, b in zip(times, times[1:], strict=False)]
        worst, since = max(gaps, default=(0.0, 0.0))
        print(f"partition {partition}: longest gap without a record {worst:.2f}s (from {since:.2f}s)")  # noqa: T201


if __name__ == "__main__":
    main()
