"""Evaluation: run a model over a dataset and report precision, recall and F1 per head and value.

The JSON report is ``{"model_id": ..., "split": ..., "attributes": {HEAD: {"macro_f1", "weighted_f1",
"support", "per_value": {VALUE: {"precision", "recall", "f1", "support"}}, "ece_before", "ece_after",
"threshold", "precision_at_target", "coverage_at_target"}}, "summary": {...}}`` where HEAD is ``group.attribute`` (the
same attribute name can have different values in different groups). The calibration fields use the
card's temperature and threshold: ECE without and with the temperature, and the precision and
coverage (share accepted) of predictions at the threshold. ``summary`` (see :func:`summary`) is the
mean and weakest macro-F1 and the share of all predictions accepted, what the model targets are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from tagger.card import ModelCard, default_model_dir, load_model
from tagger.data import CatalogDataset, DataError, LabelEncoder, stratified_split
from tagger.manifest import CatalogItem, read_manifest
from tagger.metrics import calibration_fields, report_from_indicators, single_label_report
from tagger.model import MultiHeadTagger
from tagger.predict import pick_device
from tagger.taxonomy import Taxonomy


@torch.inference_mode()
def collect_logits(
    model: MultiHeadTagger,
    dataset: CatalogDataset,
    device: torch.device,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """All logits and targets per head for a dataset (in order)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    logits: dict[str, list[torch.Tensor]] = {}
    targets: dict[str, list[torch.Tensor]] = {}
    done = 0
    for batch, batch_targets, _ in loader:
        images = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(images)
        for key, value in out.items():
            logits.setdefault(key, []).append(value.float().cpu())
            targets.setdefault(key, []).append(batch_targets[key])
        done += len(images)
        if progress:
            progress(done, len(dataset))
    return {k: torch.cat(v) for k, v in logits.items()}, {k: torch.cat(v) for k, v in targets.items()}


def report(
    logits: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    taxonomy: Taxonomy,
    temperatures: dict[str, float] | None = None,
    thresholds: dict[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per head: macro and weighted F1, support and per-value precision/recall/F1 on labelled items."""
    result: dict[str, dict[str, Any]] = {}
    for key, _, attribute in taxonomy.heads():
        target = targets[key]
        temperature = (temperatures or {}).get(key, 1.0)
        if attribute.multi_label:
            present = target[:, 0] >= 0
            if not present.any():
                continue
            probs = torch.sigmoid(logits[key][present] / temperature).numpy()
            threshold = (thresholds or {}).get(key, 0.5)
            predicted = probs >= threshold
            # Every image shows at least one pattern: fall back to the most likely value.
            empty = ~predicted.any(axis=1)
            predicted[empty, probs[empty].argmax(axis=1)] = True
            truth = target[present].numpy() > 0.5
            result[key] = report_from_indicators(truth, predicted, attribute.values)
        else:
            present = target >= 0
            if not present.any():
                continue
            predicted_idx = logits[key][present].argmax(dim=1).tolist()
            result[key] = single_label_report(target[present].tolist(), predicted_idx, attribute.values)
    return result


def mean_macro_f1(per_head: dict[str, dict[str, Any]]) -> float:
    """The model-selection score: the mean over heads of macro-F1."""
    return float(np.mean([h["macro_f1"] for h in per_head.values()])) if per_head else 0.0


def summary(per_head: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The targets' view of a report: mean and weakest macro-F1, and the share of predictions accepted.

    A head's accepted share is its ``coverage_at_target`` (the predictions at or above the card's
    threshold; for a multi-label head, the items with a value claimed); over heads it is weighted by
    support, so it is the share of all (item, head) predictions that would skip review. The
    precision of the accepted ones is weighted by how many each head accepts.
    """
    if not per_head:
        return {}
    weakest = min(per_head, key=lambda key: per_head[key]["macro_f1"])
    out: dict[str, Any] = {
        "heads": len(per_head),
        "mean_macro_f1": round(mean_macro_f1(per_head), 4),
        "min_macro_f1": per_head[weakest]["macro_f1"],
        "weakest_head": weakest,
    }
    calibrated = {k: h for k, h in per_head.items() if "coverage_at_target" in h}
    support = sum(int(h["support"]) for h in calibrated.values())
    if support:
        accepted = {k: float(h["coverage_at_target"]) * int(h["support"]) for k, h in calibrated.items()}
        out["accepted_share"] = round(sum(accepted.values()) / support, 4)
        if sum(accepted.values()):
            precision = sum(float(calibrated[k]["precision_at_target"]) * n for k, n in accepted.items())
            out["accepted_precision"] = round(precision / sum(accepted.values()), 4)
    return out


def split_like_training(items: Sequence[CatalogItem], card: ModelCard) -> list[CatalogItem]:
    """Give items without a split the one the model's training run gave them (its seed and fractions)."""
    training = card.training or {}
    return stratified_split(
        items,
        card.taxonomy_obj(),
        int(training.get("seed", 0)),
        float(training.get("val_fraction", 0.1)),
        float(training.get("test_fraction", 0.1)),
    )


@dataclass
class Evaluation:
    """An evaluation run: the JSON report and what the HTML report needs besides it."""

    result: dict[str, Any]
    card: ModelCard
    model_dir: Path
    dataset: CatalogDataset
    root: Path
    logits: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]


def run_evaluation(
    data: str | Path, model_dir: str | Path | None = None, split: str = "test", device: str = "auto"
) -> Evaluation:
    """Evaluate a model directory (the demo model when None) on one split of a manifest.

    Items without a split get the one the model's training run would have given them (same seed
    and fractions), so ``--split test`` on the training manifest is the held-out part.
    """
    target = pick_device(device)
    directory = Path(model_dir) if model_dir else default_model_dir()
    model, card = load_model(directory, target)
    taxonomy = card.taxonomy_obj()
    items = split_like_training(read_manifest(data), card)
    chosen = items if split == "all" else [i for i in items if i.split == split]
    if not chosen:
        raise DataError(f"{data}: no items in split {split!r}")
    encoder = LabelEncoder(taxonomy)
    root = Path(data).parent
    dataset = CatalogDataset(chosen, root, encoder, card.preprocess_config())
    logits, targets = collect_logits(model.to(memory_format=torch.channels_last), dataset, target)
    heads = report(logits, targets, taxonomy, card.temperatures, card.thresholds)
    for key, _, attribute in taxonomy.heads():
        if key in heads:
            heads[key].update(
                calibration_fields(logits[key], targets[key], attribute, card.temperature(key), card.threshold(key))
            )
    result = {
        "model_id": card.model_id,
        "split": split,
        "items": len(dataset),
        "attributes": heads,
        "summary": summary(heads),
    }
    return Evaluation(result, card, directory, dataset, root, logits, targets)


def evaluate_manifest(
    data: str | Path, model_dir: str | Path | None = None, split: str = "test", device: str = "auto"
) -> dict[str, Any]:
    """The JSON report of :func:`run_evaluation`."""
    return run_evaluation(data, model_dir, split, device).result
