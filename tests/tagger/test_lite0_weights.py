"""The Lite0 weight converter's key mapping and normalisation folding, without the downloaded package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import timm
import torch

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


lite0 = _script("lite0_weights")
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def efficientnet_pytorch_keys() -> list[str]:
    """The key names of EfficientNet-Lite0 in the EfficientNet-PyTorch layout (what the package ships)."""
    keys = ["_conv_stem.weight", *(f"_bn0.{leaf}" for leaf in BN)]
    for block in range(sum(lite0.STAGE_REPEATS)):
        convs = ("depthwise_conv", "project_conv") if block == 0 else ("expand_conv", "depthwise_conv", "project_conv")
        norms = ("bn1", "bn2") if block == 0 else ("bn0", "bn1", "bn2")
        keys += [f"_blocks.{block}._{conv}.weight" for conv in convs]
        keys += [f"_blocks.{block}._{norm}.{leaf}" for norm in norms for leaf in BN]
    keys += ["_conv_head.weight", *(f"_bn1.{leaf}" for leaf in BN), "_fc.weight", "_fc.bias"]
    return keys


def test_every_key_maps_onto_timm_lite0_one_to_one() -> None:
    source = efficientnet_pytorch_keys()
    mapped = [lite0.timm_key(k) for k in source]
    model = timm.create_model(lite0.TIMM_NAME, pretrained=False)
    assert len(source) == 296  # the package's file has 296 tensors
    assert sorted(mapped) == sorted(model.state_dict())
    assert lite0.timm_key("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    assert lite0.timm_key("_blocks.15._bn2.running_var") == "blocks.6.0.bn3.running_var"


def test_folding_the_normalisation_keeps_the_stem_output() -> None:
    torch.manual_seed(0)
    model: Any = timm.create_model(lite0.TIMM_NAME, pretrained=False, num_classes=0).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["bn1.running_mean"] = torch.randn_like(state["bn1.running_mean"])
    model.load_state_dict(state)
    source = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    target = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    folded: Any = timm.create_model(lite0.TIMM_NAME, pretrained=False, num_classes=0).eval()
    folded.load_state_dict(lite0.fold_normalisation(state, source, target))
    pixels = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor(target[0]).view(1, 3, 1, 1), torch.tensor(target[1]).view(1, 3, 1, 1)
    with torch.inference_mode():
        a = model.bn1(model.conv_stem((pixels - 0.5) / 0.5))
        b = folded.bn1(folded.conv_stem((pixels - mean) / std))
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # the stem's zero padding differs at the border
    assert torch.allclose(a[inner], b[inner], atol=1e-4)
