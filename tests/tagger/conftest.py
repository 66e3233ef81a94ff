"""Tiny models and images for fast model-side tests."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from tagger.card import ModelCard, save_model
from tagger.model import TINY_BACKBONE, MultiHeadTagger
from tagger.preprocess import PreprocessConfig
from tagger.taxonomy import Taxonomy, load_taxonomy

TINY_SIZE = 64


@pytest.fixture(scope="session")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


@pytest.fixture
def tiny_model(taxonomy: Taxonomy) -> MultiHeadTagger:
    torch.manual_seed(0)
    return MultiHeadTagger(taxonomy, TINY_BACKBONE).eval()


@pytest.fixture
def tiny_model_dir(tiny_model: MultiHeadTagger, taxonomy: Taxonomy, tmp_path: Path) -> Path:
    card = ModelCard(
        name="tiny",
        version="0.0.1",
        backbone=TINY_BACKBONE,
        taxonomy=taxonomy.to_dict(),
        preprocessing=PreprocessConfig(image_size=TINY_SIZE).to_dict(),
    )
    save_model(tiny_model, card, tmp_path / "model")
    return tmp_path / "model"


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (90, 120), shape: str = "rect") -> bytes:
    """A small product-like photo: a coloured shape on white."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    box = (size[0] // 5, size[1] // 6, size[0] * 4 // 5, size[1] * 5 // 6)
    (draw.ellipse if shape == "ellipse" else draw.rectangle)(box, fill=colour)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()
