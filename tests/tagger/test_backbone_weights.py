"""scripts/backbone_weights.py: a model directory's backbone as a timm weights file that training loads."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tagger.card import load_model
from tagger.model import TINY_BACKBONE, MultiHeadTagger
from tagger.taxonomy import Taxonomy

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("backbone_weights", ROOT / "scripts" / "backbone_weights.py")
assert spec and spec.loader
backbone_weights = importlib.util.module_from_spec(spec)
sys.modules["backbone_weights"] = backbone_weights
spec.loader.exec_module(backbone_weights)


def test_the_written_backbone_starts_a_new_model_with_the_same_features(
    tiny_model_dir: Path, taxonomy: Taxonomy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "backbone.safetensors"
    assert backbone_weights.main([str(tiny_model_dir), str(out)]) == 0
    assert f"backbone {TINY_BACKBONE}" in capsys.readouterr().out
    state = load_file(str(out))
    assert state and not any(k.startswith(("backbone.", "heads.")) for k in state)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    # what `swatch train --backbone-weights` does with it: a model for another taxonomy, same features
    fresh = MultiHeadTagger(taxonomy, TINY_BACKBONE, backbone_weights=out).eval()
    source, _ = load_model(tiny_model_dir, "cpu")
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.allclose(fresh.forward_features(pixels), source.forward_features(pixels), atol=1e-5)


def test_a_directory_without_a_model_is_an_error(tmp_path: Path) -> None:
    from tagger.card import ModelCardError

    with pytest.raises(ModelCardError):
        backbone_weights.main([str(tmp_path), str(tmp_path / "out.safetensors")])
