"""The backbone of a Swatch model directory as a timm weights file for ``swatch train --backbone-weights``.

    python scripts/backbone_weights.py MODEL_DIR OUT.safetensors

A Swatch model is a timm backbone plus one linear head per attribute. Another taxonomy (the real
product photos' in ``benchmarks/real_catalog.sh``) cannot start from it with ``--init-from``, which
needs the same taxonomy, but it can start from its backbone: this writes the backbone's tensors in
fp32 under the keys ``timm.create_model(backbone, num_classes=0)`` has, checks that they load back
strictly and give the same pooled features as the model, and prints the backbone's timm name
(for ``--backbone``). Exit code 0 when the check passed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

from tagger.card import load_model

PREFIX = "backbone."


def backbone_state(model_dir: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """The timm name and the fp32 state dict of a model directory's backbone (hash-checked load)."""
    model, card = load_model(model_dir, "cpu")
    state = {
        key[len(PREFIX) :]: value.detach().float().contiguous() if value.is_floating_point() else value.contiguous()
        for key, value in model.state_dict().items()
        if key.startswith(PREFIX)
    }
    return card.backbone, state


def main(argv: Sequence[str] | None = None) -> int:
    """Write the backbone, reload it strictly and compare pooled features; 0 when they match."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    name, state = backbone_state(args.model_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out))
    backbone = timm.create_model(name, pretrained=False, num_classes=0).eval()
    backbone.load_state_dict(load_file(str(args.out)), strict=True)
    model, _ = load_model(args.model_dir, "cpu")
    pixels = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        same = torch.allclose(backbone(pixels), model.forward_features(pixels), atol=1e-5)
    print(f"{args.out}: {len(state)} tensors of {name} from {args.model_dir}; strict reload, features match: {same}")
    print(f"backbone {name}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
