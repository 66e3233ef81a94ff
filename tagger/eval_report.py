"""The evaluation report: one self-contained HTML page per ``swatch evaluate --report``.

Per head (``group.attribute``): the scores of the JSON report (macro and weighted F1, ECE before and
after the card's temperature, threshold, precision and coverage at it), per-value precision, recall,
F1 and support, a confusion matrix, a reliability diagram, a precision-coverage curve, and a gallery
of the worst errors, each with the photo and a Grad-CAM of the value the model wrongly chose (or
missed), so a reader sees what misled it.

What the curves mean:

- single-label heads: each labelled item counts once, with the calibrated probability of its top
  value as confidence; "accepted" is confidence >= threshold, precision is the share of accepted
  items whose top value is right, coverage the share accepted;
- multi-label heads: every (item, value) pair counts, as in :mod:`tagger.metrics`; an item is
  covered when any of its values is accepted; the confusion matrix counts, for every labelled item,
  true value (row) against each predicted value (column), so off-diagonal cells are values claimed
  alongside or instead of the true one.

"Worst errors" are the most confident mistakes: for single-label heads, wrong top values ranked by
their probability; for multi-label heads, false positives ranked by probability and missed values
ranked by how low their probability was. Everything is inlined (``data:`` URIs); plots use
matplotlib's object API through :mod:`tagger.html_report`.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from numpy.typing import NDArray

from tagger.errors import TaggerError
from tagger.evaluate import Evaluation
from tagger.explain import explain
from tagger.html_report import esc, figure_png, page, table, thumbnail_figure
from tagger.metrics import labelled, outcomes, reliability
from tagger.predict import Predictor
from tagger.taxonomy import Attribute

logger = logging.getLogger(__name__)

DEFAULT_GALLERY = 6  # worst errors shown per head
SUMMARY_COLUMNS = (
    "head", "macro-F1", "weighted F1", "support", "ECE T=1", "ECE calibrated", "threshold",
    "precision at threshold", "accepted",
)  # fmt: skip
CURVE_POINTS = 200  # thresholds sampled on a precision-coverage curve (multi-label)


@dataclass(frozen=True)
class Error:
    """One mistake worth showing: an item, the value to explain, and why it is wrong."""

    index: int  # row among the labelled items (the rows of ``truth``)
    value: str  # the value the Grad-CAM explains (the wrong top value, or the missed one)
    probability: float
    truth: str
    kind: str  # "wrong", "false positive" or "missed"


def _probabilities(logits: torch.Tensor, attribute: Attribute, temperature: float) -> NDArray[np.float64]:
    scaled = logits.float() / temperature
    probs = torch.sigmoid(scaled) if attribute.multi_label else torch.softmax(scaled, dim=1)
    return probs.double().numpy()


def _claimed(probs: NDArray[np.float64], threshold: float) -> NDArray[np.bool_]:
    """Multi-label values claimed at ``threshold``; an item with none claims its top value, as the evaluation does."""
    claimed = probs >= threshold
    empty = ~claimed.any(axis=1)
    claimed[empty, probs[empty].argmax(axis=1)] = True
    return claimed


def confusion(truth: NDArray[Any], probs: NDArray[np.float64], attribute: Attribute, threshold: float) -> NDArray[Any]:
    """(V, V) counts: true value (row) against predicted value (column), see the module docstring."""
    size = attribute.size
    matrix = np.zeros((size, size), dtype=np.int64)
    if attribute.multi_label:
        claimed = _claimed(probs, threshold)
        for true_row, claimed_row in zip(truth > 0.5, claimed, strict=True):
            for t in np.flatnonzero(true_row):
                matrix[t] += claimed_row
        return matrix
    np.add.at(matrix, (truth.astype(int), probs.argmax(axis=1)), 1)
    return matrix


def precision_coverage(
    truth: NDArray[Any], probs: NDArray[np.float64], multi_label: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(coverage, precision) points from the most to the least confident acceptance threshold."""
    if multi_label:
        flat, correct = probs.ravel(), (truth > 0.5).ravel()
        item_max = np.sort(probs.max(axis=1))
        cuts = np.unique(np.quantile(flat, np.linspace(0.0, 1.0, CURVE_POINTS)))[::-1]
        cuts = cuts[cuts >= 0.5] if (cuts >= 0.5).any() else cuts[:1]
        coverage = 1.0 - np.searchsorted(item_max, cuts, side="left") / max(1, len(item_max))
        precision = np.array([correct[flat >= c].mean() if (flat >= c).any() else 1.0 for c in cuts])
        return coverage, precision
    confidence = probs.max(axis=1)
    right = probs.argmax(axis=1) == truth
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(right[order])
    counts = np.arange(1, len(order) + 1)
    return counts / max(1, len(order)), hits / counts


def worst_errors(
    truth: NDArray[Any], probs: NDArray[np.float64], attribute: Attribute, count: int, threshold: float = 0.5
) -> list[Error]:
    """The ``count`` most confident mistakes among labelled rows (indices into ``truth``).

    Multi-label values count as claimed at ``threshold`` (the card's), as in the evaluation.
    """
    values = attribute.values
    found: list[Error] = []
    if attribute.multi_label:
        true = truth > 0.5
        claimed = _claimed(probs, threshold)
        names = [", ".join(values[v] for v in np.flatnonzero(row)) or "-" for row in true]
        for i, v in zip(*np.nonzero(~true & claimed), strict=True):
            found.append(Error(int(i), values[v], float(probs[i, v]), names[i], "false positive"))
        for i, v in zip(*np.nonzero(true & ~claimed), strict=True):
            found.append(Error(int(i), values[v], float(probs[i, v]), names[i], "missed"))
        # by how sure the model was of the wrong answer
        found.sort(key=lambda e: -e.probability if e.kind == "false positive" else e.probability - 1.0)
    else:
        predicted = probs.argmax(axis=1)
        for i in np.flatnonzero(predicted != truth):
            found.append(Error(int(i), values[predicted[i]], float(probs[i, predicted[i]]), values[truth[i]], "wrong"))
        found.sort(key=lambda e: -e.probability)
    return found[:count]


def _matrix_png(matrix: NDArray[Any], values: Sequence[str], title: str) -> str:
    size = len(values)
    inches = min(9.0, 1.6 + 0.42 * size)
    figure = Figure(figsize=(inches + 0.6, inches))
    axes = figure.subplots()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for (r, c), n in np.ndenumerate(matrix):
        if n:
            colour = "white" if share[r, c] > 0.6 else "black"
            axes.text(c, r, str(n), ha="center", va="center", fontsize=7, color=colour)
    axes.set_xticks(range(size), values, rotation=60, ha="right", fontsize=7)
    axes.set_yticks(range(size), values, fontsize=7)
    axes.set_xlabel("predicted", fontsize=8)
    axes.set_ylabel("true", fontsize=8)
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure_png(figure)


def _calibration_png(
    x: torch.Tensor, y: torch.Tensor, attribute: Attribute, probs: NDArray[np.float64], scores: dict[str, Any],
    *, temperature: float, target: float | None,
) -> str:  # fmt: skip
    """Reliability diagram and precision-coverage curve; ``scores`` has the evaluation's calibration fields."""
    threshold = float(scores["threshold"])
    figure = Figure(figsize=(8.0, 3.4))
    left, right = figure.subplots(1, 2)
    left.plot([0, 1], [0, 1], color="#999", linewidth=1, linestyle="--")
    for t, colour, label in ((1.0, "#d95f02", "T=1"), (temperature, "#1b9e77", f"T={temperature:.2f}")):
        bins = reliability(*outcomes(x, y, attribute.multi_label, t))
        used = np.asarray(bins.count) > 0
        points = np.asarray(bins.confidence)[used], np.asarray(bins.accuracy)[used]
        left.plot(*points, "o-", color=colour, markersize=3, label=label)
    left.axvline(threshold, color="#7570b3", linewidth=1, label=f"threshold {threshold:.2f}")
    left.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title="reliability")
    left.legend(fontsize=7, loc="upper left")
    coverage, precision = precision_coverage(y.numpy(), probs, attribute.multi_label)
    right.plot(coverage, precision, color="#1b9e77")
    if target is not None:
        right.axhline(target, color="#999", linewidth=1, linestyle="--", label=f"target {target:.2f}")
    if scores["coverage_at_target"] > 0:  # calibration_fields' numbers at the card's threshold
        at = (scores["coverage_at_target"], scores["precision_at_target"])
        label = f"threshold: {at[0]:.0%} accepted, precision {at[1]:.3f}"
        right.plot([at[0]], [at[1]], "o", color="#7570b3", label=label)
    low = float(min(0.5, precision.min(initial=1.0)))
    right.set(xlim=(0, 1.02), ylim=(low - 0.02, 1.01), title="precision against coverage")
    right.set(xlabel="coverage (share accepted)", ylabel="precision")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7, loc="lower left")
    for axes in (left, right):
        axes.title.set_fontsize(9)
        axes.tick_params(labelsize=7)
        axes.xaxis.label.set_fontsize(8)
        axes.yaxis.label.set_fontsize(8)
    figure.tight_layout()
    return figure_png(figure)


class _Explainer:
    """Grad-CAM overlays for the gallery, through :func:`tagger.explain.explain`; failures become a note."""

    def __init__(self, model_dir: Path, device: str) -> None:
        self.predictor = Predictor.load(model_dir, device)

    def overlay(self, location: str, key: str, group: str, value: str) -> str:
        try:
            data = Path(location).read_bytes()
            (result,) = explain(self.predictor, data, [key], group=group, value=value)
        except (OSError, TaggerError, ValueError) as exc:
            return f"<figure><div>(no Grad-CAM: {esc(exc)})</div></figure>"
        uri = "data:image/png;base64," + base64.b64encode(result.overlay_png()).decode("ascii")
        caption = f"Grad-CAM for {value} ({result.probability:.2f})"
        return f'<figure><img alt="" src="{uri}" width="160"><figcaption>{esc(caption)}</figcaption></figure>'


def _summary_rows(heads: dict[str, dict[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for key, s in heads.items():
        rows.append(
            [
                key,
                round(s["macro_f1"], 3),
                round(s["weighted_f1"], 3),
                s["support"],
                s.get("ece_before", ""),
                s.get("ece_after", ""),
                round(s["threshold"], 3) if "threshold" in s else "",
                s.get("precision_at_target", ""),
                f"{s['coverage_at_target']:.1%}" if "coverage_at_target" in s else "",
            ]
        )
    return rows


def build_report(
    evaluation: Evaluation, *, data: str | Path, gallery: int = DEFAULT_GALLERY, device: str = "auto"
) -> str:
    """The report's HTML (see the module docstring) for an evaluation run of ``data``."""
    result, card, dataset = evaluation.result, evaluation.card, evaluation.dataset
    logits, targets = evaluation.logits, evaluation.targets
    heads: dict[str, dict[str, Any]] = result["attributes"]
    calibration = (card.metrics or {}).get("calibration") or {}
    target = calibration.get("target_precision")
    explainer = _Explainer(evaluation.model_dir, device) if gallery > 0 else None
    attributes = {key: (group.name, attribute) for key, group, attribute in card.taxonomy_obj().heads()}
    parts = [
        f"<p>Model <code>{esc(result['model_id'])}</code> on split <b>{esc(result['split'])}</b> of "
        f"<code>{esc(data)}</code>: {result['items']} items. "
        + (
            f"Thresholds were calibrated for precision {target} on {esc(calibration.get('data', '?'))} "
            f"(split {esc(calibration.get('split', '?'))})."
            if target is not None
            else "The model is not calibrated: temperature 1 and the default threshold."
        )
        + "</p>",
        "<h2>Summary</h2>",
        table(SUMMARY_COLUMNS, _summary_rows(heads)),
        '<p class="note">Single-label heads count items; multi-label heads count (item, value) pairs for '
        "precision and items for coverage. Worst errors are the most confident mistakes.</p>",
    ]
    for key, scores in heads.items():
        group, attribute = attributes[key]
        temperature, threshold = card.temperature(key), card.threshold(key)
        x, y = labelled(logits[key], targets[key], attribute)
        rows = np.flatnonzero((targets[key][:, 0] >= 0 if attribute.multi_label else targets[key] >= 0).numpy())
        probs = _probabilities(x, attribute, temperature)
        truth = y.numpy()
        kind = "multi-label" if attribute.multi_label else "single-label"
        parts += [
            f'<h2 id="{esc(key)}">{esc(key)}</h2>',
            f"<p>{kind}; macro-F1 {scores['macro_f1']:.3f}, weighted F1 {scores['weighted_f1']:.3f}, "
            f"{scores['support']} labelled items; temperature {temperature:.2f}, threshold {threshold:.3f}.</p>",
            table(
                ["value", "precision", "recall", "F1", "support"],
                [
                    [v, round(s["precision"], 3), round(s["recall"], 3), round(s["f1"], 3), s["support"]]
                    for v, s in scores["per_value"].items()
                ],
            ),
            _matrix_png(confusion(truth, probs, attribute, threshold), attribute.values, f"{key}: confusion (counts)"),
            _calibration_png(x, y, attribute, probs, scores, temperature=temperature, target=target),
        ]
        if explainer is not None:
            errors = worst_errors(truth, probs, attribute, gallery, threshold)
            parts.append(f"<h3>Worst errors ({len(errors)})</h3>")
            if not errors:
                parts.append("<p>No mistakes on this split.</p>")
            for error in errors:
                item = dataset.items[int(rows[error.index])]
                location = item.image_location(evaluation.root)
                caption = f"{item.id}: true {error.truth}; {error.kind} {error.value} ({error.probability:.2f})"
                parts.append(
                    '<div class="error">'
                    + thumbnail_figure(location, caption, size=160)
                    + explainer.overlay(location, key, group, error.value)
                    + "</div>"
                )
    return page(f"Evaluation of {result['model_id']}", "\n".join(parts))
