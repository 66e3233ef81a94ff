"""scripts/gpu_train.sh, the GPU recipe as one prepared script, run small on the CPU: it must bring back a
calibrated model directory with both held-out reports, ready to copy into tagger/models/demo."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tagger.card import load_model
from tests.tagger.conftest import tiny_demo_script_env


def test_the_gpu_script_brings_back_a_calibrated_model_directory(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "out"
    env = tiny_demo_script_env(tmp_path / "run", OUT=str(out), FRESH_SEED="5")
    done = subprocess.run(
        ["bash", str(root / "scripts" / "gpu_train.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    model = out / "model"
    assert {p.name for p in model.iterdir()} == {
        "weights.safetensors",
        "model_card.json",
        "heldout_eval.json",
        "heldout_seed5_eval.json",
        "train.log",
    }
    _, card = load_model(model)  # hash-checked: the weights belong to the card
    assert card.model_id.startswith("swatch-b0@") and card.backbone == "test_efficientnet"
    assert card.thresholds and card.metrics["calibration"]["split"] == "val"
    for name in ("heldout_eval.json", "heldout_seed5_eval.json"):
        report = json.loads((model / name).read_text())
        assert report["model_id"] == card.model_id and report["split"] == "test" and report["items"] == 30
    assert "cuda" in (model / "train.log").read_text()
