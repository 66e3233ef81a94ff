"""Grad-CAM heat maps: where in the picture a head looked when it chose a value.

:func:`explain` takes the image bytes a listing came with, preprocesses them exactly as the
:class:`~tagger.predict.Predictor` does (decode, letterbox, normalise) and returns one
:class:`Explanation` per head: the head's top value and confidence, the value explained (the top
value unless ``value=`` names another), and a heat map over the letterboxed model input (the
``image_size`` x ``image_size`` square the model saw, values in [0, 1]). :meth:`Explanation.overlay_png`
blends it on that square for the review UI; :func:`render_grid` draws a whole image's explanations as
one PNG (``swatch explain``).

Choices, so that the maps mean something and cost little:

* **Target layer**: the backbone module that produces the final feature map, the one the global pool
  turns into the features the heads read (found once per model by a probe forward pass: the last
  module to finish whose output has the shape of ``backbone.forward_features``). That is ``layer4``
  on ResNets (the demo model's resnet10t) and ``bn2`` (``conv_head`` + BN + activation) on
  EfficientNets, including timm's tiny ``test_efficientnet``. With a linear head over average-pooled
  features, Grad-CAM there equals the original CAM for that value. The map is coarse (1/32 of the
  input: 4 x 4 at 128 px) and is upsampled bilinearly; ``target_layer=`` picks another module by name
  (e.g. ``layer3`` for a finer, less class-specific map).
* **Target score**: the value's logit, before softmax (single-label heads) or sigmoid (multi-label heads
  such as pattern, where each value is its own yes/no decision). Temperatures only rescale logits,
  so they do not change the map. Each map is min-max normalised on its own: it shows where, not how much.
* **Which heads**: the heads of the image's group. Pass ``group=`` (or ``category=``, mapped with the
  taxonomy) whenever the listing's category is known, as it is in the review queue. Otherwise the
  group is guessed from the picture (``Explanation.group_inferred``): the model has no group head,
  and each head only ever saw its own group's pictures, so the ``type`` heads' confidences are no
  guide (the demo model gets 79-80% of synthetic products right that way); the guess is the group
  whose single-label heads have the highest mean energy (log-sum-exp of the logits), right for
  89-94% (see :func:`group_scores`). Heads named explicitly need no group unless a bare attribute
  name (``colour``) belongs to several groups.
* **Cost and safety**: one forward and one backward pass, in float32 and with gradients on (also when
  called under ``torch.inference_mode``), on the predictor's device, whatever the number of heads:
  the image is repeated once per head in a batch and each copy gets its own target. The hooks are
  removed and the parameters' gradients cleared before returning. Calls are serialised by a lock;
  do not run other forward passes on the same model while one is in flight (its hooks would see them).
"""

from __future__ import annotations

import io
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from tagger.errors import TaggerError
from tagger.model import MultiHeadTagger
from tagger.preprocess import denormalize

if TYPE_CHECKING:
    from tagger.predict import Predictor
    from tagger.taxonomy import Taxonomy

DEFAULT_ALPHA = 0.45  # weight of the heat map in overlays
COLORMAP = "jet"
GRID_COLUMNS = 4  # panels per row in render_grid
CELL_PX = (300, 330)  # width, height of one panel in render_grid (the extra height holds the title)
_DPI = 100

_LOCK = threading.RLock()  # serialises the hooked passes (explain, the layer probe)
_TARGET_LAYERS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


class ExplainError(TaggerError):
    """An explanation cannot be made as asked (unknown head or value, no usable model)."""


@dataclass(frozen=True, eq=False)
class Explanation:
    """One head's Grad-CAM map for one image, over the letterboxed model input."""

    head: str  # group.attribute
    value: str  # the value explained
    probability: float  # its calibrated probability
    top: str  # the head's top value
    confidence: float  # its calibrated probability
    multi_label: bool
    heatmap: NDArray[np.float32]  # (image_size, image_size), 0..1; all 0 where nothing speaks for the value
    image: Image.Image  # the letterboxed input as the model saw it (RGB, image_size square)
    target_layer: str  # backbone module the map was taken at
    group_inferred: bool = False  # the heads were chosen by a group guessed from the picture

    @property
    def group(self) -> str:
        """The head's group."""
        return self.head.split(".", 1)[0]

    @property
    def title(self) -> str:
        """``head: value (probability)``, as the grid's panels are titled."""
        return f"{self.head}: {self.value} ({self.probability:.2f})"

    def overlay(self, alpha: float = DEFAULT_ALPHA) -> Image.Image:
        """The heat map (jet colormap) blended on the letterboxed input with weight ``alpha``."""
        return overlay(self.image, self.heatmap, alpha)

    def overlay_png(self, alpha: float = DEFAULT_ALPHA) -> bytes:
        """:meth:`overlay` encoded as PNG."""
        out = io.BytesIO()
        self.overlay(alpha).save(out, "PNG", optimize=True)
        return out.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output (no pixels)."""
        return {
            "head": self.head,
            "value": self.value,
            "probability": round(self.probability, 6),
            "top": self.top,
            "confidence": round(self.confidence, 6),
            "multi_label": self.multi_label,
        }


def overlay(image: Image.Image, heatmap: NDArray[np.floating[Any]], alpha: float = DEFAULT_ALPHA) -> Image.Image:
    """Blend ``heatmap`` (H, W in 0..1, the image's size) on ``image`` through the jet colormap."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if heatmap.shape != base.shape[:2]:
        raise ValueError(f"heat map {heatmap.shape} does not match the image {base.shape[:2]}")
    heat = np.asarray(colormaps[COLORMAP](np.clip(heatmap, 0.0, 1.0)), dtype=np.float32)[..., :3]
    blended = (1.0 - alpha) * base + alpha * heat
    return Image.fromarray(np.round(blended * 255.0).astype(np.uint8))


def explain(
    predictor: Predictor,
    image: bytes,
    heads: Sequence[str] | None = None,
    *,
    group: str | None = None,
    category: str | None = None,
    value: str | None = None,
    target_layer: str | None = None,
) -> list[Explanation]:
    """Grad-CAM maps for ``heads`` (keys ``group.attribute`` or bare attribute names) on one image.

    ``heads`` None means every head of the image's group: ``group`` (a taxonomy group name) or
    ``category`` (a category path) when given, else the group inferred from the picture (see the
    module docstring). ``value`` explains that value (name or alias) instead of the top one, and needs
    exactly one head. Raises :class:`ExplainError` for unknown heads, groups or values, and an
    :class:`~tagger.preprocess.ImageError` for bytes that are not a usable image.
    """
    model = _torch_model(predictor)
    taxonomy = predictor.taxonomy
    group = _group_from(taxonomy, group, category)
    tensor = predictor.preprocess(image)
    prediction = predictor.predict(tensor.unsqueeze(0), [None])[0]
    inferred = group is None and _needs_group(taxonomy, heads)
    if inferred:
        group = max((scores := group_scores(model, tensor)), key=scores.__getitem__)
    keys = resolve_heads(taxonomy, heads, group)
    if value is not None and len(keys) != 1:
        raise ExplainError(f"value={value!r} needs exactly one head, not {len(keys)} ({', '.join(keys)})")
    attributes = {key: attribute for key, _, attribute in taxonomy.heads()}
    targets: list[tuple[str, str]] = []
    for key in keys:
        answer = prediction.attributes[key]
        targets.append((key, attributes[key].canonical(value) if value is not None else answer.top))
    layer_name = target_layer or find_target_layer(model, predictor.preprocess_config.image_size)
    maps = _grad_cam(model, tensor, targets, layer_name, predictor.device)
    letterboxed = denormalize(tensor, predictor.preprocess_config)
    out = []
    for (key, target), heat in zip(targets, maps, strict=True):
        answer = prediction.attributes[key]
        out.append(
            Explanation(
                head=key,
                value=target,
                probability=answer.probabilities[target],
                top=answer.top,
                confidence=answer.confidence,
                multi_label=answer.multi_label,
                heatmap=heat,
                image=letterboxed,
                target_layer=layer_name,
                group_inferred=inferred,
            )
        )
    return out


def infer_group(predictor: Predictor, image: bytes) -> str:
    """The group the picture most likely belongs to (highest :func:`group_scores`): a guess, see the module doc."""
    scores = group_scores(_torch_model(predictor), predictor.preprocess(image))
    return max(scores, key=scores.__getitem__)


def group_scores(model: MultiHeadTagger, tensor: torch.Tensor) -> dict[str, float]:
    """Per group, the mean energy (log-sum-exp of the logits) of its single-label heads on one (3, S, S) input.

    Heads are trained only on their own group's pictures, so their softmax confidence on another
    group's picture means little; their logits are larger on the kind of picture they were trained on.
    """
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(tensor.unsqueeze(0).to(device))
    scores: dict[str, float] = {}
    for name, group in model.taxonomy.groups.items():
        keys = [f"{name}.{a.name}" for a in group.attributes.values() if not a.multi_label]
        keys = keys or [f"{name}.{a.name}" for a in group.attributes.values()]
        scores[name] = float(torch.stack([torch.logsumexp(logits[k].float()[0], dim=0) for k in keys]).mean())
    return scores


def resolve_heads(taxonomy: Taxonomy, names: Sequence[str] | None, group: str | None) -> list[str]:
    """Head keys for ``names`` (keys or bare attribute names, resolved in ``group`` first), in order.

    ``names`` None means every head of ``group``. Raises :class:`ExplainError` listing the valid heads.
    """
    keys = [key for key, _, _ in taxonomy.heads()]
    if group is not None and group not in taxonomy.groups:
        raise ExplainError(f"unknown group {group!r}; the model's groups are {', '.join(taxonomy.groups)}")
    if names is None:
        if group is None:
            raise ExplainError("name the heads or the group to explain")
        return [key for key in keys if key.startswith(f"{group}.")]
    resolved: list[str] = []
    for raw in names:
        name = raw.strip().lower().replace("-", "_").replace(" ", "_")
        if name in keys:
            key = name
        elif group is not None and f"{group}.{name}" in keys:
            key = f"{group}.{name}"
        else:
            matches = [k for k in keys if k.split(".", 1)[1] == name]
            if len(matches) != 1:
                why = (
                    f"{raw!r} is an attribute of several groups ({', '.join(matches)}); name the head or the category"
                    if matches
                    else f"unknown attribute {raw!r}"
                )
                raise ExplainError(f"{why}; valid heads: {', '.join(keys)}")
            key = matches[0]
        if key not in resolved:
            resolved.append(key)
    if not resolved:
        raise ExplainError(f"no heads named; valid heads: {', '.join(keys)}")
    return resolved


def find_target_layer(model: MultiHeadTagger, image_size: int) -> str:
    """Name (in ``model.backbone``) of the module that outputs the final feature map; cached per model.

    A probe forward pass of ``backbone.forward_features`` records each module's output; the last module
    to finish with an output of the final map's shape is the outermost one that produces it.
    """
    cached = _TARGET_LAYERS.get(model)
    if cached is not None:
        return cached
    backbone = model.backbone
    forward_features = getattr(backbone, "forward_features", None)
    if not callable(forward_features):
        raise ExplainError(f"{model.backbone_name} has no forward_features; pass target_layer=")
    finished: list[tuple[str, tuple[int, ...]]] = []
    with _LOCK:
        handles = [
            module.register_forward_hook(_recorder(name, finished)) for name, module in backbone.named_modules() if name
        ]
        try:
            device = next(backbone.parameters()).device
            probe = torch.zeros(1, 3, image_size, image_size, device=device)
            with torch.no_grad():
                features = forward_features(probe)
        finally:
            for handle in handles:
                handle.remove()
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ExplainError(
            f"Grad-CAM needs a convolutional backbone with a (B, C, H, W) feature map; "
            f"{model.backbone_name} gives {shape}"
        )
    name = next((n for n, shape in reversed(finished) if shape == tuple(features.shape)), None)
    if name is None:
        raise ExplainError(f"no module of {model.backbone_name} outputs its final feature map; pass target_layer=")
    _TARGET_LAYERS[model] = name
    return name


def render_grid(
    explanations: Sequence[Explanation], *, columns: int = GRID_COLUMNS, title: str = "input", palette: bool = False
) -> bytes:
    """One PNG: the letterboxed input, then one overlay per explanation titled ``head: value (probability)``.

    The image is :func:`grid_size` pixels: ``columns`` panels of :data:`CELL_PX` per row. ``palette``
    writes 256 dithered colours instead of full RGB: about half the bytes, for documentation.
    """
    if not explanations:
        raise ExplainError("nothing to draw: no explanations")
    width, height = grid_size(len(explanations), columns=columns)
    cols = min(columns, len(explanations) + 1)
    rows = -(-(len(explanations) + 1) // cols)
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    panels: list[tuple[str, Image.Image]] = [(title, explanations[0].image)]
    panels += [(e.title, e.overlay()) for e in explanations]
    for i in range(rows * cols):
        axes = figure.add_subplot(rows, cols, i + 1)
        axes.axis("off")
        if i < len(panels):
            axes.imshow(np.asarray(panels[i][1]), interpolation="bilinear")
            axes.set_title(panels[i][0], fontsize=9)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.1 / rows, wspace=0.04, hspace=0.12)
    drawn = io.BytesIO()
    figure.savefig(drawn, format="png", dpi=_DPI)
    with Image.open(drawn) as rendered:
        grid = rendered.convert("RGB")
    if palette:
        colours = grid.quantize(256, method=Image.Quantize.MEDIANCUT)
        grid = grid.quantize(palette=colours, dither=Image.Dither.FLOYDSTEINBERG)
    out = io.BytesIO()
    grid.save(out, "PNG", optimize=True)
    return out.getvalue()


def grid_size(count: int, *, columns: int = GRID_COLUMNS) -> tuple[int, int]:
    """Pixel (width, height) of :func:`render_grid`'s PNG for ``count`` explanations."""
    if columns < 1:
        raise ValueError(f"columns must be at least 1, not {columns}")
    cols = min(columns, count + 1)
    rows = -(-(count + 1) // cols)
    return cols * CELL_PX[0], rows * CELL_PX[1]


class _StackedHeads(nn.Module):
    """The tagger as pytorch_grad_cam wants it: one tensor, every head's logits side by side."""

    def __init__(self, model: MultiHeadTagger) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        return torch.cat([logits[key] for key in self.model.head_keys], dim=1)


def _grad_cam(
    model: MultiHeadTagger,
    tensor: torch.Tensor,
    targets: Sequence[tuple[str, str]],
    layer_name: str,
    device: torch.device,
) -> list[NDArray[np.float32]]:
    """One map per (head, value): the image repeated once per target, one forward and backward pass."""
    try:
        layer = model.backbone.get_submodule(layer_name)
    except AttributeError as exc:
        raise ExplainError(f"{model.backbone_name} has no module {layer_name!r} to take Grad-CAM at") from exc
    offsets: dict[str, int] = {}
    start = 0
    for key, _, attribute in model.taxonomy.heads():
        offsets[key] = start
        start += attribute.size
    values = {key: attribute.values for key, _, attribute in model.taxonomy.heads()}
    cam_targets = [ClassifierOutputTarget(offsets[key] + values[key].index(value)) for key, value in targets]
    wrapper = _StackedHeads(model)
    with _LOCK, torch.inference_mode(False), torch.enable_grad():
        batch = tensor.clone().to(device).unsqueeze(0).repeat(len(targets), 1, 1, 1)
        batch = batch.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        cam = GradCAM(model=wrapper, target_layers=[layer])
        try:
            maps = cam(input_tensor=batch, targets=cam_targets)
        except ValueError as exc:  # e.g. a target_layer= whose output is not a (B, C, H, W) map
            raise ExplainError(f"cannot take Grad-CAM at {layer_name!r} of {model.backbone_name}: {exc}") from exc
        finally:
            cam.activations_and_grads.release()
            wrapper.zero_grad(set_to_none=True)
    return [np.clip(np.asarray(m, dtype=np.float32), 0.0, 1.0) for m in maps]


def _recorder(name: str, finished: list[tuple[str, tuple[int, ...]]]) -> Any:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            finished.append((name, tuple(output.shape)))

    return hook


def _torch_model(predictor: Predictor) -> MultiHeadTagger:
    model = getattr(predictor, "model", None)
    if not isinstance(model, MultiHeadTagger):
        raise ExplainError("Grad-CAM needs the predictor's PyTorch model (load the model directory, not an export)")
    return model


def _group_from(taxonomy: Taxonomy, group: str | None, category: str | None) -> str | None:
    if group is not None and category is not None:
        raise ExplainError("pass group or category, not both")
    if group is not None:
        if group not in taxonomy.groups:
            raise ExplainError(f"unknown group {group!r}; the model's groups are {', '.join(taxonomy.groups)}")
        return group
    if category is not None:
        found = taxonomy.group_for(category)
        if found is None:
            raise ExplainError(f"category {category!r} maps to no group of this model's taxonomy")
        return found.name
    return None


def _needs_group(taxonomy: Taxonomy, names: Sequence[str] | None) -> bool:
    """Whether resolving ``names`` needs the image's group (all heads of it, or an ambiguous bare name)."""
    if names is None:
        return True
    keys = [key for key, _, _ in taxonomy.heads()]
    for raw in names:
        name = raw.strip().lower().replace("-", "_").replace(" ", "_")
        if name not in keys and sum(k.split(".", 1)[1] == name for k in keys) > 1:
            return True
    return False
