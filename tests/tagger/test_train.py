"""Training end to end on a small synthetic catalog with the tiny backbone: model dir, resume, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tagger.card import read_card
from tagger.data import LabelEncoder, OversamplingSampler, augment_batch, repeat_factors, stratified_split
from tagger.evaluate import evaluate_manifest
from tagger.manifest import CatalogItem, read_manifest
from tagger.preprocess import PreprocessConfig
from tagger.synth import SynthConfig, generate_catalog
from tagger.taxonomy import Taxonomy
from tagger.train import CHECKPOINT, RESOLVED_CONFIG, TrainConfig, TrainError, train


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_catalog(tmp_path_factory.mktemp("catalog"), SynthConfig(n=80, seed=5))


def _config(catalog: Path, out: Path, **changes: object) -> TrainConfig:
    values: dict[str, object] = {
        "backbone": "test_efficientnet",
        "image_size": 64,
        "epochs": 2,
        "batch_size": 16,
        "workers": 0,
        "device": "cpu",
        "data": str(catalog),
        "out": str(out),
    }
    values.update(changes)
    return TrainConfig.resolve(None, **values)


@pytest.mark.slow
def test_train_writes_a_model_and_resumes(catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = train(_config(catalog, out))
    assert result.epochs_run == 2 and result.best_epoch >= 1
    card = read_card(out)
    assert card.model_id == result.model_id
    assert set(card.metrics["val"]) <= {key for key, _, _ in card.taxonomy_obj().heads()}
    assert card.training["backbone"] == "test_efficientnet"
    assert yaml.safe_load((out / RESOLVED_CONFIG).read_text())["epochs"] == 2
    assert (out / CHECKPOINT).is_file()

    resumed = train(_config(catalog, out, epochs=3), resume=True)
    assert resumed.epochs_run == 3, "resume continues after the last finished epoch"

    tuned = train(_config(catalog, tmp_path / "tuned", epochs=1, init_from=str(out), oversample=False))
    assert tuned.model_id != result.model_id and read_card(tmp_path / "tuned").training["init_from"] == str(out)

    report = evaluate_manifest(catalog, out, "test", "cpu")
    assert report["model_id"] == read_card(out).model_id
    head = report["attributes"]["apparel.colour"]
    assert {"macro_f1", "weighted_f1", "support", "per_value", "ece_before", "threshold"} <= set(head)
    assert json.dumps(report)


def test_config_precedence_and_errors(tmp_path: Path) -> None:
    config_file = tmp_path / "train.yaml"
    config_file.write_text("epochs: 7\nbatch_size: 8\n")
    resolved = TrainConfig.resolve(config_file, data="m.csv", out="o", batch_size=4)
    assert (resolved.epochs, resolved.batch_size) == (7, 4)
    with pytest.raises(TrainError, match="unknown training setting"):
        TrainConfig.resolve(None, data="m.csv", out="o", epoch=3)
    with pytest.raises(TrainError, match="--data"):
        TrainConfig.resolve(None)


def test_labels_are_merged_masked_and_counted(taxonomy: Taxonomy) -> None:
    encoder = LabelEncoder(taxonomy)
    item = CatalogItem(
        "1",
        "x.jpg",
        "women/clothing/dresses",
        "train",
        {
            "neck_type": ("Scoop",),
            "pattern": ("striped", "dotted"),
            "colour": ("chartreuse",),
            "heel_height": ("high",),
        },
    )
    targets = encoder.encode(item)
    neck = taxonomy.groups["apparel"].attributes["neck_type"]
    assert targets["apparel.neck_type"] == neck.values.index("round")
    pattern = taxonomy.groups["apparel"].attributes["pattern"]
    row = targets["apparel.pattern"]
    assert isinstance(row, list) and row[pattern.values.index("striped")] == 1.0 and sum(row) == 2.0
    assert targets["apparel.colour"] == -1, "an unknown value is masked, not guessed"
    assert targets["footwear.heel_height"] == -1, "attributes of another group are never trained"
    assert encoder.stats.unknown_labels == {"apparel.colour": 1}


def test_stratified_split_keeps_given_splits_and_is_deterministic(catalog: Path, taxonomy: Taxonomy) -> None:
    items = [CatalogItem(i.id, i.image, i.category, None, i.labels) for i in read_manifest(catalog)]
    items[0] = CatalogItem("keep", items[0].image, items[0].category, "test", items[0].labels)
    first = stratified_split(items, taxonomy, seed=3)
    assert first == stratified_split(items, taxonomy, seed=3)
    assert first[0].split == "test"
    counts = {s: sum(i.split == s for i in first) for s in ("train", "val", "test")}
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0


def test_batch_augmentation_keeps_shape_and_white_fill() -> None:
    config = PreprocessConfig(image_size=32)
    white = torch.full((4, 3, 32, 32), 255, dtype=torch.uint8)
    out = augment_batch(white, config, torch.Generator().manual_seed(0), light=0.0)
    expected = (1 - torch.tensor(config.mean)) / torch.tensor(config.std)
    assert out.shape == (4, 3, 32, 32)
    assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-4), "fill must stay the pad colour"


def test_fine_tuning_needs_a_matching_model(catalog: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="cannot start from"):
        train(_config(catalog, tmp_path / "m", init_from=str(tmp_path / "missing")))


def test_repeat_factors_favour_rare_values(taxonomy: Taxonomy) -> None:
    heads = [h for h in taxonomy.heads() if h[0] in ("apparel.length", "apparel.pattern")]
    length = taxonomy.groups["apparel"].attributes["length"]
    maxi, regular = length.values.index("maxi"), length.values.index("regular")
    # 90 regular, 10 maxi, 10 unlabelled; pattern labels absent everywhere
    single = torch.tensor([regular] * 90 + [maxi] * 10 + [-1] * 10)
    multi = torch.full((110, taxonomy.groups["apparel"].attributes["pattern"].size), -1.0)
    targets = {"apparel.length": single, "apparel.pattern": multi}
    factors = repeat_factors(targets, heads, {"apparel.length": 0.4, "apparel.pattern": 0.4}, max_repeat=4.0)
    assert torch.allclose(factors[90:100], torch.tensor(2.0)), "share 0.1 under threshold 0.4 -> sqrt(4)"
    assert torch.all(factors[:90] == 1.0) and torch.all(factors[100:] == 1.0), "common and unlabelled: once"
    capped = repeat_factors(targets, heads, {"apparel.length": 0.4}, max_repeat=1.5)
    assert float(capped.max()) == 1.5
    assert torch.all(repeat_factors(targets, heads, {"apparel.length": 0.0}, 4.0) == 1.0), "threshold 0 = off"


def test_oversampling_sampler_repeats_rare_items_as_marked_repeats() -> None:
    factors = torch.tensor([1.0] * 8 + [3.0, 3.0])
    sampler = OversamplingSampler(factors, torch.Generator().manual_seed(0))
    draws = list(sampler)
    assert len(draws) == len(sampler) == 14
    assert sorted(d for d in draws if d < 10) == list(range(10)), "every item once per epoch"
    assert {d - 10 for d in draws if d >= 10} <= {8, 9}, "extra draws only of the rare items, marked as repeats"


def test_oversample_config_rejects_unknown_heads(taxonomy: Taxonomy) -> None:
    config = TrainConfig.resolve(None, data="m.csv", out="o", oversample_attributes={"apparel.lenght": 0.2})
    with pytest.raises(TrainError, match=r"apparel\.lenght"):
        config.oversample_thresholds(taxonomy)
    off = TrainConfig.resolve(None, data="m.csv", out="o", oversample=False)
    assert off.oversample_thresholds(taxonomy) == {}


def test_stronger_augmentation_moves_more_pixels() -> None:
    config = PreprocessConfig(image_size=32)
    images = torch.zeros((64, 3, 32, 32), dtype=torch.uint8)
    images[:, :, 12:20, 12:20] = 255  # a white square on black: augmentation moves it

    def changed(strength: float) -> float:
        out = augment_batch(images, config, torch.Generator().manual_seed(1), strength=torch.full((64,), strength))
        plain = augment_batch(images, config, torch.Generator().manual_seed(1), degrees=0, scale=(1, 1), shift=0)
        return float((out - plain).abs().mean())

    assert changed(2.0) > changed(1.0) > changed(0.0) >= 0.0
