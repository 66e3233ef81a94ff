"""Probe: what limits base colour on the real photos, the features or the labels?

    python scripts/colour_probe.py [--model runs/real-catalog/lite0-imagenet/model] \
        [--data runs/real-catalog/data/manifest.csv]

Fits L2-regularised logistic regressions for base colour on the training split, picks the
regularisation on the validation split, and reports weighted F1 on the test split, from three
feature sets:

- ``cnn``: the trained model's pooled backbone features;
- ``colour``: a hand-made colour descriptor of the product pixels (a 4x4x4 RGB histogram of the
  pixels that differ from the white background, their mean colour and the foreground share);
- ``both``: the two side by side;

once per group (as the model's heads are) and once pooled over groups (one colour vocabulary). If a
plain colour histogram or pooling the groups closed the gap to the reference, the model would need a
colour branch or a shared head; if neither does, the limit is elsewhere (label noise, too few
photos). Needs the real catalog (benchmarks/real_catalog.sh writes the manifest and the model).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tagger.card import load_model
from tagger.data import CatalogDataset, LabelEncoder
from tagger.manifest import read_manifest
from tagger.metrics import single_label_report
from tagger.preprocess import normalize_uint8

PENALTIES = (1e-4, 1e-3, 1e-2, 3e-2)
BACKGROUND = 0.08  # a pixel is product when some channel is this far below white


def colour_descriptor(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 68) per image: sqrt of a 64-bin RGB histogram of product pixels, their mean RGB, their share."""
    x = pixels.float() / 255
    weight = ((1 - x).amax(dim=1) > BACKGROUND).float() + 1e-3  # all-white products keep a faint weight
    bins = (x * 3.999).long()
    index = (bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2]).flatten(1)
    histogram = torch.zeros(len(x), 64).scatter_add_(1, index, weight.flatten(1))
    histogram = histogram / histogram.sum(dim=1, keepdim=True)
    mean = (x * weight[:, None]).sum(dim=(2, 3)) / weight.sum(dim=(1, 2))[:, None]
    share = (weight > 0.5).float().mean(dim=(1, 2))[:, None]
    return torch.cat([histogram.sqrt(), mean, share], dim=1)


@torch.inference_mode()
def features(model: torch.nn.Module, dataset: CatalogDataset) -> torch.Tensor:
    """Pooled backbone features of every image."""
    out = []
    for start in range(0, len(dataset.images), 64):
        x = normalize_uint8(dataset.images[start : start + 64], dataset.config)
        out.append(model.forward_features(x.contiguous(memory_format=torch.channels_last)))  # type: ignore[operator]
    return torch.cat(out)


def fit(x: torch.Tensor, y: torch.Tensor, classes: int, penalty: float) -> tuple[torch.Tensor, ...]:
    """Multinomial logistic regression on standardised features (LBFGS); returns its parameters."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=300, line_search_fn="strong_wolfe")
    z = (x - mu) / sd

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        value = F.cross_entropy(z @ weight + bias, y) + penalty * (weight**2).sum()
        value.backward()  # type: ignore[no-untyped-call]
        return value

    with torch.enable_grad():
        optimiser.step(loss)  # type: ignore[no-untyped-call]
    return mu, sd, weight.detach(), bias.detach()


def weighted_f1(params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor, values: Sequence[str]) -> float:
    """Weighted F1 of a fitted regression on (x, y)."""
    mu, sd, weight, bias = params
    predicted = (((x - mu) / sd) @ weight + bias).argmax(dim=1)
    return float(single_label_report(y.tolist(), predicted.tolist(), values)["weighted_f1"])


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints a markdown table of test weighted F1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/real-catalog/lite0-imagenet/model")
    parser.add_argument("--data", default="runs/real-catalog/data/manifest.csv")
    parser.add_argument("--attribute", default="base_colour")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, card = load_model(args.model, torch.device("cpu"))
    taxonomy, config = card.taxonomy_obj(), card.preprocess_config()
    items = read_manifest(args.data)
    heads = [(key, attribute) for key, _, attribute in taxonomy.heads() if key.endswith("." + args.attribute)]
    split_data = {}
    for split in ("train", "val", "test"):
        dataset = CatalogDataset(
            [i for i in items if i.split == split], Path(args.data).parent, LabelEncoder(taxonomy), config, train=True
        )
        cnn = features(model, dataset)
        colour = colour_descriptor(dataset.images)
        sets = {"cnn": cnn, "colour": colour, "both": torch.cat([cnn, colour * 3], dim=1)}
        split_data[split] = (sets, dataset.targets)

    if len({attribute.values for _, attribute in heads}) != 1:
        parser.error(f"{args.attribute}: the groups' vocabularies differ, so there is no pooled head to fit")
    print(f"| features | {' | '.join(key for key, _ in heads)} | per group, pooled | pooled head |")
    print("|---|" + "---|" * (len(heads) + 2))
    for name in ("cnn", "colour", "both"):
        cells, total, support = [], 0.0, 0
        for key, attribute in heads:
            data = {}
            for split, (sets, targets) in split_data.items():
                mask = targets[key] >= 0
                data[split] = (sets[name][mask], targets[key][mask])
            score = _select(data, attribute.values)
            cells.append(f"{score:.3f}")
            total += score * len(data["test"][1])
            support += len(data["test"][1])
        pooled_data = {}
        for split, (sets, targets) in split_data.items():
            label = torch.full((len(sets[name]),), -1, dtype=torch.long)
            for key, _ in heads:
                label = torch.where(targets[key] >= 0, targets[key], label)
            mask = label >= 0
            pooled_data[split] = (sets[name][mask], label[mask])
        pooled = _select(pooled_data, heads[0][1].values)
        print(f"| {name} | {' | '.join(cells)} | {total / support:.3f} | {pooled:.3f} |")
    return 0


def _select(data: dict[str, tuple[torch.Tensor, torch.Tensor]], values: Sequence[str]) -> float:
    """Test weighted F1 of the penalty that scores best on validation."""
    best = (-1.0, 0.0)
    for penalty in PENALTIES:
        params = fit(*data["train"], len(values), penalty)
        val = weighted_f1(params, *data["val"], values)
        if val > best[0]:
            best = (val, weighted_f1(params, *data["test"], values))
    return best[1]


if __name__ == "__main__":
    sys.exit(main())
