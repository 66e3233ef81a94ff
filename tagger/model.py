"""The multi-attribute tagger: a timm backbone with one pooled feature and one head per attribute.

Heads are keyed ``group.attribute`` (``apparel.colour``, ``footwear.heel_height``) because the same
attribute name can have different values in different groups. Every forward pass computes all
heads (they are single linear layers); :meth:`MultiHeadTagger.head_mask` says which heads apply to
which image, and the loss and the outputs use only those.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from tagger.errors import TaggerError
from tagger.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_b0"
TINY_BACKBONE = "test_efficientnet"  # timm's own tiny EfficientNet for fast tests


class ModelError(TaggerError):
    """A model cannot be built or loaded."""


def _module_key(head: str) -> str:
    return head.replace(".", "__")  # ModuleDict keys may not contain dots


class MultiHeadTagger(nn.Module):
    """Backbone → pooled features → dropout → one linear head per (group, attribute)."""

    def __init__(
        self,
        taxonomy: Taxonomy,
        backbone: str = DEFAULT_BACKBONE,
        *,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.taxonomy = taxonomy
        self.backbone_name = backbone
        try:
            self.backbone = timm.create_model(backbone, pretrained=pretrained, num_classes=0)
        except RuntimeError as exc:  # unknown name, or no weights reachable for pretrained=True
            hint = " (pretrained weights need internet; use --backbone-weights FILE offline)" if pretrained else ""
            raise ModelError(f"cannot create timm backbone {backbone!r}: {exc}{hint}") from exc
        if backbone_weights is not None:
            self._load_backbone(Path(backbone_weights))
        features = cast(int, self.backbone.num_features)
        self.dropout = nn.Dropout(drop_rate)
        self.head_keys = [key for key, _, _ in taxonomy.heads()]
        self.heads = nn.ModuleDict(
            {_module_key(key): nn.Linear(features, attribute.size) for key, _, attribute in taxonomy.heads()}
        )
        self.group_names = list(taxonomy.groups)

    def _load_backbone(self, path: Path) -> None:
        try:
            if path.suffix == ".safetensors":
                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelError(f"cannot read backbone weights {path}: {exc}") from exc
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        logger.info("backbone weights %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected))
        if len(missing) > len(state) // 2:
            raise ModelError(f"{path} does not fit backbone {self.backbone_name}: {len(missing)} keys missing")

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector per image, shape (B, num_features)."""
        return self.backbone(images)  # type: ignore[no-any-return]

    def forward_heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head key from pooled features."""
        features = self.dropout(features)
        return {key: self.heads[_module_key(key)](features) for key in self.head_keys}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head key, each of shape (B, number of values)."""
        return self.forward_heads(self.forward_features(images))

    def head_mask(self, groups: Sequence[str | None], device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Per head, a (B,) bool tensor: True where the image's group owns the head.

        An image without a group (``None``) gets every head, so a caller that does not know the
        category still sees all predictions.
        """
        masks = {}
        for key in self.head_keys:
            group = key.split(".", 1)[0]
            masks[key] = torch.tensor([g is None or g == group for g in groups], dtype=torch.bool, device=device)
        return masks
