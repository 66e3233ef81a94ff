"""A training run stopped mid-epoch (asked politely, or killed) continues from its checkpoint
without losing or repeating optimiser steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tagger.checkpoint import StopRequest, TrainStopped, load_checkpoint
from tagger.cli import STOPPED_EXIT
from tagger.synth import SynthConfig, generate_catalog
from tagger.train import CHECKPOINT, TrainConfig, train
from tests.tagger.conftest import tiny_demo_script_env

pytestmark = pytest.mark.slow

BATCH = 16


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_catalog(tmp_path_factory.mktemp("catalog"), SynthConfig(n=80, seed=5))


def _config(catalog: Path, out: Path, **changes: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "backbone": "test_efficientnet",
        "image_size": 64,
        "epochs": 3,
        "batch_size": BATCH,
        "workers": 0,
        "device": "cpu",
        "oversample": False,
        "data": str(catalog),
        "out": str(out),
    }
    values.update(changes)
    return TrainConfig.resolve(None, **values)


class _Counter:
    """Counts optimiser steps per epoch; sets ``stop`` after ``stop_after`` steps in ``stop_epoch``."""

    def __init__(self, stop: StopRequest | None = None, stop_epoch: int = 0, stop_after: int = 0) -> None:
        self.stop, self.stop_epoch, self.stop_after = stop, stop_epoch, stop_after
        self.steps: dict[int, int] = {}
        self.epoch = 0

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        self.epoch = epoch
        self.steps.setdefault(epoch, 0)

    def batch_end(self, loss: float) -> None:
        self.steps[self.epoch] += 1
        if self.stop is not None and self.epoch == self.stop_epoch and self.steps[self.epoch] == self.stop_after:
            self.stop.set("test")

    def epoch_end(self, epoch: int, summary: dict[str, Any]) -> None:
        pass


def _scheduler_steps(out: Path) -> int:
    return int(load_checkpoint(out / CHECKPOINT, torch.device("cpu"))["scheduler"]["last_epoch"])


def test_a_stop_mid_epoch_checkpoints_and_resume_owes_only_the_rest(catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    stop = StopRequest()
    first = _Counter(stop, stop_epoch=2, stop_after=2)
    with pytest.raises(TrainStopped, match="--resume"):
        train(_config(catalog, out), first, stop=stop)
    per_epoch = first.steps[1]
    assert per_epoch >= 3, "the catalog gives several batches per epoch"
    state = load_checkpoint(out / CHECKPOINT, torch.device("cpu"))["state"]
    assert (state["epoch"], state["step"]) == (1, 2), "the checkpoint is the batch the stop came after"
    assert _scheduler_steps(out) == per_epoch + 2

    second = _Counter()
    result = train(_config(catalog, out), second, resume=True)
    assert second.steps == {2: per_epoch - 2, 3: per_epoch}, "the stopped epoch owes only its remaining batches"
    assert result.epochs_run == 3
    assert _scheduler_steps(out) == 3 * per_epoch, "no optimiser step lost or repeated across the stop"
    assert load_checkpoint(out / CHECKPOINT, torch.device("cpu"))["state"]["step"] == 0


def test_timed_checkpoints_within_an_epoch_bound_what_a_kill_loses(catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    seen: list[tuple[int, int]] = []

    class _Watcher(_Counter):
        def batch_end(self, loss: float) -> None:
            super().batch_end(loss)
            if (out / CHECKPOINT).is_file():
                state = load_checkpoint(out / CHECKPOINT, torch.device("cpu"))["state"]
                seen.append((int(state["epoch"]), int(state["step"])))

    watcher = _Watcher()
    train(_config(catalog, out, epochs=1, checkpoint_every_s=0.0), watcher)
    # a zero interval saves after every batch: when batch k ends, batch k-1's checkpoint is on disk
    assert seen == [(0, k) for k in range(1, watcher.steps[1])]
    assert len(seen) >= 2


def _wait_for(predicate: Any, timeout: float, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            pytest.fail(f"swatch train ended early ({process.returncode}): {process.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no checkpoint appeared in time")
        time.sleep(0.05)


def test_sigterm_to_swatch_train_stops_with_a_checkpoint_and_resume_finishes(catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    command = [sys.executable, "-m", "tagger", "train", "--data", str(catalog), "--out", str(out)]
    command += ["--backbone", "test_efficientnet", "--image-size", "64", "--epochs", "2", "--batch-size", str(BATCH)]
    command += ["--workers", "0", "--device", "cpu", "--no-oversample", "--checkpoint-every", "0"]
    env = {**os.environ, "COLUMNS": "200"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for((out / CHECKPOINT).is_file, 120, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == STOPPED_EXIT, stderr[-2000:]
    assert "stopped" in stderr and "--resume" in stderr
    state = load_checkpoint(out / CHECKPOINT, torch.device("cpu"))["state"]
    assert state["step"] >= 1 or state["epoch"] >= 1, "the checkpoint holds the work done before the signal"

    finished = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "best epoch" in finished.stdout
    assert load_checkpoint(out / CHECKPOINT, torch.device("cpu"))["state"]["epoch"] == 2


def test_the_training_script_resumes_a_run_with_resume_1(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    run = tmp_path / "run"
    env = tiny_demo_script_env(run)
    script = root / "scripts" / "train_demo_model.sh"
    first = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "wrote 60 products" in first.stdout
    again = {**env, "RESUME": "1", "EPOCHS": "2"}
    second = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=again, timeout=300, check=False)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "wrote" not in second.stdout.split("best epoch")[0], "a resumed run keeps its rendered catalogs"
    assert load_checkpoint(run / "model" / CHECKPOINT, torch.device("cpu"))["state"]["epoch"] == 2
    assert (run / "heldout-eval.json").is_file()
    assert "swatch-b0@" in json.loads((run / "model" / "model_card.json").read_text())["model_id"]
