"""Choosing the runtime: `resolve_runtime` (auto, torch, onnx) and `Predictor.load(runtime="auto")`."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from tagger import predict
from tagger.errors import TaggerError
from tagger.export import ExportError
from tagger.predict import Predictor, onnxruntime_installed, resolve_runtime


@pytest.fixture
def no_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predict, "onnxruntime_installed", lambda: False)


@pytest.fixture
def cuda_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache"


def test_onnxruntime_installed_looks_it_up_without_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert onnxruntime_installed()  # the dev environment has the onnx extra
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert not onnxruntime_installed()


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda"])
def test_torch_is_always_torch(device: str, no_onnxruntime: None) -> None:
    assert resolve_runtime("torch", device) == "torch"


def test_auto_on_the_cpu_is_onnx_when_installed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tagger.predict"):
        assert resolve_runtime("auto", "cpu") == "onnx"
    assert "runtime auto: onnx, because the device is the CPU and onnxruntime is installed" in caplog.text


def test_auto_on_the_cpu_without_onnxruntime_is_torch(no_onnxruntime: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tagger.predict"):
        assert resolve_runtime("auto", "cpu") == "torch"
        assert resolve_runtime("auto", "auto") == "torch"
    assert "runtime auto: torch, because onnxruntime is not installed" in caplog.text


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_auto_on_cuda_is_torch(device: str, cuda_visible: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tagger.predict"):
        assert resolve_runtime("auto", device) == "torch"
    assert "runtime auto: torch, because the device is cuda" in caplog.text


def test_auto_with_device_auto_and_no_gpu_is_the_cpu_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_runtime("auto", "auto") == "onnx"


def test_onnx_on_cuda_is_an_error(cuda_visible: None) -> None:
    with pytest.raises(TaggerError, match=r"CPU only.*not 'cuda'"):
        resolve_runtime("onnx", "cuda")


def test_onnx_with_device_auto_runs_on_the_cpu_and_says_so(
    cuda_visible: None, caplog: pytest.LogCaptureFixture
) -> None:
    assert resolve_runtime("onnx", "cpu") == "onnx"
    with caplog.at_level(logging.WARNING, logger="tagger.predict"):
        assert resolve_runtime("onnx", "auto") == "onnx"
    assert "serving on the CPU although a CUDA device is visible" in caplog.text


def test_onnx_without_onnxruntime_is_an_error(no_onnxruntime: None) -> None:
    with pytest.raises(TaggerError, match="onnxruntime is not installed"):
        resolve_runtime("onnx", "cpu")


@pytest.mark.parametrize("requested", ["tvm", "", "ONNX", "both"])
def test_unknown_runtimes_are_errors(requested: str) -> None:
    with pytest.raises(TaggerError, match=f"runtime {requested!r} is not auto, torch or onnx"):
        resolve_runtime(requested, "cpu")


def test_load_auto_without_onnxruntime_serves_torch(no_onnxruntime: None) -> None:
    predictor = Predictor.load(None, "cpu", runtime="auto")
    assert predictor.runtime == "torch" and predictor.onnx_runner is None
    assert predictor.threads == torch.get_num_threads()


def test_load_auto_falls_back_to_torch_when_the_export_fails(
    monkeypatch: pytest.MonkeyPatch, private_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise ExportError("ONNX export failed: no onnxscript")

    monkeypatch.setattr(predict, "load_onnx_runner", broken)
    with caplog.at_level(logging.WARNING, logger="tagger.predict"):
        assert Predictor.load(None, "cpu", runtime="auto").runtime == "torch"
    assert "ONNX Runtime is unusable" in caplog.text and "no onnxscript" in caplog.text
    with pytest.raises(ExportError, match="no onnxscript"):
        Predictor.load(None, "cpu", runtime="onnx")  # asked for by name: no silent fallback
    assert not private_cache.exists()
