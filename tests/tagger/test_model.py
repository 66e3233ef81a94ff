"""Model heads and masking, model directories, the predictor, and that training learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tagger.card import CARD_FILE, WEIGHTS_FILE, ModelCard, ModelCardError, load_model, read_card, save_model
from tagger.model import TINY_BACKBONE, ModelError, MultiHeadTagger
from tagger.predict import Predictor
from tagger.taxonomy import Taxonomy
from tagger.train import masked_loss
from tests.tagger.conftest import TINY_SIZE, jpeg


def test_one_head_per_group_attribute(tiny_model: MultiHeadTagger, taxonomy: Taxonomy) -> None:
    logits = tiny_model(torch.randn(3, 3, TINY_SIZE, TINY_SIZE))
    assert set(logits) == {key for key, _, _ in taxonomy.heads()}
    for key, _, attribute in taxonomy.heads():
        assert logits[key].shape == (3, attribute.size)


def test_head_mask_follows_groups(tiny_model: MultiHeadTagger) -> None:
    mask = tiny_model.head_mask(["apparel", "footwear", None])
    assert mask["apparel.length"].tolist() == [True, False, True]
    assert mask["footwear.heel_height"].tolist() == [False, True, True]


def test_unknown_backbone_is_a_clear_error(taxonomy: Taxonomy) -> None:
    with pytest.raises(ModelError, match="no_such_net"):
        MultiHeadTagger(taxonomy, "no_such_net")


def test_masked_loss_ignores_missing_and_other_groups(tiny_model: MultiHeadTagger, taxonomy: Taxonomy) -> None:
    logits = tiny_model(torch.randn(2, 3, TINY_SIZE, TINY_SIZE))
    missing = {key: torch.full_like(v[:, 0], -1, dtype=torch.long) for key, v in logits.items()}
    missing["apparel.pattern"] = torch.full_like(logits["apparel.pattern"], -1.0)
    assert float(masked_loss(logits, missing, taxonomy, 0.0).detach()) == 0.0
    one = dict(missing)
    one["apparel.colour"] = torch.tensor([3, -1])
    expected = torch.nn.functional.cross_entropy(logits["apparel.colour"][:1], torch.tensor([3]))
    assert float(masked_loss(logits, one, taxonomy, 0.0).detach()) == pytest.approx(float(expected.detach()))


def test_multi_label_loss_sums_over_values(tiny_model: MultiHeadTagger, taxonomy: Taxonomy) -> None:
    """A 5-value sigmoid head must weigh as much per item as a softmax head, not a fifth of it."""
    logits = tiny_model(torch.randn(2, 3, TINY_SIZE, TINY_SIZE))
    targets = {key: torch.full_like(v[:, 0], -1, dtype=torch.long) for key, v in logits.items()}
    row = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0], [-1.0] * 5])
    targets["apparel.pattern"] = row
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits["apparel.pattern"][:1], row[:1], reduction="sum"
    )
    assert float(masked_loss(logits, targets, taxonomy, 0.0).detach()) == pytest.approx(
        float(expected.detach()), rel=1e-5
    )


def test_a_few_training_steps_reduce_the_loss(taxonomy: Taxonomy) -> None:
    torch.manual_seed(1)
    model = MultiHeadTagger(taxonomy, TINY_BACKBONE, drop_rate=0.0)
    images = torch.randn(8, 3, TINY_SIZE, TINY_SIZE)
    targets: dict[str, torch.Tensor] = {}
    for key, group, attribute in taxonomy.heads():
        if attribute.multi_label:
            targets[key] = (torch.arange(8)[:, None] % attribute.size == torch.arange(attribute.size)).float()
        else:
            targets[key] = torch.arange(8) % attribute.size if group.name == "apparel" else torch.full((8,), -1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    first = float(masked_loss(model(images), targets, taxonomy, 0.0).detach())
    for _ in range(40):
        loss = masked_loss(model(images), targets, taxonomy, 0.0)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    assert float(loss.detach()) < first * 0.5


def test_card_round_trip_and_stable_model_id(tiny_model_dir: Path, tiny_model: MultiHeadTagger, tmp_path: Path) -> None:
    card = read_card(tiny_model_dir)
    assert card.model_id == f"tiny@0.0.1+{card.weights_sha256[:8]}"
    data = json.loads((tiny_model_dir / CARD_FILE).read_text())
    for field in (
        "name",
        "version",
        "weights_sha256",
        "model_id",
        "backbone",
        "taxonomy",
        "preprocessing",
        "thresholds",
        "temperatures",
        "metrics",
        "training",
        "created_at",
    ):
        assert field in data
    again = save_model(tiny_model, ModelCard.from_json((tiny_model_dir / CARD_FILE).read_text()), tmp_path / "copy")
    assert again.model_id == card.model_id, "same weights must give the same model id"
    model, loaded = load_model(tiny_model_dir)
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.inference_mode():
        assert torch.allclose(model(x)["apparel.colour"], tiny_model(x)["apparel.colour"], atol=1e-6)
    assert loaded.taxonomy_obj().fingerprint() == card.taxonomy_obj().fingerprint()


def test_corrupt_or_foreign_weights_are_refused(tiny_model_dir: Path) -> None:
    weights = tiny_model_dir / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelCardError, match="does not match"):
        load_model(tiny_model_dir)
    with pytest.raises(ModelCardError, match="not a model directory"):
        load_model(tiny_model_dir / "nowhere")


def test_newer_card_format_is_refused() -> None:
    with pytest.raises(ModelCardError, match="newer"):
        ModelCard.from_json(json.dumps({"format": 99, "name": "x"}))


def test_predictor_is_deterministic_across_batches(tiny_model_dir: Path) -> None:
    predictor = Predictor.load(tiny_model_dir, device="cpu")
    red, blue, green = (predictor.preprocess(jpeg(c)) for c in ((200, 20, 20), (20, 20, 200), (20, 160, 20)))
    alone = predictor.predict(torch.stack([red]), ["apparel"])[0]
    again = predictor.predict(torch.stack([red]), ["apparel"])[0]
    mixed = predictor.predict(torch.stack([blue, red, green]), ["footwear", "apparel", None])
    for key, prediction in alone.attributes.items():
        assert prediction.probabilities == again.attributes[key].probabilities
        for value, p in prediction.probabilities.items():
            assert mixed[1].attributes[key].probabilities[value] == pytest.approx(p, abs=1e-5)
    assert set(alone.attributes) == {k for k in alone.attributes if k.startswith("apparel.")}
    assert {k.split(".")[0] for k in mixed[0].attributes} == {"footwear"}
    assert {k.split(".")[0] for k in mixed[2].attributes} == {"apparel", "footwear"}


def test_prediction_shape(tiny_model_dir: Path) -> None:
    predictor = Predictor.load(tiny_model_dir, device="cpu")
    result = predictor.predict(torch.stack([predictor.preprocess(jpeg((0, 0, 0)))]), ["apparel"])[0]
    colour = result.attributes["apparel.colour"]
    assert sum(colour.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert colour.top == max(colour.probabilities, key=colour.probabilities.__getitem__)
    assert colour.confidence == colour.probabilities[colour.top]
    pattern = result.attributes["apparel.pattern"]
    assert pattern.multi_label
    assert all(pattern.probabilities[v] >= pattern.threshold for v in pattern.values)
    assert json.dumps(result.to_dict())
    with pytest.raises(ValueError, match="one group per image"):
        predictor.predict(torch.zeros(2, 3, TINY_SIZE, TINY_SIZE), ["apparel"])


@pytest.mark.gpu
def test_predictor_on_cuda_matches_cpu(tiny_model_dir: Path) -> None:
    cpu = Predictor.load(tiny_model_dir, device="cpu")
    gpu = Predictor.load(tiny_model_dir, device="cuda")
    batch = torch.stack([cpu.preprocess(jpeg((200, 20, 20))), cpu.preprocess(jpeg((20, 20, 200)))])
    for a, b in zip(cpu.predict(batch, ["apparel", None]), gpu.predict(batch, ["apparel", None]), strict=True):
        for key in a.attributes:
            for value, p in a.attributes[key].probabilities.items():
                assert b.attributes[key].probabilities[value] == pytest.approx(p, abs=0.02)  # bf16 autocast


def test_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from tagger.errors import TaggerError
    from tagger.predict import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(TaggerError, match="no CUDA device"):
        pick_device("cuda")
    with pytest.raises(TaggerError, match="not auto, cpu or cuda"):
        pick_device("tpu")
