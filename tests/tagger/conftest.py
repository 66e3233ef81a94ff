"""Tiny models and images for fast model-side tests."""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw, ImageFile

from tagger.card import ModelCard, save_model
from tagger.model import TINY_BACKBONE, MultiHeadTagger
from tagger.preprocess import PreprocessConfig
from tagger.taxonomy import Taxonomy, load_taxonomy

TINY_SIZE = 64


def tiny_demo_script_env(run_dir: Path, **extra: str) -> dict[str, str]:
    """The environment that runs scripts/train_demo_model.sh (or gpu_train.sh) in seconds: this Python,
    a 60-product catalog, timm's tiny test backbone at 64 px, one epoch."""
    return {
        **os.environ,
        "PYTHON": sys.executable,
        "RUN_DIR": str(run_dir),
        "N_TRAIN": "60",
        "N_HELDOUT": "30",
        "BACKBONE": "test_efficientnet",
        "IMAGE_SIZE": str(TINY_SIZE),
        "EPOCHS": "1",
        "BATCH": "16",
        "LOADER_WORKERS": "0",
        "WORKERS": "1",
        "COLUMNS": "200",
        **extra,
    }


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


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def png_header(width: int, height: int, depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG that declares ``width`` x ``height`` but carries no pixel data: what a bomb's header looks like.

    ``colour_type`` is PNG's (0 grey, 2 RGB, 3 palette, 4 grey and alpha, 6 RGBA); 8-bit RGB by default.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records every pixel decode (ImageFile.load) with the size decoded."""
    calls: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def png_chunk(tag: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, data and CRC."""
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
