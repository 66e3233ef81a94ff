"""From a catalog manifest to training batches: label encoding, splits, decoding once, augmentation.

Images are decoded and letterboxed once, with the same functions the stream uses, into one uint8
tensor kept in shared memory; augmentation then works on those tensors each epoch (flip, small
affine jitter with white fill, brightness/contrast only — hue and saturation would change the
colour label). Targets are one tensor per head: the value index (single-label) or a multi-hot row
(multi-label), with -1 where the label is missing or the head does not apply to the item's group.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from tagger.errors import TaggerError
from tagger.manifest import CatalogItem
from tagger.preprocess import ImageError, PreprocessConfig, decode_image, letterbox, normalize_uint8
from tagger.taxonomy import Taxonomy, UnknownValueError

logger = logging.getLogger(__name__)

Targets = dict[str, torch.Tensor]


class DataError(TaggerError):
    """The catalog cannot be turned into training data."""


@dataclass
class LabelStats:
    """What label encoding kept and dropped, for the training log and the model card."""

    items: int = 0
    no_group: int = 0
    unreadable_images: int = 0
    unknown_labels: Counter[str] | None = None
    labelled: Counter[str] | None = None

    def __post_init__(self) -> None:
        self.unknown_labels = self.unknown_labels or Counter()
        self.labelled = self.labelled or Counter()


class LabelEncoder:
    """Turns an item's raw labels into per-head targets, merging aliases and masking by group."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        self.heads = list(taxonomy.heads())
        self.stats = LabelStats()

    def group(self, item: CatalogItem) -> str | None:
        """The item's group name, or None when its category maps to no group."""
        group = self.taxonomy.group_for(item.category)
        return group.name if group else None

    def encode(self, item: CatalogItem) -> dict[str, list[float] | int]:
        """Targets per head key: value index or multi-hot list; -1 (or a row of -1) when absent."""
        group = self.group(item)
        targets: dict[str, list[float] | int] = {}
        for key, head_group, attribute in self.heads:
            missing: list[float] | int = [-1.0] * attribute.size if attribute.multi_label else -1
            raw = item.labels.get(attribute.name) if head_group.name == group else None
            if not raw:
                targets[key] = missing
                continue
            try:
                indices = sorted({attribute.index(label) for label in raw})
            except UnknownValueError:
                self.stats.unknown_labels[key] += 1  # type: ignore[index]
                targets[key] = missing
                continue
            if attribute.multi_label:
                row = [0.0] * attribute.size
                for i in indices:
                    row[i] = 1.0
                targets[key] = row
            elif len(indices) == 1:
                targets[key] = indices[0]
            else:
                self.stats.unknown_labels[key] += 1  # type: ignore[index]  # several values, single head
                targets[key] = missing
                continue
            self.stats.labelled[key] += 1  # type: ignore[index]
        return targets


def stratified_split(
    items: Sequence[CatalogItem], taxonomy: Taxonomy, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> list[CatalogItem]:
    """Give items without a split one, stratified by group and first attribute; others keep theirs."""
    rng = np.random.default_rng(seed)
    strata: dict[tuple[str, str], list[int]] = {}
    for i, item in enumerate(items):
        if item.split is None:
            group = taxonomy.group_for(item.category)
            first = next(iter(group.attributes)) if group else ""
            key = (group.name if group else "", "|".join(item.labels.get(first, ())))
            strata.setdefault(key, []).append(i)
    assigned = list(items)
    for indices in strata.values():
        order = rng.permutation(indices)
        n_val = round(len(order) * val_fraction)
        n_test = round(len(order) * test_fraction)
        for rank, i in enumerate(order):
            split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            assigned[int(i)] = replace(items[int(i)], split=split)
    return assigned


def _load_one(location: str, config: PreprocessConfig) -> np.ndarray | None:
    try:
        data = Path(location).read_bytes()
        image = letterbox(decode_image(data, config), config.image_size, config.pad_colour, resample=config.resample)
    except (OSError, ImageError) as exc:
        logger.warning("skipping unreadable image %s: %s", location, exc)
        return None
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def augmentation(config: PreprocessConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """Training-time jitter on uint8 CHW tensors; never changes colour hue or crops the item away."""
    return cast(
        Callable[[torch.Tensor], torch.Tensor],
        v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.RandomAffine(degrees=8, translate=(0.06, 0.06), scale=(0.8, 1.05), fill=list(config.pad_colour)),
                v2.ColorJitter(brightness=0.15, contrast=0.15),
            ]
        ),
    )


class CatalogDataset(Dataset[tuple[torch.Tensor, Targets]]):
    """Decoded, letterboxed catalog images with their targets; augmented when ``train`` is set."""

    def __init__(
        self,
        items: Sequence[CatalogItem],
        root: Path,
        encoder: LabelEncoder,
        config: PreprocessConfig,
        *,
        train: bool = False,
        threads: int = 4,
    ) -> None:
        self.config = config
        self.train = train
        self.augment = augmentation(config) if train else None
        kept: list[CatalogItem] = []
        for item in items:
            if item.image.startswith(("http://", "https://")):
                raise DataError(f"item {item.id}: training reads local files; download {item.image} first")
            if encoder.group(item) is None:
                encoder.stats.no_group += 1
                continue
            kept.append(item)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            arrays = list(pool.map(lambda it: _load_one(it.image_location(root), config), kept))
        self.items = [it for it, arr in zip(kept, arrays, strict=True) if arr is not None]
        encoder.stats.unreadable_images += sum(arr is None for arr in arrays)
        encoder.stats.items += len(self.items)
        if not self.items:
            raise DataError("no usable items: check the manifest's image paths and categories")
        self.groups = [encoder.group(it) for it in self.items]
        self.images = torch.from_numpy(np.stack([a for a in arrays if a is not None])).share_memory_()  # type: ignore[no-untyped-call]
        encoded = [encoder.encode(it) for it in self.items]
        self.targets: Targets = {
            key: torch.tensor([e[key] for e in encoded], dtype=torch.float32 if attr.multi_label else torch.long)
            for key, _, attr in encoder.heads
        }

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Targets]:
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(image)
        return normalize_uint8(image, self.config), {key: t[index] for key, t in self.targets.items()}

    def sample_weights(self, head: str) -> torch.Tensor:
        """Per-item weights inversely proportional to the frequency of the item's value on ``head``."""
        target = self.targets[head]
        labels = target.argmax(dim=1) if target.dim() == 2 else target
        counts = Counter(labels.tolist())
        return torch.tensor([1.0 / counts[int(v)] for v in labels.tolist()], dtype=torch.double)
