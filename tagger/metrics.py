"""Precision, recall and F1 per value, macro and weighted, for single- and multi-label heads.

Plain numpy, so evaluation does not need scikit-learn. Averages follow scikit-learn's conventions:
macro over every value that occurs in the truth or the predictions, weighted by true support.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]


def _safe_div(num: float, den: float) -> float:
    return num / den if den else 0.0


def report_from_indicators(truth: BoolArray, predicted: BoolArray, values: Sequence[str]) -> dict[str, Any]:
    """Metrics from (N, V) true and predicted indicator matrices (one-hot rows for single-label)."""
    per_value: dict[str, dict[str, float | int]] = {}
    f1s, supports = [], []
    for j, value in enumerate(values):
        t, p = truth[:, j], predicted[:, j]
        tp = int(np.sum(t & p))
        support, predicted_n = int(np.sum(t)), int(np.sum(p))
        if support == 0 and predicted_n == 0:
            continue  # a value absent from both sides does not count towards the macro average
        precision, recall = _safe_div(tp, predicted_n), _safe_div(tp, support)
        f1 = _safe_div(2 * precision * recall, precision + recall)
        per_value[value] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        f1s.append(f1)
        supports.append(support)
    total = int(sum(supports))
    return {
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "weighted_f1": _safe_div(float(np.dot(f1s, supports)), total) if f1s else 0.0,
        "support": int(truth.any(axis=1).sum()),
        "per_value": per_value,
    }


def single_label_report(truth: Sequence[int], predicted: Sequence[int], values: Sequence[str]) -> dict[str, Any]:
    """Metrics for a softmax head from true and predicted value indices."""
    n, v = len(truth), len(values)
    t = np.zeros((n, v), dtype=bool)
    p = np.zeros((n, v), dtype=bool)
    t[np.arange(n), np.asarray(truth, dtype=int)] = True
    p[np.arange(n), np.asarray(predicted, dtype=int)] = True
    return report_from_indicators(t, p, values)


def accuracy(truth: Sequence[int], predicted: Sequence[int]) -> float:
    """Share of exact matches."""
    return float(np.mean(np.asarray(truth) == np.asarray(predicted))) if len(truth) else 0.0
