"""Training: masked losses over available labels, AdamW + warm-up/cosine, early stopping, resume.

Configuration comes from the defaults below, then an optional YAML file, then command-line
overrides; the resolved configuration is written next to the checkpoint (``train_config.yaml``) and
into the model card. The best epoch by validation mean macro-F1 is kept as the model directory;
``checkpoint.pt`` (see :mod:`tagger.checkpoint`: after every epoch and every
``checkpoint_every_s`` within one) makes a run resumable, also one stopped mid-epoch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from tagger.card import ModelCard, load_model, read_card, save_model
from tagger.checkpoint import StopRequest, TrainStopped, load_checkpoint, save_checkpoint, stop_on_signals
from tagger.data import (
    CatalogDataset,
    LabelEncoder,
    OversamplingSampler,
    Sample,
    augment_batch,
    repeat_factors,
    stratified_split,
)
from tagger.errors import TaggerError
from tagger.evaluate import collect_logits, mean_macro_f1, report
from tagger.manifest import read_manifest
from tagger.model import MultiHeadTagger
from tagger.predict import pick_device
from tagger.preprocess import PreprocessConfig
from tagger.taxonomy import Taxonomy, load_taxonomy

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
RESOLVED_CONFIG = "train_config.yaml"


class TrainError(TaggerError):
    """Training cannot start or continue."""


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run; the resolved values are saved with the model."""

    data: str = ""
    out: str = ""
    taxonomy: str | None = None
    name: str = "swatch-tagger"
    version: str = "0.1.0"
    backbone: str = "efficientnet_b0"
    pretrained: bool = False
    backbone_weights: str | None = None
    image_size: int = 224
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.05
    drop_rate: float = 0.2
    patience: int = 6
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    workers: int = 2
    device: str = "auto"
    half_weights: bool = True
    init_from: str | None = None  # a model directory to start from (fine-tuning); same backbone and taxonomy
    oversample: bool = True  # augmentation-based oversampling of rare values (see tagger.data.repeat_factors)
    oversample_threshold: float = 0.15  # values rarer than this share of their attribute's labels are repeated
    oversample_attributes: dict[str, float] = field(default_factory=dict)  # per head key; 0 turns a head off
    oversample_max_repeat: float = 4.0
    oversample_strength: float = 1.6  # augmentation ranges of the repeats, relative to the normal ones
    max_train_batches: int | None = None  # caps each epoch, for smoke tests
    time_budget_s: float | None = None  # stop after the epoch that crosses this wall-clock budget
    checkpoint_every_s: float = 120.0  # also checkpoint within an epoch this often (a kill loses at most this)

    @classmethod
    def resolve(cls, yaml_path: str | Path | None = None, **overrides: Any) -> TrainConfig:
        """Defaults, then the YAML file, then non-None overrides; unknown keys are an error."""
        values: dict[str, Any] = {}
        if yaml_path is not None:
            try:
                loaded = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise TrainError(f"cannot read training config {yaml_path}: {exc}") from exc
            if not isinstance(loaded, dict):
                raise TrainError(f"{yaml_path}: expected a mapping of setting to value")
            values.update(loaded)
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise TrainError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        config = cls(**values)
        if not config.data or not config.out:
            raise TrainError("training needs --data MANIFEST and --out MODEL_DIR")
        if config.epochs < 1 or config.batch_size < 1 or config.image_size < 32:
            raise TrainError("epochs and batch_size must be >= 1 and image_size >= 32")
        if config.oversample_max_repeat < 1 or config.oversample_strength <= 0:
            raise TrainError("oversample_max_repeat must be >= 1 and oversample_strength > 0")
        return config

    def oversample_thresholds(self, taxonomy: Taxonomy) -> dict[str, float]:
        """The rarity threshold of every head (empty when oversampling is off); unknown head keys are an error."""
        if not self.oversample:
            return {}
        keys = [key for key, _, _ in taxonomy.heads()]
        unknown = set(self.oversample_attributes) - set(keys)
        if unknown:
            raise TrainError(f"oversample_attributes: unknown head(s) {', '.join(sorted(unknown))}; heads are {keys}")
        return {key: float(self.oversample_attributes.get(key, self.oversample_threshold)) for key in keys}


class Reporter(Protocol):
    """What the training loop tells its caller (the CLI draws a progress bar from it)."""

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        """An epoch begins."""

    def batch_end(self, loss: float) -> None:
        """One optimisation step finished."""

    def epoch_end(self, epoch: int, summary: dict[str, Any]) -> None:
        """An epoch finished, with train loss, validation scores and whether it was the best."""


class _Silent:
    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        pass

    def batch_end(self, loss: float) -> None:
        pass

    def epoch_end(self, epoch: int, summary: dict[str, Any]) -> None:
        logger.info("epoch %d: %s", epoch, summary)


@dataclass
class TrainResult:
    """Where the model went and how it scored."""

    model_dir: Path
    model_id: str
    best_epoch: int
    best_score: float
    epochs_run: int
    val: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    items: int = 0  # training items
    draws_per_epoch: int = 0  # images drawn per epoch: items plus oversampled repeats


def masked_loss(
    logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], taxonomy: Taxonomy, label_smoothing: float
) -> torch.Tensor:
    """Mean over heads of each head's loss on the items that have its label (others are masked out)."""
    losses = []
    for key, _, attribute in taxonomy.heads():
        target, out = targets[key], logits[key].float()
        if attribute.multi_label:
            present = target[:, 0] >= 0
            if present.any():
                # Sum over values, mean over items: averaging over values too would give a 5-value
                # head a fifth of the gradient of a softmax head.
                per_item = F.binary_cross_entropy_with_logits(out[present], target[present], reduction="none")
                losses.append(per_item.sum(dim=1).mean())
        else:
            present = target >= 0
            if present.any():
                losses.append(F.cross_entropy(out[present], target[present], label_smoothing=label_smoothing))
    if not losses:
        return next(iter(logits.values())).sum() * 0.0  # a batch without labels: no gradient, no crash
    return torch.stack(losses).mean()


def _schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)  # no decay on biases and norm scales
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_datasets(
    config: TrainConfig, taxonomy: Taxonomy, preprocess: PreprocessConfig
) -> tuple[CatalogDataset, CatalogDataset, LabelEncoder]:
    """Read the manifest, split it when needed, and decode the train and validation images."""
    manifest = Path(config.data)
    items = stratified_split(read_manifest(manifest), taxonomy, config.seed, config.val_fraction, config.test_fraction)
    encoder = LabelEncoder(taxonomy)
    train_items = [i for i in items if i.split == "train"]
    val_items = [i for i in items if i.split == "val"]
    if not train_items or not val_items:
        raise TrainError(f"{manifest}: need both train and val items (got {len(train_items)} and {len(val_items)})")
    threads = max(2, config.workers * 2)
    root = manifest.parent
    train_set = CatalogDataset(train_items, root, encoder, preprocess, train=True, threads=threads)
    val_set = CatalogDataset(val_items, root, encoder, preprocess, train=False, threads=threads)
    return train_set, val_set, encoder


@dataclass
class _Run:
    """The live objects of one training run."""

    model: MultiHeadTagger
    loader: DataLoader[Sample]
    batches: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    config: PreprocessConfig
    generator: torch.Generator
    strength: float


def _initial_weights(model: MultiHeadTagger, source: str) -> None:
    """Fine-tuning: copy the weights of an existing model directory (same backbone and heads)."""
    try:
        trained, card = load_model(source)
        model.load_state_dict(trained.state_dict())
    except (TaggerError, RuntimeError) as exc:
        raise TrainError(f"cannot start from {source}: {exc}") from exc
    logger.info("starting from the weights of %s", card.model_id)


def _sampler(config: TrainConfig, taxonomy: Taxonomy, train_set: CatalogDataset) -> OversamplingSampler | None:
    thresholds = config.oversample_thresholds(taxonomy)
    if not thresholds:
        return None
    factors = repeat_factors(train_set.targets, list(taxonomy.heads()), thresholds, config.oversample_max_repeat)
    sampler = OversamplingSampler(factors, torch.Generator().manual_seed(config.seed))
    logger.info("oversampling: %d extra draws per epoch over %d items", sampler.extras, len(train_set))
    return sampler


def _setup(config: TrainConfig, taxonomy: Taxonomy, train_set: CatalogDataset) -> _Run:
    device = pick_device(config.device)
    model = MultiHeadTagger(
        taxonomy,
        config.backbone,
        pretrained=config.pretrained,
        backbone_weights=config.backbone_weights,
        drop_rate=config.drop_rate,
    )
    if config.init_from:
        _initial_weights(model, config.init_from)
    model = model.to(device).to(memory_format=torch.channels_last)
    sampler = _sampler(config, taxonomy, train_set)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(train_set) > config.batch_size,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )
    batches = min(len(loader), config.max_train_batches or len(loader))
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = _schedule(optimizer, int(config.warmup_epochs * batches), config.epochs * batches)
    generator = torch.Generator().manual_seed(config.seed + 1)
    strength = config.oversample_strength
    return _Run(model, loader, batches, optimizer, scheduler, device, train_set.config, generator, strength)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    targets: dict[str, torch.Tensor],
    *,
    taxonomy: Taxonomy,
    config: PreprocessConfig,
    generator: torch.Generator,
    strength: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """One optimiser step on a uint8 batch already on the model's device: augment, forward (bf16 on
    CUDA), masked loss, backward, gradient clipping, update. Returns the detached loss."""
    device = batch.device
    images = augment_batch(batch, config, generator, strength=strength).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(images)
    loss = masked_loss(logits, targets, taxonomy, label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    return loss.detach()


class _Progress:
    """Checkpoints inside an epoch: every ``every_s`` seconds, and at once when a stop is asked."""

    def __init__(self, run: _Run, path: Path, every_s: float, stop: StopRequest) -> None:
        self.run, self.path, self.every_s, self.stop = run, path, every_s, stop
        self.last = time.monotonic()

    def save(self, state: dict[str, Any]) -> None:
        run = self.run
        parts = {"model": run.model, "optimizer": run.optimizer, "scheduler": run.scheduler}
        save_checkpoint(self.path, {**parts, "generator": run.generator.get_state()}, state)
        self.last = time.monotonic()

    def after_step(self, state: dict[str, Any]) -> None:
        if self.stop:
            self.save(state)
            raise TrainStopped(
                f"stopped by {self.stop.signal_name} in epoch {int(state['epoch']) + 1} after batch "
                f"{state['step']}; checkpoint in {self.path}: run the same command with --resume to continue"
            )
        if time.monotonic() - self.last >= self.every_s:
            self.save(state)
            logger.info("checkpoint in epoch %d after batch %d", int(state["epoch"]) + 1, state["step"])


def _train_epoch(
    run: _Run,
    taxonomy: Taxonomy,
    label_smoothing: float,
    reporter: Reporter,
    *,
    state: dict[str, Any],
    progress: _Progress,
) -> float:
    """One pass over the training data; returns the mean loss. A pass resumed after ``state["step"]``
    batches draws only the batches still owed, in a fresh order."""
    run.model.train()
    done = int(state["step"])
    for step, (batch, batch_targets, repeats) in enumerate(run.loader, start=done):
        if step >= run.batches:
            break
        strength = torch.where(repeats, run.strength, 1.0)
        targets = {k: v.to(run.device, non_blocking=True) for k, v in batch_targets.items()}
        loss = train_step(
            run.model,
            run.optimizer,
            batch.to(run.device, non_blocking=True),
            targets,
            taxonomy=taxonomy,
            config=run.config,
            generator=run.generator,
            strength=strength,
            label_smoothing=label_smoothing,
        )
        run.scheduler.step()
        value = float(loss)
        state.update(step=step + 1, loss_sum=float(state["loss_sum"]) + value)
        reporter.batch_end(value)
        progress.after_step(state)
    return float(state["loss_sum"]) / max(1, int(state["step"]))


def _resume(run: _Run, path: Path) -> dict[str, Any]:
    try:
        checkpoint = load_checkpoint(path, run.device)
        run.model.load_state_dict(checkpoint["model"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        run.scheduler.load_state_dict(checkpoint["scheduler"])
        if "generator" in checkpoint:
            run.generator.set_state(checkpoint["generator"].cpu())
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise TrainError(f"cannot resume from {path}: {exc}; delete it to start over") from exc
    state = dict(checkpoint["state"])
    logger.info("resumed from %s after epoch %d, batch %d", path, state["epoch"], state["step"])
    return state


def train(
    config: TrainConfig, reporter: Reporter | None = None, *, resume: bool = False, stop: StopRequest | None = None
) -> TrainResult:
    """Train a multi-head tagger as configured; returns the best model's directory and scores.
    Raises :class:`TrainStopped` (checkpoint written) when ``stop`` is set or SIGTERM/SIGINT comes."""
    stop = stop if stop is not None else StopRequest()
    with stop_on_signals(stop):
        return _train(config, reporter or _Silent(), resume, stop)


def _train(config: TrainConfig, reporter: Reporter, resume: bool, stop: StopRequest) -> TrainResult:
    started = time.monotonic()
    torch.manual_seed(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESOLVED_CONFIG).write_text(yaml.safe_dump(asdict(config), sort_keys=False), encoding="utf-8")
    taxonomy = load_taxonomy(config.taxonomy)
    preprocess = PreprocessConfig(image_size=config.image_size)
    train_set, val_set, encoder = build_datasets(config, taxonomy, preprocess)
    run = _setup(config, taxonomy, train_set)
    logger.info("training on %d items, validating on %d, on %s", len(train_set), len(val_set), run.device)
    state: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "stale": 0, "step": 0, "loss_sum": 0.0}
    if resume and (out / CHECKPOINT).is_file():
        state = _resume(run, out / CHECKPOINT)
    progress = _Progress(run, out / CHECKPOINT, config.checkpoint_every_s, stop)
    card = ModelCard(
        name=config.name,
        version=config.version,
        backbone=config.backbone,
        taxonomy=taxonomy.to_dict(),
        preprocessing=preprocess.to_dict(),
        training=asdict(config),
    )
    best_val: dict[str, Any] = {}
    for epoch in range(int(state["epoch"]) + 1, config.epochs + 1):
        reporter.epoch_start(epoch, config.epochs, run.batches)
        loss = _train_epoch(run, taxonomy, config.label_smoothing, reporter, state=state, progress=progress)
        val = report(*collect_logits(run.model, val_set, run.device), taxonomy)
        score = mean_macro_f1(val)
        improved = score > float(state["best_score"])
        if improved:
            state.update(best_score=score, best_epoch=epoch, stale=0)
            best_val = val
            card.metrics = {"val": _summary(val), "best_epoch": epoch, "labels": _label_stats(encoder)}
            card = save_model(run.model, card, out, half=config.half_weights)
        else:
            state["stale"] = int(state["stale"]) + 1
        state.update(epoch=epoch, step=0, loss_sum=0.0)
        progress.save(state)
        lr = run.scheduler.get_last_lr()[0]
        reporter.epoch_end(epoch, {"loss": loss, "val_macro_f1": score, "best": improved, "lr": lr})
        if int(state["stale"]) >= config.patience:
            logger.info("early stop: no improvement for %d epochs", config.patience)
            break
        if config.time_budget_s is not None and time.monotonic() - started > config.time_budget_s:
            logger.warning("stopping after epoch %d: time budget of %.0fs spent", epoch, config.time_budget_s)
            break
    if not card.weights_sha256:
        card = read_card(out)  # resumed after the last improvement: the saved best model stands
    return TrainResult(
        out,
        card.model_id,
        int(state["best_epoch"]),
        float(state["best_score"]),
        int(state["epoch"]),
        best_val,
        time.monotonic() - started,
        len(train_set),
        min(run.batches * config.batch_size, len(run.loader.sampler)),  # type: ignore[arg-type]
    )


def _summary(per_head: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        key: {"macro_f1": round(h["macro_f1"], 4), "weighted_f1": round(h["weighted_f1"], 4), "support": h["support"]}
        for key, h in per_head.items()
    }


def _label_stats(encoder: LabelEncoder) -> dict[str, Any]:
    stats = encoder.stats
    return {
        "items": stats.items,
        "no_group": stats.no_group,
        "unreadable_images": stats.unreadable_images,
        "unknown_labels": dict(stats.unknown_labels or {}),
    }
