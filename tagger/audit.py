"""Label audit: find labels that are probably wrong, from out-of-fold predictions and confident learning.

:func:`audit` splits a manifest's usable rows into K folds (stratified like
:func:`tagger.data.stratified_split`), trains K models with :func:`tagger.train.train` (each on K-1
folds, a tenth of them kept back for the best-epoch choice) and predicts the held-out fold, so every
row gets probabilities from a model that never saw its label. Per head, cleanlab's
:func:`cleanlab.filter.find_label_issues` (``return_indices_ranked_by="self_confidence"``; with
``multi_label=True`` for multi-label heads) flags the labels that disagree with those probabilities.

The result is a ranked list for a person to check (:data:`ISSUE_COLUMNS`, lowest label quality
first), not a list of corrections: the suggested label is the model's choice. The default model is
small and fast (``resnet10t`` at 96 px, a few epochs): it catches blatant errors; a larger backbone
and more epochs catch subtler ones.
"""

from __future__ import annotations

import csv
import logging
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cleanlab.filter import find_label_issues
from cleanlab.multilabel_classification import get_label_quality_scores as multi_label_quality
from cleanlab.rank import get_label_quality_scores
from numpy.typing import NDArray

from tagger.card import load_model
from tagger.data import CatalogDataset, LabelEncoder, stratified_split
from tagger.errors import TaggerError
from tagger.evaluate import collect_logits
from tagger.html_report import esc, page, table, thumbnail_figure
from tagger.manifest import CatalogItem, read_manifest, write_manifest
from tagger.predict import pick_device
from tagger.taxonomy import Attribute, Taxonomy, load_taxonomy
from tagger.train import Reporter, TrainConfig, train

logger = logging.getLogger(__name__)

ISSUE_COLUMNS = (
    "id",
    "image",
    "attribute",
    "given_label",
    "suggested_label",
    "label_quality",
    "rank",
    "attribute_rank",
)
_REMOTE = ("http://", "https://")


class AuditError(TaggerError):
    """The audit cannot run as configured."""


@dataclass(frozen=True)
class AuditConfig:
    """The cross-validation and the (deliberately small) models it trains."""

    folds: int = 3
    backbone: str = "resnet10t"
    image_size: int = 96
    epochs: int = 4
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    taxonomy: str | None = None
    pretrained: bool = False
    backbone_weights: str | None = None
    val_fraction: float = 0.1
    work_dir: str | None = None  # keep the fold models here; default: a temporary folder, deleted afterwards
    train_overrides: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig setting

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise AuditError(f"folds must be >= 2, not {self.folds}")
        if not 0 < self.val_fraction < 1:
            raise AuditError(f"val_fraction must be in (0, 1), not {self.val_fraction}")


@dataclass(frozen=True)
class LabelIssue:
    """One label that the out-of-fold model doubts; ``rank`` 1 is the first to check."""

    id: str
    image: str
    attribute: str
    given_label: str
    suggested_label: str
    label_quality: float
    rank: int
    attribute_rank: int
    location: str = ""  # the image file, for thumbnails (not written to the CSV)

    def row(self) -> list[str]:
        """The CSV cells, in ISSUE_COLUMNS order."""
        return [
            self.id,
            self.image,
            self.attribute,
            self.given_label,
            self.suggested_label,
            f"{self.label_quality:.4f}",
            str(self.rank),
            str(self.attribute_rank),
        ]


@dataclass
class OutOfFold:
    """Held-out probabilities per head for every row that could be used, and that row's targets."""

    items: list[CatalogItem]
    locations: list[str]
    folds: list[int]
    probs: dict[str, NDArray[np.float64]]
    targets: dict[str, NDArray[np.float64]]


def assign_folds(items: Sequence[CatalogItem], taxonomy: Taxonomy, folds: int, seed: int) -> list[int]:
    """A fold per item, stratified by group and first attribute's label (as stratified_split does)."""
    rng = np.random.default_rng(seed)
    strata: dict[tuple[str, str], list[int]] = {}
    for i, item in enumerate(items):
        group = taxonomy.group_for(item.category)
        first = next(iter(group.attributes)) if group else ""
        strata.setdefault((group.name if group else "", "|".join(item.labels.get(first, ()))), []).append(i)
    result = [0] * len(items)
    offset = 0
    for key in sorted(strata):
        for rank, i in enumerate(rng.permutation(strata[key])):
            result[int(i)] = (offset + rank) % folds
        offset += len(strata[key])  # the next stratum starts where this one stopped, so folds stay even
    return result


def _fold_manifest(
    path: Path, train_items: Sequence[CatalogItem], taxonomy: Taxonomy, config: AuditConfig, fold: int
) -> None:
    """A manifest of the training folds, absolute image paths, with a stratified validation share."""
    fresh = [replace(item, split=None) for item in train_items]
    split = stratified_split(fresh, taxonomy, config.seed + fold, config.val_fraction, 0.0)
    if not any(item.split == "val" for item in split):
        split[-1] = replace(split[-1], split="val")
    if not any(item.split == "train" for item in split):
        split[0] = replace(split[0], split="train")
    columns = list(dict.fromkeys(name for item in split for name in item.labels))
    write_manifest(path, split, columns)


def _probabilities(logits: torch.Tensor, attribute: Attribute) -> NDArray[np.float64]:
    scores = torch.sigmoid(logits) if attribute.multi_label else torch.softmax(logits.double(), dim=1)
    return scores.double().numpy()


def out_of_fold(
    manifest: Path,
    config: AuditConfig,
    progress: Callable[[str], None] | None = None,
    reporter: Reporter | None = None,
) -> OutOfFold:
    """Train one model per fold on the other folds and collect its probabilities on the held-out fold."""
    manifest = Path(manifest)
    taxonomy = load_taxonomy(config.taxonomy)
    root = manifest.parent.resolve()
    originals = [
        item
        for item in read_manifest(manifest)  # training reads local files of known groups only
        if not item.image.startswith(_REMOTE) and taxonomy.group_for(item.category) is not None
    ]
    usable = [replace(item, image=item.image_location(root)) for item in originals]
    index_of = {id(item): i for i, item in enumerate(usable)}  # CatalogDataset keeps the objects it is given
    if len(usable) < config.folds * 2:
        raise AuditError(f"{manifest}: {len(usable)} usable rows are too few for {config.folds} folds")
    fold_of = assign_folds(usable, taxonomy, config.folds, config.seed)
    device = pick_device(config.device)
    heads = list(taxonomy.heads())
    kept: list[int] = []
    folds: list[int] = []
    probs: dict[str, list[NDArray[np.float64]]] = {key: [] for key, _, _ in heads}
    targets: dict[str, list[NDArray[np.float64]]] = {key: [] for key, _, _ in heads}
    with tempfile.TemporaryDirectory(prefix="swatch-audit-") as scratch:
        work = Path(config.work_dir) if config.work_dir else Path(scratch)
        for fold in range(config.folds):
            held = [item for item, f in zip(usable, fold_of, strict=True) if f == fold]
            rest = [item for item, f in zip(usable, fold_of, strict=True) if f != fold]
            fold_dir = work / f"fold{fold}"
            fold_dir.mkdir(parents=True, exist_ok=True)
            _fold_manifest(fold_dir / "manifest.csv", rest, taxonomy, config, fold)
            if progress is not None:
                progress(f"fold {fold + 1}/{config.folds}: training on {len(rest)} rows, predicting {len(held)}")
            train_config = TrainConfig.resolve(
                None,
                data=str(fold_dir / "manifest.csv"),
                out=str(fold_dir / "model"),
                taxonomy=config.taxonomy,
                backbone=config.backbone,
                pretrained=config.pretrained,
                backbone_weights=config.backbone_weights,
                image_size=config.image_size,
                epochs=config.epochs,
                batch_size=config.batch_size,
                lr=config.lr,
                seed=config.seed,
                device=config.device,
                workers=config.workers,
                name=f"audit-fold{fold}",
                **config.train_overrides,
            )
            result = train(train_config, reporter)
            model, card = load_model(result.model_dir, device)
            dataset = CatalogDataset(held, root, LabelEncoder(taxonomy), card.preprocess_config(), train=False)
            logits, fold_targets = collect_logits(model.to(memory_format=torch.channels_last), dataset, device)
            kept.extend(index_of[id(item)] for item in dataset.items)
            folds.extend([fold] * len(dataset.items))
            for key, _, attribute in heads:
                probs[key].append(_probabilities(logits[key], attribute))
                targets[key].append(fold_targets[key].double().numpy())
    return OutOfFold(
        items=[originals[i] for i in kept],
        locations=[usable[i].image for i in kept],
        folds=folds,
        probs={key: np.concatenate(v) for key, v in probs.items()},
        targets={key: np.concatenate(v) for key, v in targets.items()},
    )


def rank_label_issues(
    labels: NDArray[Any] | Sequence[int] | Sequence[Sequence[int]],
    pred_probs: NDArray[np.float64],
    *,
    multi_label: bool = False,
    notes: list[str] | None = None,
) -> list[tuple[int, float]]:
    """The likely label errors as (row index, label quality), most likely first.

    Single-label: ``labels`` are value indices and ``pred_probs`` (N, V) rows sum to 1; the quality
    is the self-confidence ``pred_probs[i, labels[i]]``. Multi-label: ``labels`` are lists of value
    indices (or an (N, V) 0/1 array) and ``pred_probs`` are per-value probabilities; the quality is
    cleanlab's multi-label self-confidence score. cleanlab's warnings (classes with too few
    examples) are added to ``notes``.
    """
    probs = np.asarray(pred_probs, dtype=np.float64)
    if len(probs) < 2:
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if multi_label:
            lists = _label_lists(labels)
            ranked = find_label_issues(
                lists, probs, multi_label=True, return_indices_ranked_by="self_confidence", n_jobs=1
            )
            quality = multi_label_quality(lists, probs)
        else:
            given = np.asarray(labels, dtype=np.int64)
            # n_jobs=1: cleanlab's default forks a process pool, which can hang a process that already
            # runs threads (torch, librdkafka), as the test process and the worker do
            ranked = find_label_issues(given, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
            quality = get_label_quality_scores(given, probs, method="self_confidence")
    if notes is not None:
        notes.extend(dict.fromkeys(f"cleanlab: {w.message}" for w in caught))
    return [(int(i), float(quality[int(i)])) for i in ranked]


def _label_lists(labels: NDArray[Any] | Sequence[int] | Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        return [[int(j) for j in np.flatnonzero(row > 0.5)] for row in labels]
    return [[int(j) for j in row] for row in labels]  # type: ignore[union-attr]


def _names(attribute: Attribute, indices: Sequence[int]) -> str:
    return "|".join(attribute.values[i] for i in indices)


def find_issues(oof: OutOfFold, taxonomy: Taxonomy, notes: list[str] | None = None) -> list[LabelIssue]:
    """Label issues of every head, ranked over all heads by label quality (lowest first)."""
    found: list[LabelIssue] = []
    for key, _, attribute in taxonomy.heads():
        target, probs = oof.targets[key], oof.probs[key]
        present = np.flatnonzero(target[:, 0] >= 0 if attribute.multi_label else target >= 0)
        if len(present) < 2:
            if notes is not None:
                notes.append(f"{key}: {len(present)} labelled rows, not audited")
            continue
        head_notes: list[str] = []
        try:
            if attribute.multi_label:
                labels: Any = [[int(j) for j in np.flatnonzero(row > 0.5)] for row in target[present]]
            else:
                labels = target[present].astype(np.int64)
            ranked = rank_label_issues(labels, probs[present], multi_label=attribute.multi_label, notes=head_notes)
        except (ValueError, IndexError, ZeroDivisionError) as exc:  # cleanlab on degenerate heads
            if notes is not None:
                notes.append(f"{key}: not audited ({type(exc).__name__}: {exc})")
            continue
        if notes is not None:
            notes.extend(f"{key}: {n}" for n in head_notes)
        for attribute_rank, (j, quality) in enumerate(ranked, start=1):
            row = int(present[j])
            p = probs[row]
            if attribute.multi_label:
                given = [int(v) for v in np.flatnonzero(target[row] > 0.5)]
                suggested = [int(v) for v in np.flatnonzero(p >= 0.5)] or [int(p.argmax())]
            else:
                given, suggested = [int(target[row])], [int(p.argmax())]
            item = oof.items[row]
            found.append(
                LabelIssue(
                    item.id,
                    item.image,
                    key,
                    _names(attribute, given),
                    _names(attribute, suggested),
                    quality,
                    0,
                    attribute_rank,
                    oof.locations[row],
                )
            )
    found.sort(key=lambda issue: (issue.label_quality, issue.attribute, issue.attribute_rank))
    return [replace(issue, rank=rank) for rank, issue in enumerate(found, start=1)]


def audit(
    manifest: Path,
    config: AuditConfig | None = None,
    *,
    notes: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    reporter: Reporter | None = None,
) -> list[LabelIssue]:
    """Out-of-fold label issues of a manifest, ranked; image paths as the manifest writes them."""
    config = config or AuditConfig()
    oof = out_of_fold(Path(manifest), config, progress, reporter)
    return find_issues(oof, load_taxonomy(config.taxonomy), notes)


def write_issues_csv(issues: Sequence[LabelIssue], path: Path) -> None:
    """The ranked issues as CSV with ISSUE_COLUMNS."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ISSUE_COLUMNS)
        writer.writerows(issue.row() for issue in issues)


def write_audit_html(issues: Sequence[LabelIssue], path: Path, notes: Sequence[str] = (), top: int = 60) -> None:
    """A self-contained HTML page with thumbnails of the top issues and a table of all of them (capped)."""
    parts = [
        f"<p>{len(issues)} labels to check, lowest label quality (the out-of-fold model's probability of "
        "the given label) first. The suggestion is the model's choice, not a correction.</p>"
    ]
    parts.append(f"<h2>Top {min(top, len(issues))}</h2>")
    parts.append(
        "".join(
            thumbnail_figure(
                issue.location or issue.image,
                f"#{issue.rank} {issue.id} {issue.attribute}: {issue.given_label} -> {issue.suggested_label} "
                f"({issue.label_quality:.2f})",
                144,
            )
            for issue in issues[:top]
        )
    )
    parts += ["<h2>All issues</h2>", table(ISSUE_COLUMNS, [issue.row() for issue in issues[:2000]])]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    Path(path).write_text(page("Swatch label audit", "\n".join(parts)), encoding="utf-8")
