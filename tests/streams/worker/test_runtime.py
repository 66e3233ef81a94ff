"""SWATCH_MODEL_RUNTIME: the worker serves the runtime its settings ask for, with SWATCH_MODEL_THREADS.

Building a Worker loads the model and touches no broker or Redis (those start in ``run``), so these
tests construct Workers from plain settings. The demo model's ONNX export goes to a private cache.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from streams.config import Settings
from streams.worker import Worker
from tagger import predict
from tagger.bench import _sample_jpeg
from tagger.card import DEMO_MODEL_DIR, read_card
from tagger.errors import TaggerError
from tagger.export import EXPORT_FILES, SIDECAR_FILE, cache_dir, is_current
from tagger.predict import Predictor

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for the module: the demo model is exported once, by the first test that needs it."""
    root = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(root))
        yield root


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """The worker sets torch's thread count process-wide: put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _settings(**model: object) -> Settings:
    return Settings(model={"threads": 1, **model})


@pytest.mark.slow
def test_runtime_onnx_serves_onnx_runtime_with_the_model_threads(
    export_cache: Path, torch_threads: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        worker = Worker(_settings(runtime="onnx", threads=2))
    assert worker.predictor.runtime == "onnx"
    runner = worker.predictor.onnx_runner
    assert runner is not None and runner.path.is_relative_to(export_cache)
    assert runner.threads == 2 == worker.predictor.threads
    assert runner.session.get_session_options().intra_op_num_threads == 2
    assert "with the onnx runtime on cpu, 2 threads (runtime setting onnx)" in caplog.text


def test_runtime_torch_serves_torch(torch_threads: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        worker = Worker(_settings(runtime="torch", device="cpu"))
    assert worker.predictor.runtime == "torch" and worker.predictor.onnx_runner is None
    assert worker.predictor.threads == 1 == torch.get_num_threads()
    assert "with the torch runtime on cpu, 1 threads (runtime setting torch)" in caplog.text


@pytest.mark.slow
def test_runtime_auto_on_the_cpu_is_onnx_when_installed_else_torch(
    export_cache: Path, torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings().model.runtime == "auto"
    assert Worker(_settings(device="cpu")).predictor.runtime == "onnx"
    monkeypatch.setattr(predict, "onnxruntime_installed", lambda: False)
    assert Worker(_settings(device="cpu")).predictor.runtime == "torch"


def test_runtime_onnx_on_cuda_refuses_to_start(torch_threads: None) -> None:
    with pytest.raises(TaggerError, match="CPU only"):
        Worker(_settings(runtime="onnx", device="cuda"))


@pytest.mark.slow
def test_onnx_worker_probabilities_equal_torch(export_cache: Path, torch_threads: None, predictor: Predictor) -> None:
    onnx = Worker(_settings(runtime="onnx")).predictor
    images = torch.stack([onnx.preprocess(_sample_jpeg(i)) for i in range(6)])
    assert torch.equal(images, torch.stack([predictor.preprocess(_sample_jpeg(i)) for i in range(6)]))
    for batch in (images[:1], images):
        got, want = onnx.probabilities(batch), predictor.probabilities(batch)
        for row_got, row_want in zip(got, want, strict=True):
            assert row_got.keys() == row_want.keys()
            for key, values in row_got.items():
                assert max(abs(a - b) for a, b in zip(values, row_want[key], strict=True)) <= TOLERANCE, key


@pytest.mark.slow
def test_read_only_model_dir_exports_to_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_threads: None
) -> None:
    """A mounted, read-only model: the export is made in the cache and the model folder is left alone."""
    model = Path(shutil.copytree(DEMO_MODEL_DIR, tmp_path / "model"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    real_access = os.access
    # Tests may run as root, who may write anywhere: make the check answer as for the worker's user.
    monkeypatch.setattr(
        os,
        "access",
        lambda p, mode: False if Path(p).resolve() == model.resolve() else real_access(p, mode),
    )
    before = sorted(os.listdir(model))
    model.chmod(0o555)
    try:
        worker = Worker(_settings(runtime="auto", device="cpu", dir=str(model)))
    finally:
        model.chmod(0o755)
    assert worker.predictor.runtime == "onnx"
    card = read_card(model)
    cached = cache_dir(card) / EXPORT_FILES["onnx"]
    assert worker.predictor.onnx_runner is not None and worker.predictor.onnx_runner.path == cached
    assert cached.is_relative_to(tmp_path / "xdg-cache") and is_current(cached, card, "onnx")
    assert (cached.parent / SIDECAR_FILE).is_file()
    assert sorted(os.listdir(model)) == before
