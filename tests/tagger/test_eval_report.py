"""The HTML evaluation report: its numbers (confusion, precision-coverage, worst errors) and the page."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from streams.cli import app
from tagger.eval_report import confusion, precision_coverage, worst_errors
from tagger.synth import SynthConfig, generate_catalog
from tagger.taxonomy import Attribute

SINGLE = Attribute("type", ("a", "b", "c"))
MULTI = Attribute("pattern", ("plain", "striped", "floral"), multi_label=True)


def test_confusion_counts_true_rows_against_predicted_columns() -> None:
    truth = np.array([0, 0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    assert confusion(truth, probs, SINGLE, 0.5).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_multi_label_confusion_counts_every_claimed_value_and_falls_back_to_the_top_one() -> None:
    truth = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # item 0 claims plain and floral; item 1 claims nothing above 0.5, so its top value (striped) counts
    probs = np.array([[0.9, 0.3, 0.7], [0.1, 0.4, 0.2]])
    matrix = confusion(truth, probs, MULTI, 0.5)
    assert matrix.tolist() == [[1, 0, 1], [1, 0, 1], [0, 1, 0]]


def test_precision_coverage_starts_with_the_most_confident_prediction() -> None:
    truth = np.array([0, 1, 2, 0])
    probs = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2]])
    coverage, precision = precision_coverage(truth, probs, multi_label=False)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    # confidence order 0.9 (right), 0.8 (right), 0.6 (wrong), 0.5 (right)
    assert precision.tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.75])


def test_multi_label_precision_coverage_counts_pairs_and_covers_items() -> None:
    truth = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    probs = np.array([[0.95, 0.6, 0.1], [0.2, 0.3, 0.1]])
    coverage, precision = precision_coverage(truth, probs, multi_label=True)
    assert coverage[0] == 0.5 and precision[0] == 1.0, "the strictest cut accepts only item 0's plain"
    assert coverage[-1] == 0.5 and precision[-1] == 0.5, "at 0.5 item 0's striped is a false positive"


def test_worst_errors_are_the_most_confident_mistakes() -> None:
    truth = np.array([0, 1, 2, 0])
    probs = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7]])
    errors = worst_errors(truth, probs, SINGLE, 5)
    assert [(e.index, e.value, e.truth, e.kind) for e in errors] == [(3, "c", "a", "wrong"), (1, "a", "b", "wrong")]
    assert worst_errors(truth, probs, SINGLE, 1)[0].probability == pytest.approx(0.7)


def test_multi_label_worst_errors_rank_false_positives_and_misses() -> None:
    truth = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    probs = np.array([[0.95, 0.9, 0.1], [0.2, 0.05, 0.6]])
    errors = worst_errors(truth, probs, MULTI, 10)
    kinds = [(e.index, e.value, e.kind) for e in errors]
    # by how sure the model was of the wrong answer: striped missed at 0.05 is 0.95 sure it is absent
    assert kinds == [(1, "striped", "missed"), (0, "striped", "false positive"), (1, "floral", "false positive")]
    # at a threshold of 0.95 item 0's striped (0.9) is no longer claimed; item 1 claims nothing that
    # high, so its top value (floral) still counts, as in the evaluation
    strict = worst_errors(truth, probs, MULTI, 10, threshold=0.95)
    assert [(e.index, e.value, e.kind) for e in strict] == [(1, "striped", "missed"), (1, "floral", "false positive")]


def _data_uris(html: str) -> list[bytes]:
    return [base64.b64decode(d) for d in re.findall(r'src="data:image/[a-z]+;base64,([^"]+)"', html)]


@pytest.mark.slow
def test_evaluate_writes_a_self_contained_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    manifest = generate_catalog(tmp_path / "catalog", SynthConfig(n=30, seed=9, split="test"))
    out = tmp_path / "reports" / "eval.html"
    json_path = tmp_path / "eval.json"
    args = ["evaluate", "--data", str(manifest), "--model", str(tiny_model_dir), "--device", "cpu"]
    done = CliRunner().invoke(app, [*args, "--json", str(json_path), "--report", str(out), "--gallery", "2"])
    assert done.exit_code == 0, done.output
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "not calibrated" in html
    # nothing is linked: every image is inlined, no file or URL is referenced
    assert not re.search(r'src="(?!data:)', html)
    for head in ("apparel.type", "apparel.pattern", "footwear.heel_height"):
        assert f'<h2 id="{head}">' in html
    images = _data_uris(html)
    assert sum(i.startswith(b"\x89PNG") for i in images) >= 2 * 11, "a confusion matrix and curves per head"
    # an untrained model makes mistakes: the gallery shows the photo and a Grad-CAM for each
    assert html.count("<h3>Worst errors (2)</h3>") >= 10
    assert html.count("Grad-CAM for ") == html.count('<div class="error">') > 0
    assert "no Grad-CAM" not in html


def test_report_needs_an_existing_manifest(tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path / "none.csv"), "--report", "x.html"])
    assert done.exit_code != 0 and not Path("x.html").exists()
