"""Fixtures of the worker's integration tests: a small synthetic catalog over local HTTP, the demo
model, output readers and per-test names."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.config import Settings
from streams.images_server import ImageServer
from tagger.predict import Predictor
from tagger.synth import SynthConfig, generate_catalog
from tests.streams.worker_harness import OutputReader


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_catalog(tmp_path_factory.mktemp("worker-catalog"), SynthConfig(n=24, seed=11))


@pytest.fixture(scope="module")
def rows(catalog: Path) -> list[dict[str, str]]:
    with catalog.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def images(catalog: Path) -> Iterator[str]:
    with ImageServer(catalog.parent) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load(None, "cpu")


@pytest.fixture
def reader_for() -> Iterator[Callable[[Settings], OutputReader]]:
    made: list[OutputReader] = []

    def make(settings: Settings) -> OutputReader:
        made.append(OutputReader(settings))
        return made[-1]

    yield make
    for reader in made:
        reader.close()


@pytest.fixture
def prefix(unique_name: Callable[[str], str]) -> str:
    return unique_name("w")
