"""Grad-CAM explanations: maps over the letterboxed input, per value, without leftovers on the model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from tagger.explain import ExplainError, explain, find_target_layer, grid_size, infer_group, resolve_heads
from tagger.model import TINY_BACKBONE, MultiHeadTagger
from tagger.predict import Predictor
from tagger.synth import PIXELS, SynthConfig, item_rng, plan_item, render_item
from tagger.taxonomy import Taxonomy
from tests.tagger.conftest import TINY_SIZE, jpeg


@pytest.fixture(scope="module")
def demo() -> Predictor:
    return Predictor.load(None, "cpu")


@pytest.fixture
def tiny(tiny_model_dir: Path) -> Predictor:
    return Predictor.load(tiny_model_dir, "cpu")


def _encode(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92)
    return out.getvalue()


def _dress(colour: tuple[int, int, int] = (200, 30, 40)) -> bytes:
    """A sleeveless A-line dress on white, off-centre in a portrait frame."""
    image = Image.new("RGB", (240, 320), "white")
    draw = ImageDraw.Draw(image)
    draw.polygon([(60, 40), (80, 40), (90, 60), (110, 60), (120, 40), (140, 40), (135, 130)], fill=colour)
    draw.polygon([(65, 40), (135, 130), (175, 300), (25, 300), (65, 130)], fill=colour)
    return _encode(image)


@pytest.fixture(scope="module")
def products(taxonomy: Taxonomy) -> list[tuple[str, bytes]]:
    """(group, JPEG) of the first 12 synthetic products of seed 5 (the README examples' catalog)."""
    config = SynthConfig(seed=5)
    out = []
    for index in range(12):
        plan = plan_item(config, taxonomy, index)
        out.append((plan.group, _encode(render_item(item_rng(5, index, PIXELS), plan.group, plan.truth, 240, 320))))
    return out


def test_maps_cover_the_letterboxed_input(tiny: Predictor) -> None:
    explanations = explain(tiny, jpeg((30, 60, 200)), group="apparel")
    assert [e.head for e in explanations] == [k for k, _, _ in tiny.taxonomy.heads() if k.startswith("apparel.")]
    for e in explanations:
        assert e.heatmap.shape == (TINY_SIZE, TINY_SIZE) and e.heatmap.dtype == np.float32
        assert e.heatmap.min() >= 0.0 and e.heatmap.max() <= 1.0
        assert e.heatmap.max() > e.heatmap.min(), e.head
        assert e.image.size == (TINY_SIZE, TINY_SIZE)
        assert e.value == e.top and e.probability == e.confidence
        assert e.target_layer == "bn2"
        assert Image.open(io.BytesIO(e.overlay_png())).size == (TINY_SIZE, TINY_SIZE)


@pytest.mark.parametrize(
    ("backbone", "layer"), [("resnet10t", "layer4"), (TINY_BACKBONE, "bn2"), ("efficientnet_b0", "bn2")]
)
def test_target_layer_is_the_final_feature_map(taxonomy: Taxonomy, backbone: str, layer: str) -> None:
    model = MultiHeadTagger(taxonomy, backbone).eval()
    assert find_target_layer(model, TINY_SIZE) == layer
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(("head", "values"), [("apparel.colour", ("red", "blue")), ("pattern", ("striped", "dotted"))])
def test_each_value_has_its_own_map(demo: Predictor, head: str, values: tuple[str, str]) -> None:
    first, second = (explain(demo, _dress(), [head], group="apparel", value=v)[0] for v in values)
    assert (first.value, second.value) == values
    assert first.head == second.head == ("apparel." + head.rsplit(".", maxsplit=1)[-1])
    assert first.top == second.top and first.confidence == second.confidence
    assert np.abs(first.heatmap - second.heatmap).max() > 0.1


def test_default_target_is_the_top_value(demo: Predictor) -> None:
    (colour,) = explain(demo, _dress(), ["colour"], category="women/clothing/dresses")
    assert colour.head == "apparel.colour" and colour.value == colour.top == "red"
    (again,) = explain(demo, _dress(), ["colour"], group="apparel", value="burgundy")  # an alias of red
    assert again.value == "red" and np.allclose(again.heatmap, colour.heatmap, atol=1e-5)


def test_the_map_is_on_the_object(demo: Predictor) -> None:
    (colour,) = explain(demo, _dress(), ["colour"], group="apparel")
    pixels = np.asarray(colour.image)
    ys, xs = np.nonzero((pixels < 200).any(axis=2))  # the dress, after letterboxing
    inside = np.zeros(colour.heatmap.shape, dtype=bool)
    inside[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    assert 0.1 < inside.mean() < 0.7
    assert colour.heatmap[inside].mean() > colour.heatmap[~inside].mean() + 0.1


def test_no_hooks_or_gradients_are_left_behind(demo: Predictor) -> None:
    model = demo.model
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    before = [{name: len(getattr(m, name)) for name in hook_dicts} for m in model.modules()]
    with torch.inference_mode():  # as a server thread might call it; Grad-CAM turns gradients back on
        explanations = explain(demo, _dress(), group="apparel")
    assert len(explanations) == 6
    assert [{name: len(getattr(m, name)) for name in hook_dicts} for m in model.modules()] == before
    # the Grad-CAM target layer of whichever backbone the demo model has (EfficientNet-B0: bn2)
    layer = model.backbone.get_submodule(find_target_layer(model, demo.card.preprocess_config().image_size))
    assert not layer._forward_hooks and not layer._backward_hooks
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_group_is_guessed_from_the_picture_without_a_category(
    demo: Predictor, products: list[tuple[str, bytes]]
) -> None:
    guesses = [infer_group(demo, image) for _, image in products]
    right = sum(g == truth for g, (truth, _) in zip(guesses, products, strict=True))
    assert right >= 10  # a guess: 12/12 now (28 of the first 30)
    assert {g for g, _ in products} == {"apparel", "footwear"}
    truth, image = products[2]
    assert truth == "footwear"
    explanations = explain(demo, image)
    assert {e.group for e in explanations} == {guesses[2]} and all(e.group_inferred for e in explanations)
    assert not any(e.group_inferred for e in explain(demo, image, category="men/shoes/boots"))
    (heel,) = explain(demo, image, ["heel_height"])  # a name of one group needs no guess
    assert heel.head == "footwear.heel_height" and not heel.group_inferred


def test_head_names_resolve_or_fail_with_the_valid_heads(taxonomy: Taxonomy) -> None:
    assert resolve_heads(taxonomy, ["colour", "footwear.type"], "footwear") == ["footwear.colour", "footwear.type"]
    assert resolve_heads(taxonomy, ["Heel-Height"], None) == ["footwear.heel_height"]
    with pytest.raises(ExplainError, match=r"several groups.*valid heads: apparel\.type"):
        resolve_heads(taxonomy, ["colour"], None)
    with pytest.raises(ExplainError, match=r"unknown attribute 'fabric'.*footwear\.heel_style"):
        resolve_heads(taxonomy, ["fabric"], "apparel")
    with pytest.raises(ExplainError, match="unknown group"):
        resolve_heads(taxonomy, None, "hats")


def test_bad_requests_are_refused(tiny: Predictor) -> None:
    with pytest.raises(ExplainError, match="exactly one head"):
        explain(tiny, jpeg((0, 0, 0)), group="apparel", value="red")
    with pytest.raises(ExplainError, match="maps to no group"):
        explain(tiny, jpeg((0, 0, 0)), category="garden/tools")
    with pytest.raises(Exception, match="not a value of colour"):
        explain(tiny, jpeg((0, 0, 0)), ["apparel.colour"], value="plaid")


def test_command_writes_the_grid(tiny_model_dir: Path, tmp_path: Path) -> None:
    from streams.cli import app

    image, out = tmp_path / "dress.jpg", tmp_path / "cam.png"
    image.write_bytes(jpeg((200, 30, 40)))
    args = ["explain", "--model", str(tiny_model_dir), "--device", "cpu", "--out", str(out), str(image)]
    result = CliRunner().invoke(app, [*args, "--category", "women/clothing/dresses"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    with Image.open(out) as png:
        assert png.size == grid_size(6) == (4 * 300, 2 * 330)

    result = CliRunner().invoke(app, [*args, "--attribute", "colour", "--attribute", "footwear.type", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    colour, kind = record["heads"]  # a bare name in two groups: the group is inferred from the picture
    assert colour.endswith(".colour") and kind == "footwear.type"
    assert set(record["heads"]["footwear.type"]) >= {"top", "confidence", "value", "probability"}
    with Image.open(out) as png:
        assert png.size == grid_size(2) == (3 * 300, 330)


def test_command_lists_the_heads_for_a_bad_attribute(tiny_model_dir: Path, tmp_path: Path) -> None:
    from streams.cli import app

    image = tmp_path / "dress.jpg"
    image.write_bytes(jpeg((200, 30, 40)))
    args = ["explain", "--model", str(tiny_model_dir), "--device", "cpu", "--out", str(tmp_path / "x.png")]
    result = CliRunner().invoke(app, [*args, "--attribute", "fabric", str(image)])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "unknown attribute 'fabric'" in message and "apparel.colour" in message
    assert "footwear.heel_style" in message
    assert not (tmp_path / "x.png").exists()
