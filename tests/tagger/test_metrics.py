"""Metrics agree with hand-computed values (the scikit-learn conventions)."""

from __future__ import annotations

import numpy as np
import pytest

from tagger.metrics import report_from_indicators, single_label_report


def test_single_label_by_hand() -> None:
    # truth:     a a b b c ; predicted: a b b b a
    report = single_label_report([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    a, b, c = (report["per_value"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (0.5, 0.5, 2)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0
    assert c["f1"] == 0.0 and c["support"] == 1
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert report["weighted_f1"] == pytest.approx((0.5 * 2 + 0.8 * 2 + 0) / 5)
    assert report["support"] == 5


def test_values_absent_everywhere_do_not_dilute_macro() -> None:
    report = single_label_report([0, 1], [0, 1], ["a", "b", "never"])
    assert report["macro_f1"] == 1.0 and "never" not in report["per_value"]


def test_multi_label() -> None:
    truth = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    predicted = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1]], dtype=bool)
    report = report_from_indicators(truth, predicted, ["x", "y", "z"])
    assert report["per_value"]["x"]["f1"] == 1.0
    assert report["per_value"]["y"]["recall"] == 0.5
    assert report["per_value"]["z"]["precision"] == 0.5
