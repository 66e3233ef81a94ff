"""`swatch bench train`: real training steps timed side by side, a table and JSON (no speed asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from streams.cli import app
from tagger.bench import bench_train


def test_bench_train_times_every_configuration_and_estimates_a_run() -> None:
    result = bench_train(
        [("test_efficientnet", 32), ("test_efficientnet", 48)],
        torch.device("cpu"),
        batch_size=4,
        rounds=2,
        steps_per_round=1,
        images_per_run=1000,
    )
    rows = result["results"]
    assert [(r["backbone"], r["image_size"]) for r in rows] == [("test_efficientnet", 32), ("test_efficientnet", 48)]
    for row in rows:
        assert row["steps"] == 2 and row["images_per_s"] > 0 and row["parameters"] > 0
        assert row["hours_per_run"] == round(1000 / row["images_per_s"] / 3600, 2)
    assert rows[0]["relative_to_first"] == 1.0


def test_bench_train_updates_the_weights() -> None:
    """The timed step is a real optimiser step, not a forward pass."""
    from tagger.bench import _train_step_fn

    torch.manual_seed(0)
    model, step = _train_step_fn("test_efficientnet", 32, 4, torch.device("cpu"), seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_cli_writes_the_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "bench-train.json"
    args = ["bench", "train", "--backbones", "test_efficientnet", "--image-sizes", "32", "--batch-size", "2"]
    done = CliRunner().invoke(app, [*args, "--rounds", "1", "--steps", "1", "--device", "cpu", "--json", str(out)])
    assert done.exit_code == 0, done.output
    assert "images/s" in done.output
    assert json.loads(out.read_text())["results"][0]["backbone"] == "test_efficientnet"
    refused = CliRunner().invoke(app, [*args, "--backbones", "no_such_net", "--json", str(out)])
    assert refused.exit_code == 1 and "cannot run the training benchmark" in refused.output
    bad_size = CliRunner().invoke(app, ["bench", "train", "--image-sizes", "big", "--json", str(out)])
    assert bad_size.exit_code == 1 and "invalid literal" in bad_size.output
