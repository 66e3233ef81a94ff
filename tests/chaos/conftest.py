"""Fixtures of the fault-injection suite, its scale switch, and the summary table at the end of the session.

``--chaos-full`` (or ``SWATCH_CHAOS_FULL=1``) selects the full scale. pytest only sees options of
conftest files it loads at start-up, and it does not load this one when it is started without a
path, so ``make chaos`` names ``tests/chaos``; the environment variable works either way.
``SWATCH_CHAOS_REPORT=path.json`` also writes the table's rows as JSON.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.config import Settings
from streams.images_server import ImageServer
from tagger.synth import SynthConfig, generate_catalog
from tests.chaos import scale
from tests.chaos.harness import WorkerProcess
from tests.chaos.report import ScenarioRow, render_table, write_json
from tests.chaos.verifier import Verifier
from tests.chaos.workload import Feeder, Row
from tests.streams.worker_harness import make_settings

_ROWS = pytest.StashKey[list[ScenarioRow]]()
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-full",
        action="store_true",
        default=False,
        help="run the chaos scenarios at full scale (as `make chaos` does); short by default",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--chaos-full", default=False):
        scale.FULL = True
    config.stash[_ROWS] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    terminalreporter.section(f"chaos scenarios ({rows[0].scale} scale)")
    for line in render_table(rows):
        terminalreporter.write_line(line)
    target = os.environ.get("SWATCH_CHAOS_REPORT")
    if target:
        write_json(rows, Path(target))
        terminalreporter.write_line(f"rows written to {target}")


@pytest.fixture
def chaos_row(request: pytest.FixtureRequest) -> Iterator[ScenarioRow]:
    """This scenario's row in the summary table; its result is filled in from the test's outcome."""
    row = ScenarioRow(scenario=request.node.name.removeprefix("test_"), scale=scale.name())
    request.config.stash[_ROWS].append(row)
    yield row
    reports = request.node.stash.get(_REPORTS, {})
    call = reports.get("call")
    if call is None:
        setup = reports.get("setup")
        row.result = "error" if setup is not None and setup.failed else "not run"
    else:
        row.result = "passed" if call.passed else "FAILED"
        if call.duration:
            row.seconds = round(call.duration, 1)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred distinct synthetic product images (fewer at short scale), repeated across listings."""
    return generate_catalog(tmp_path_factory.mktemp("chaos-catalog"), SynthConfig(n=scale.pick(80, 300), seed=7))


@pytest.fixture(scope="module")
def rows(catalog: Path) -> list[Row]:
    """The catalog's manifest rows (image path relative to the catalog directory, category, labels)."""
    with catalog.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def images(catalog: Path) -> Iterator[str]:
    """Base URL of a plain image server for the catalog."""
    with ImageServer(catalog.parent) as server:
        yield server.base_url


@pytest.fixture
def prefix(unique_name: Callable[[str], str]) -> str:
    """This test's topic, group and Redis key prefix."""
    return unique_name("chaos")


@pytest.fixture
def settings_for(prefix: str) -> Callable[..., Settings]:
    """Settings for this scenario (its own topics, created now), from a broker, a Redis and overrides."""

    def make(bootstrap: str, redis_url: str | None, **sections: dict[str, Any]) -> Settings:
        return make_settings(bootstrap, redis_url, prefix, **sections)

    return make


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Make :class:`WorkerProcess` objects (not started); every one still running is stopped afterwards."""
    made: list[WorkerProcess] = []

    def make(settings: Settings, name: str, **kwargs: Any) -> WorkerProcess:
        made.append(WorkerProcess(settings, tmp_path / f"{name}.log", name=name, **kwargs))
        return made[-1]

    yield make
    for worker in made:
        worker.stop()


@pytest.fixture
def verifier_for() -> Iterator[Callable[[str, Settings], Verifier]]:
    """Make verifiers for output topics; closed afterwards."""
    made: list[Verifier] = []

    def make(bootstrap: str, settings: Settings) -> Verifier:
        made.append(Verifier(bootstrap, settings.topics))
        return made[-1]

    yield make
    for verifier in made:
        verifier.close()


@pytest.fixture
def feeder_for() -> Iterator[Callable[[str, Settings], Feeder]]:
    """Make feeders for the listings topic; a background feed still running is stopped afterwards."""
    made: list[Feeder] = []

    def make(bootstrap: str, settings: Settings) -> Feeder:
        made.append(Feeder(bootstrap, settings.topics.listings))
        return made[-1]

    yield make
    for feeder in made:
        feeder.stop()
