"""Temperature scaling, calibration error, thresholds for a target precision, and the calibrate command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from streams.cli import app
from tagger.calibrate import fit_temperature, reliability_png
from tagger.card import read_card
from tagger.evaluate import evaluate_manifest, summary
from tagger.metrics import expected_calibration_error, outcomes, reliability, threshold_for_precision
from tagger.synth import SynthConfig, generate_catalog
from tagger.train import TrainConfig, train


def _sampled(n: int, true_temperature: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits, and labels drawn from softmax(logits / true_temperature): the right temperature is known."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 5, generator=generator) * 4
    labels = torch.multinomial(torch.softmax(logits / true_temperature, dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


def test_temperature_scaling_finds_the_temperature_and_lowers_the_error() -> None:
    logits, labels = _sampled(6000, true_temperature=2.0)
    temperature = fit_temperature(logits, labels, multi_label=False)
    assert temperature == pytest.approx(2.0, abs=0.15)
    before = expected_calibration_error(reliability(*outcomes(logits, labels, False, 1.0)))
    after = expected_calibration_error(reliability(*outcomes(logits, labels, False, temperature)))
    assert after < before / 2, (before, after)


def test_multi_label_temperature() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4000, 4, generator=generator) * 3
    labels = torch.bernoulli(torch.sigmoid(logits / 0.5), generator=generator)
    assert fit_temperature(logits, labels, multi_label=True) == pytest.approx(0.5, abs=0.08)


def test_threshold_is_the_lowest_that_reaches_the_precision() -> None:
    # confidences 0.9 .. 0.5; the top three are right, then wrong, right, wrong
    probs = torch.tensor([0.9, 0.8, 0.7, 0.65, 0.6, 0.55])
    logits = torch.log(torch.stack([probs, 1 - probs], dim=1))
    labels = torch.tensor([0, 0, 0, 1, 0, 1])
    threshold, precision, coverage = threshold_for_precision(logits, labels, False, 1.0, 0.75)
    assert threshold == pytest.approx(0.6) and precision == pytest.approx(0.8) and coverage == pytest.approx(5 / 6)
    assert threshold_for_precision(logits, labels, False, 1.0, 0.99)[0] == pytest.approx(0.7)
    impossible = threshold_for_precision(logits, torch.ones(6, dtype=torch.long), False, 1.0, 0.9)
    assert impossible == (1.0, 0.0, 0.0), "nothing reaches the target: everything goes to review"


def test_multi_label_threshold_never_claims_unlikely_values() -> None:
    probs = torch.tensor([[0.95, 0.3], [0.9, 0.2], [0.4, 0.1]])
    logits = torch.logit(probs)
    truth = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # even the 0.4 and 0.3 values are true
    threshold, precision, coverage = threshold_for_precision(logits, truth, True, 1.0, 0.9)
    assert threshold >= 0.5 and precision == 1.0 and coverage == pytest.approx(2 / 3)


def test_the_summary_weighs_the_accepted_share_by_support() -> None:
    heads = {
        "a.x": {"macro_f1": 0.99, "support": 300, "coverage_at_target": 1.0, "precision_at_target": 0.99},
        "a.y": {"macro_f1": 0.91, "support": 100, "coverage_at_target": 0.2, "precision_at_target": 1.0},
        "b.z": {"macro_f1": 0.96, "support": 600},  # no calibration fields: left out of the accepted share
    }
    out = summary(heads)
    assert out["heads"] == 3 and out["weakest_head"] == "a.y" and out["min_macro_f1"] == 0.91
    assert out["mean_macro_f1"] == pytest.approx((0.99 + 0.91 + 0.96) / 3, abs=1e-4)
    assert out["accepted_share"] == pytest.approx((300 + 20) / 400)  # predictions, not heads, are counted
    assert out["accepted_precision"] == pytest.approx((300 * 0.99 + 20 * 1.0) / 320, abs=1e-4)
    assert summary({}) == {}


@pytest.mark.slow
def test_calibrate_writes_the_card_and_evaluate_reports_it(tmp_path: Path) -> None:
    manifest = generate_catalog(tmp_path / "catalog", SynthConfig(n=120, seed=4))
    config = TrainConfig.resolve(
        None,
        data=str(manifest),
        out=str(tmp_path / "model"),
        backbone="test_efficientnet",
        image_size=64,
        epochs=2,
        batch_size=16,
        workers=0,
        device="cpu",
        val_fraction=0.3,
    )
    result = train(config)
    runner = CliRunner()
    plot = tmp_path / "reliability.png"
    done = runner.invoke(
        app,
        [
            "calibrate",
            "--data",
            str(manifest),
            "--model",
            str(result.model_dir),
            "--plot",
            str(plot),
            "--target-precision",
            "0.9",
            "--device",
            "cpu",
        ],
    )
    assert done.exit_code == 0, done.output
    card = read_card(result.model_dir)
    assert card.model_id == result.model_id, "calibration changes the card, never the weights"
    heads = card.metrics["calibration"]["heads"]
    assert set(card.temperatures) == set(heads) == set(card.thresholds) and heads
    assert all(0.05 <= t <= 20 for t in card.temperatures.values())
    assert plot.read_bytes().startswith(b"\x89PNG")
    report = evaluate_manifest(manifest, result.model_dir, "val", "cpu")
    colour = report["attributes"]["apparel.colour"]
    assert {"ece_before", "ece_after", "threshold", "precision_at_target", "coverage_at_target"} <= set(colour)
    assert colour["threshold"] == card.thresholds["apparel.colour"]
    assert json.dumps(report)
    assert report["summary"] == summary(report["attributes"])
    shown = runner.invoke(
        app,
        ["evaluate", "--data", str(manifest), "--model", str(result.model_dir), "--split", "val", "--device", "cpu"],
    )
    assert shown.exit_code == 0, shown.output
    totals = report["summary"]
    assert f"mean macro-F1 {totals['mean_macro_f1']:.3f}" in shown.output
    assert f"{totals['accepted_share']:.1%} of predictions accepted at the card's thresholds" in shown.output
    page = tmp_path / "eval.html"
    args = ["evaluate", "--data", str(manifest), "--model", str(result.model_dir), "--split", "val"]
    reported = runner.invoke(app, [*args, "--device", "cpu", "--report", str(page), "--gallery", "0"])
    assert reported.exit_code == 0, reported.output
    html = page.read_text(encoding="utf-8")
    assert "Thresholds were calibrated for precision 0.9" in html and "<h3>Worst errors" not in html
    assert f'<td class="num">{round(card.thresholds["apparel.colour"], 3)}</td>' in html
    refused = runner.invoke(
        app, ["calibrate", "--data", str(manifest), "--model", str(result.model_dir), "--split", "train"]
    )
    assert refused.exit_code != 0


def test_reliability_png_draws_every_head() -> None:
    from tagger.calibrate import calibrate_head
    from tagger.taxonomy import Attribute

    logits, labels = _sampled(500, 1.5)
    head = calibrate_head(logits, labels, Attribute("x", ("a", "b", "c", "d", "e")), 0.9)
    png = reliability_png({"g.x": head, "g.y": head})
    assert png.startswith(b"\x89PNG") and len(png) > 5000
