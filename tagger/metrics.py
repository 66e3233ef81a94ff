"""Precision, recall and F1 per value (macro and weighted) and calibration measures (ECE, precision at a threshold).

F1 is plain numpy, so evaluation does not need scikit-learn; averages follow scikit-learn's
conventions: macro over every value that occurs in the truth or the predictions, weighted by true
support. The calibration measures are defined in :mod:`tagger.calibrate`'s docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tagger.taxonomy import Attribute

BoolArray = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]
BINS = 15


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


# -- calibration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reliability:
    """Per-bin mean confidence, accuracy and count: the data of a reliability diagram."""

    confidence: list[float]
    accuracy: list[float]
    count: list[int]


def labelled(logits: torch.Tensor, target: torch.Tensor, attribute: Attribute) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of the items that have this head's label."""
    present = target[:, 0] >= 0 if attribute.multi_label else target >= 0
    return logits[present].float(), target[present]


def outcomes(
    logits: torch.Tensor, target: torch.Tensor, multi_label: bool, temperature: float
) -> tuple[Floats, BoolArray]:
    """(probability, happened) pairs that calibration is judged on (see the module docstring)."""
    scaled = logits / temperature
    if multi_label:
        probs = torch.sigmoid(scaled)
        return probs.flatten().double().numpy(), (target > 0.5).flatten().numpy()
    probs = torch.softmax(scaled, dim=1)
    confidence, predicted = probs.max(dim=1)
    return confidence.double().numpy(), (predicted == target).numpy()


def reliability(probability: Floats, happened: BoolArray, bins: int = BINS) -> Reliability:
    """Mean confidence, accuracy and count per equal-width bin (empty bins give zeros)."""
    index = np.minimum((probability * bins).astype(int), bins - 1)
    conf, acc, count = [], [], []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        count.append(n)
        conf.append(float(probability[mask].mean()) if n else 0.0)
        acc.append(float(happened[mask].mean()) if n else 0.0)
    return Reliability(conf, acc, count)


def expected_calibration_error(table: Reliability) -> float:
    """Count-weighted mean gap between confidence and accuracy."""
    total = sum(table.count)
    if not total:
        return 0.0
    return sum(n * abs(c - a) for c, a, n in zip(table.confidence, table.accuracy, table.count, strict=True)) / total


def threshold_for_precision(
    logits: torch.Tensor, target: torch.Tensor, multi_label: bool, temperature: float, target_precision: float
) -> tuple[float, float, float]:
    """(threshold, precision, coverage): the lowest threshold whose accepted predictions reach the target.

    When no threshold reaches it, the threshold is 1.0 (everything goes to review) and the precision
    and coverage reported are those of accepting only probability-1.0 predictions.
    """
    scaled = logits / temperature
    if multi_label:
        pair_probs = torch.sigmoid(scaled).double().numpy()
        item_max = np.sort(pair_probs.max(axis=1))
        flat, truth = pair_probs.ravel(), (target > 0.5).numpy().ravel()
        order = np.argsort(-flat, kind="stable")
        conf, correct = flat[order], truth[order]
        floor = 0.5
    else:
        confidence, predicted = torch.softmax(scaled, dim=1).max(dim=1)
        order_t = torch.argsort(confidence, descending=True)
        conf = confidence[order_t].double().numpy()
        correct = (predicted[order_t] == target[order_t]).numpy()
        floor = 0.0
    if len(conf) == 0:
        return 1.0, 0.0, 0.0
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    # cut only between distinct confidences, so "accept >= threshold" selects exactly the prefix
    last_of_run = np.append(conf[1:] < conf[:-1], True)
    ok = np.flatnonzero((precision >= target_precision) & last_of_run & (conf >= floor))
    if len(ok) == 0:
        return 1.0, 0.0, 0.0
    k = int(ok[-1])
    threshold = float(conf[k])
    if multi_label:
        coverage = float(1.0 - np.searchsorted(item_max, threshold, side="left") / len(item_max))
    else:
        coverage = (k + 1) / len(conf)
    return threshold, float(precision[k]), coverage


def calibration_fields(
    logits: torch.Tensor, target: torch.Tensor, attribute: Attribute, temperature: float, threshold: float
) -> dict[str, Any]:
    """The evaluation JSON's calibration fields for one head at the card's temperature and threshold."""
    x, y = labelled(logits, target, attribute)
    multi = attribute.multi_label
    before = expected_calibration_error(reliability(*outcomes(x, y, multi, 1.0)))
    after = expected_calibration_error(reliability(*outcomes(x, y, multi, temperature)))
    scaled = x / temperature
    if multi:
        probs = torch.sigmoid(scaled).numpy()
        truth = (y > 0.5).numpy()
        claimed = probs >= threshold
        precision = float(truth[claimed].mean()) if claimed.any() else 0.0
        coverage = float(claimed.any(axis=1).mean()) if len(probs) else 0.0
    else:
        confidence, predicted = torch.softmax(scaled, dim=1).max(dim=1)
        accepted = (confidence >= threshold).numpy()
        correct = (predicted == y).numpy()
        precision = float(correct[accepted].mean()) if accepted.any() else 0.0
        coverage = float(accepted.mean()) if len(accepted) else 0.0
    return {
        "ece_before": round(before, 4),
        "ece_after": round(after, 4),
        "threshold": threshold,
        "precision_at_target": round(precision, 4),
        "coverage_at_target": round(coverage, 4),
    }
