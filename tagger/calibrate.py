"""Calibration and review thresholds: temperature per head, thresholds for a target precision.

``calibrate_model`` runs a model over a validation split, fits one temperature per head (the value
that minimises the negative log-likelihood of the labels, for softmax and sigmoid heads alike),
and picks per head the lowest threshold whose accepted predictions reach the target precision
(default 0.95). Both go into the model card, which the predictor and the stream worker read; the
weights (and so the model id) do not change.

What counts as a prediction:

- **single-label head**: the top value; its confidence is the top probability, and it is correct
  when it equals the label. Accepted when confidence >= threshold.
- **multi-label head**: every (item, value) pair with probability >= threshold is a claimed value;
  precision is over claimed pairs, coverage is the share of items with at least one claimed value.
  Thresholds never go below 0.5 there (a value the model thinks absent is not claimed).

Expected calibration error (ECE) uses 15 equal-width bins: of the top confidence vs. accuracy for
single-label heads, of each value's probability vs. its presence for multi-label heads.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from tagger.card import CARD_FILE, ModelCard, default_model_dir, load_model
from tagger.data import CatalogDataset, DataError, LabelEncoder
from tagger.errors import TaggerError
from tagger.evaluate import collect_logits, split_like_training
from tagger.manifest import read_manifest
from tagger.metrics import (
    Reliability,
    expected_calibration_error,
    labelled,
    outcomes,
    reliability,
    threshold_for_precision,
)
from tagger.predict import pick_device
from tagger.taxonomy import Attribute

DEFAULT_TARGET_PRECISION = 0.95
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


class CalibrationError(TaggerError):
    """Calibration cannot run (no labelled validation data, a read-only model directory, ...)."""


@dataclass(frozen=True)
class HeadCalibration:
    """What calibration found for one head."""

    temperature: float
    ece_before: float
    ece_after: float
    threshold: float
    precision_at_target: float
    coverage_at_target: float
    support: int
    reliability_before: Reliability
    reliability_after: Reliability

    def summary(self) -> dict[str, float | int]:
        """The numbers that go into the model card and the evaluation JSON."""
        data = asdict(self)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in data.items() if "reliability" not in k}


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> float:
    """The temperature that minimises the labels' negative log-likelihood (1.0 without data)."""
    if len(logits) == 0:
        return 1.0
    log_t = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        scaled = logits / log_t.exp()
        if multi_label:
            value = F.binary_cross_entropy_with_logits(scaled, target.float())
        else:
            value = F.cross_entropy(scaled, target.long())
        value.backward()  # type: ignore[no-untyped-call]
        return value

    with torch.enable_grad():
        optimiser.step(loss)  # type: ignore[no-untyped-call]
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        return 1.0
    return min(MAX_TEMPERATURE, max(MIN_TEMPERATURE, temperature))


def calibrate_head(
    logits: torch.Tensor, target: torch.Tensor, attribute: Attribute, target_precision: float
) -> HeadCalibration:
    """Temperature, ECE before/after, threshold, precision and coverage for one head's labelled items."""
    x, y = labelled(logits, target, attribute)
    multi = attribute.multi_label
    temperature = fit_temperature(x, y, multi)
    before = reliability(*outcomes(x, y, multi, 1.0))
    after = reliability(*outcomes(x, y, multi, temperature))
    threshold, precision, coverage = threshold_for_precision(x, y, multi, temperature, target_precision)
    return HeadCalibration(
        temperature=temperature,
        ece_before=expected_calibration_error(before),
        ece_after=expected_calibration_error(after),
        threshold=threshold,
        precision_at_target=precision,
        coverage_at_target=coverage,
        support=len(x),
        reliability_before=before,
        reliability_after=after,
    )


def calibrate_logits(
    logits: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    card: ModelCard,
    target_precision: float = DEFAULT_TARGET_PRECISION,
) -> dict[str, HeadCalibration]:
    """Calibrate every head that has labelled items."""
    out = {}
    for key, _, attribute in card.taxonomy_obj().heads():
        x, _ = labelled(logits[key], targets[key], attribute)
        if len(x):
            out[key] = calibrate_head(logits[key], targets[key], attribute, target_precision)
    return out


def calibrate_model(
    data: str | Path,
    model_dir: str | Path | None = None,
    *,
    split: str = "val",
    target_precision: float = DEFAULT_TARGET_PRECISION,
    device: str = "auto",
    write: bool = True,
) -> tuple[ModelCard, dict[str, HeadCalibration]]:
    """Fit temperatures and thresholds on a manifest's split and (by default) write them into the card.

    Items without a split get the one the model's training run gave them, so ``--split val`` on the
    training manifest is the validation part the model was selected on, never its training data.
    """
    if not 0.5 <= target_precision < 1.0:
        raise CalibrationError(f"target precision must be in [0.5, 1), got {target_precision}")
    directory = Path(model_dir or default_model_dir())
    torch_device = pick_device(device)
    model, card = load_model(directory, torch_device)
    taxonomy = card.taxonomy_obj()
    chosen = [i for i in split_like_training(read_manifest(data), card) if i.split == split]
    if not chosen:
        raise CalibrationError(f"{data}: no items in split {split!r} to calibrate on")
    try:
        dataset = CatalogDataset(chosen, Path(data).parent, LabelEncoder(taxonomy), card.preprocess_config())
    except DataError as exc:
        raise CalibrationError(str(exc)) from exc
    logits, targets = collect_logits(model.to(memory_format=torch.channels_last), dataset, torch_device)
    heads = calibrate_logits(logits, targets, card, target_precision)
    card.temperatures = {k: round(h.temperature, 4) for k, h in heads.items()}
    card.thresholds = {k: round(h.threshold, 4) for k, h in heads.items()}
    card.metrics = {
        **card.metrics,
        "calibration": {
            "data": str(data),
            "split": split,
            "items": len(dataset),
            "target_precision": target_precision,
            "heads": {k: h.summary() for k, h in heads.items()},
        },
    }
    if write:
        path = directory / CARD_FILE
        try:
            path.write_text(card.to_json(), encoding="utf-8")
        except OSError as exc:
            raise CalibrationError(f"cannot write {path}: {exc}") from exc
    return card, heads


def reliability_png(heads: dict[str, HeadCalibration], path: Path | None = None, columns: int = 4) -> bytes:
    """A grid of reliability diagrams (before and after calibration), as PNG bytes (and a file if asked)."""
    keys = list(heads)
    rows = max(1, math.ceil(len(keys) / columns))
    fig = Figure(figsize=(3.2 * columns, 3.0 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        head = heads[key]
        ax.plot([0, 1], [0, 1], color="#999", linewidth=1, linestyle="--")
        for table, colour, label in (
            (head.reliability_before, "#d95f02", f"T=1, ECE {head.ece_before:.3f}"),
            (head.reliability_after, "#1b9e77", f"T={head.temperature:.2f}, ECE {head.ece_after:.3f}"),
        ):
            used = np.asarray(table.count) > 0
            # each bin is drawn at its mean confidence, not its centre
            x, y = np.asarray(table.confidence)[used], np.asarray(table.accuracy)[used]
            ax.plot(x, y, "o-", color=colour, markersize=3, label=label)
        ax.axvline(head.threshold, color="#7570b3", linewidth=1, label=f"threshold {head.threshold:.2f}")
        ax.set_title(key, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.supxlabel("confidence")
    fig.supylabel("accuracy")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    data = buffer.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data
