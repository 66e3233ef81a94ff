"""From a catalog manifest to training batches: label encoding, splits, decoding once, augmentation.

Images are decoded and letterboxed once, with the same functions the stream uses, into one uint8
tensor kept in shared memory. Augmentation runs per batch on the training device
(:func:`augment_batch`: per-image flip, small rotation/scale/shift with white fill, and
brightness/contrast only, since hue and saturation would change the colour label), so data
loading is only indexing. Targets are one tensor per head: the value index (single-label) or a
multi-hot row (multi-label), with -1 where the label is missing or the head does not apply to the
item's group.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from tagger.errors import TaggerError
from tagger.manifest import CatalogItem
from tagger.preprocess import ImageError, PreprocessConfig, decode_image, letterbox, normalize_uint8
from tagger.taxonomy import Attribute, Group, Taxonomy, UnknownValueError

logger = logging.getLogger(__name__)

Targets = dict[str, torch.Tensor]
Sample = tuple[torch.Tensor, Targets, torch.Tensor]


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


def augment_batch(
    images: torch.Tensor,
    config: PreprocessConfig,
    generator: torch.Generator | None = None,
    *,
    degrees: float = 8.0,
    scale: tuple[float, float] = (0.8, 1.05),
    shift: float = 0.06,
    light: float = 0.15,
    strength: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random per-image flip, rotation, scale, shift (white fill) and brightness/contrast; returns normalised floats.

    ``images`` is a uint8 (B, 3, S, S) batch on any device; the work happens there, so a GPU run
    spends no CPU time on augmentation. ``strength`` (B,) scales each image's ranges: 1 is the
    configured augmentation, more is stronger (used for oversampled repeats).
    """
    b = images.shape[0]
    device = images.device
    k = (torch.ones(b) if strength is None else strength.float().cpu()).to(device)

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device="cpu").to(device) * (high - low) + low

    def around(centre: float, spread: float) -> torch.Tensor:
        return centre + uniform(-spread, spread) * k

    pad = torch.tensor(config.pad_colour, dtype=torch.float32, device=device).view(1, 3, 1, 1) / 255
    x = images.float() / 255 - pad  # the pad colour becomes 0, so grid_sample's zero fill is pad-coloured
    angle = around(0.0, degrees) * torch.pi / 180
    low = 1.0 - (1.0 - scale[0]) * k  # stronger augmentation shrinks further (more background)
    zoom = 1.0 / (low + (scale[1] - low) * uniform(0, 1))
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, around(0.0, shift) * 2], dim=1),
            torch.stack([sin * flip, cos, around(0.0, shift) * 2], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + pad
    brightness = around(1.0, light).view(b, 1, 1, 1)
    contrast = around(1.0, light).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * brightness
    x = x.clamp(0, 1)
    mean_t = torch.tensor(config.mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


class CatalogDataset(Dataset[Sample]):
    """Decoded, letterboxed catalog images (uint8) with their targets.

    Items come back as uint8 tensors when ``train`` is set (the training loop augments and
    normalises whole batches with :func:`augment_batch`) and as normalised floats otherwise.
    """

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

    def __getitem__(self, index: int) -> Sample:
        """Image, targets and whether this draw is an oversampled repeat (index >= len, see OversamplingSampler)."""
        repeat = index >= len(self.items)
        index %= len(self.items)
        image = self.images[index]
        targets = {key: t[index] for key, t in self.targets.items()}
        return (image if self.train else normalize_uint8(image, self.config)), targets, torch.tensor(repeat)


def value_masks(target: torch.Tensor, attribute: Attribute) -> torch.Tensor:
    """(N, V) booleans: item n is labelled with value v (all False where the label is missing)."""
    if attribute.multi_label:
        return (target > 0.5) & (target[:, :1] >= 0)
    present = target >= 0
    return F.one_hot(target.clamp(min=0), attribute.size).bool() & present[:, None]


def repeat_factors(
    targets: Targets,
    heads: Sequence[tuple[str, Group, Attribute]],
    thresholds: Mapping[str, float],
    max_repeat: float,
) -> torch.Tensor:
    """How often each item should be seen per epoch (>= 1), from the rarity of its labelled values.

    Repeat-factor sampling: a value held by a share ``f`` of its attribute's labelled items, below
    the attribute's threshold ``t``, gets ``sqrt(t / f)`` (capped at ``max_repeat``); an item takes
    the largest factor over all its values. Heads with a threshold of 0 (or none) do not count.
    """
    n = len(next(iter(targets.values())))
    factors = torch.ones(n)
    for key, _, attribute in heads:
        threshold = thresholds.get(key, 0.0)
        if threshold <= 0:
            continue
        masks = value_masks(targets[key], attribute)
        labelled = int(masks.any(dim=1).sum())
        if labelled == 0:
            continue
        share = masks.sum(dim=0).float() / labelled
        per_value = torch.sqrt(threshold / share.clamp(min=1e-9)).clamp(1.0, max_repeat)
        per_item = (masks.float() * per_value).amax(dim=1)
        factors = torch.maximum(factors, per_item)
    return factors


class OversamplingSampler(Sampler[int]):
    """Every item once per epoch in random order, plus extra draws of items that hold rare values.

    ``factors`` (from :func:`repeat_factors`) set the expected number of draws per item; the
    ``sum(factors) - n`` extra draws are sampled in proportion to ``factors - 1`` and yielded as
    ``index + n``, which :class:`CatalogDataset` serves as a repeat so the training loop can augment
    it harder (a repeat that looked identical would only teach the model to memorise it).
    """

    def __init__(self, factors: torch.Tensor, generator: torch.Generator) -> None:
        self.n = len(factors)
        self.weights = (factors - 1.0).clamp(min=0.0)
        self.extras = round(float(self.weights.sum()))
        self.generator = generator

    def __len__(self) -> int:
        return self.n + self.extras

    def __iter__(self) -> Iterator[int]:
        draws = torch.arange(self.n)
        if self.extras:
            extra = torch.multinomial(self.weights, self.extras, replacement=True, generator=self.generator)
            draws = torch.cat([draws, extra + self.n])
        yield from draws[torch.randperm(len(draws), generator=self.generator)].tolist()
