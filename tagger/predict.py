"""The predictor: the one interface the stream (and `swatch predict`) uses to run a model.

``Predictor.load(model_dir)`` rebuilds the model from its card on CUDA when present, else the CPU;
``runtime="onnx"`` runs it with ONNX Runtime on the CPU instead, from the model's ONNX export (made
on first use when missing or stale, see :mod:`tagger.export`), and ``runtime="auto"`` picks one
(:func:`resolve_runtime`: torch on CUDA, ONNX Runtime on the CPU when it is installed).
``predict(batch, groups)`` takes a batch of images preprocessed with the card's preprocessing and
returns, per image and applicable head, the probability of every value (temperature-scaled), the top
value and its confidence, and for multi-label heads the values at or above the head's threshold.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tagger.card import ModelCard, default_model_dir, load_model
from tagger.errors import TaggerError
from tagger.export import OnnxRunner, load_onnx_runner
from tagger.preprocess import PreprocessConfig, preprocess

logger = logging.getLogger(__name__)

Runtime = Literal["torch", "onnx"]
RUNTIMES: tuple[Runtime, ...] = ("torch", "onnx")
RUNTIME_CHOICES = ("auto", *RUNTIMES)  # what Predictor.load and SWATCH_MODEL_RUNTIME accept


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when asked for or when present under ``auto``; otherwise the CPU."""
    if requested not in ("auto", "cpu", "cuda"):
        raise TaggerError(f"device {requested!r} is not auto, cpu or cuda")
    if requested == "cuda" and not torch.cuda.is_available():
        raise TaggerError("device cuda was asked for but no CUDA device is visible; use auto or cpu")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def onnxruntime_installed() -> bool:
    """Whether ``onnxruntime`` can be imported (looked up without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_runtime(requested: str, device: str = "auto") -> Runtime:
    """The runtime to serve with for a requested one (auto, torch or onnx) and device (auto, cpu or cuda).

    ``auto`` is torch when the device is CUDA (asked for, or present under ``auto``), else ONNX
    Runtime when it is installed, else torch. ``onnx`` runs on the CPU only: with device ``cuda``,
    or without onnxruntime installed, it is a :class:`TaggerError`. The choice and why are logged.
    """
    if requested not in RUNTIME_CHOICES:
        raise TaggerError(f"runtime {requested!r} is not {', '.join(RUNTIME_CHOICES[:-1])} or {RUNTIME_CHOICES[-1]}")
    if requested == "torch":
        return "torch"
    if requested == "onnx":
        if device not in ("auto", "cpu"):
            raise TaggerError(f"the onnx runtime runs on the CPU only; use device cpu or auto, not {device!r}")
        if not onnxruntime_installed():
            raise TaggerError("runtime onnx was asked for but onnxruntime is not installed (the onnx extra)")
        if device == "auto" and torch.cuda.is_available():
            logger.warning("runtime onnx was asked for: serving on the CPU although a CUDA device is visible")
        return "onnx"
    target = pick_device(device)
    if target.type == "cuda":
        logger.info("runtime auto: torch, because the device is %s", target)
        return "torch"
    if onnxruntime_installed():
        logger.info("runtime auto: onnx, because the device is the CPU and onnxruntime is installed")
        return "onnx"
    logger.info("runtime auto: torch, because onnxruntime is not installed (the onnx extra adds it)")
    return "torch"


@dataclass(frozen=True)
class AttributePrediction:
    """One head's answer for one image."""

    group: str
    name: str
    probabilities: dict[str, float]
    top: str
    confidence: float
    multi_label: bool
    threshold: float
    values: tuple[str, ...] = field(default=())  # multi-label: values at or above the threshold

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        data: dict[str, Any] = {"top": self.top, "confidence": round(self.confidence, 6)}
        if self.multi_label:
            data["values"] = list(self.values)
        data["threshold"] = self.threshold
        data["probabilities"] = {k: round(v, 6) for k, v in self.probabilities.items()}
        return data


@dataclass(frozen=True)
class ImagePrediction:
    """All applicable heads for one image, keyed ``group.attribute``."""

    group: str | None
    attributes: dict[str, AttributePrediction]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {"group": self.group, "attributes": {k: v.to_dict() for k, v in self.attributes.items()}}


class Predictor:
    """Runs a loaded model on preprocessed batches, in inference mode, channels-last, AMP on GPU.

    With an ``onnx`` runner (see :meth:`load` with ``runtime="onnx"``) batches go through ONNX
    Runtime on the CPU instead; ``model`` stays the PyTorch model (for callers that need its layers).
    """

    def __init__(
        self, model: torch.nn.Module, card: ModelCard, device: torch.device, *, onnx: OnnxRunner | None = None
    ) -> None:
        if onnx is not None and device.type != "cpu":
            raise TaggerError(f"the onnx runtime runs on the CPU only, not {device}")
        self.card = card
        self.runtime: Runtime = "onnx" if onnx is not None else "torch"
        self._onnx = onnx
        self.device = device
        self.model = model.to(device).to(memory_format=torch.channels_last).eval()
        self.taxonomy = card.taxonomy_obj()
        self.preprocess_config: PreprocessConfig = card.preprocess_config()
        self._heads = {key: (group.name, attribute) for key, group, attribute in self.taxonomy.heads()}
        self._temps = {key: card.temperature(key) for key in self._heads}
        self._thresholds = {key: card.threshold(key) for key in self._heads}
        self._amp_dtype = (
            (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if device.type == "cuda" else None
        )

    @classmethod
    def load(cls, model_dir: str | Path | None = None, device: str = "auto", runtime: str = "torch") -> Predictor:
        """Load a model directory (the demo model when None) onto CUDA or the CPU.

        ``runtime="onnx"`` runs ONNX Runtime on the CPU (``device`` auto or cpu) with as many
        intra-op threads as torch uses, exporting the model first when its export is missing or stale;
        ``runtime="auto"`` decides with :func:`resolve_runtime`, and falls back to torch (with a
        warning) when the ONNX export cannot be made or loaded.
        """
        chosen = resolve_runtime(runtime, device)
        target = torch.device("cpu") if chosen == "onnx" else pick_device(device)
        directory = Path(model_dir) if model_dir else default_model_dir()
        model, card = load_model(directory, target)
        onnx = None
        if chosen == "onnx":
            try:
                onnx = load_onnx_runner(model, card, directory)
            except (TaggerError, ImportError, OSError) as exc:
                if runtime != "auto":
                    raise
                logger.warning("runtime auto: ONNX Runtime is unusable for %s (%s); using torch", card.model_id, exc)
                chosen = "torch"
        logger.info("loaded model %s on %s (%s)", card.model_id, target, chosen)
        return cls(model, card, target, onnx=onnx)

    @property
    def onnx_runner(self) -> OnnxRunner | None:
        """The ONNX Runtime session wrapper when ``runtime == "onnx"``, else None."""
        return self._onnx

    @property
    def threads(self) -> int:
        """CPU threads inference uses: ONNX Runtime's intra-op threads, or torch's."""
        return self._onnx.threads if self._onnx is not None else torch.get_num_threads()

    @property
    def model_id(self) -> str:
        """The loaded model's id (name@version+hash)."""
        return self.card.model_id

    def preprocess(self, data: bytes) -> torch.Tensor:
        """Encoded image bytes to the model's input tensor, with the card's preprocessing."""
        return preprocess(data, self.preprocess_config)

    def predict(self, images: torch.Tensor, groups: Sequence[str | None]) -> list[ImagePrediction]:
        """Predictions for a (B, 3, S, S) batch; ``groups`` names each image's group (None = all heads)."""
        if images.dim() != 4 or images.shape[0] != len(groups):
            raise ValueError(f"expected a (B, 3, S, S) batch with one group per image, got {tuple(images.shape)}")
        probs = self._probabilities(images)
        return [self._image(i, group, probs) for i, group in enumerate(groups)]

    def probabilities(self, images: torch.Tensor) -> list[dict[str, list[float]]]:
        """Per image, every head's calibrated probabilities (value order of the taxonomy): what the stream caches."""
        if images.dim() != 4:
            raise ValueError(f"expected a (B, 3, S, S) batch, got {tuple(images.shape)}")
        probs = self._probabilities(images)
        return [{key: probs[key][i].tolist() for key in self._heads} for i in range(images.shape[0])]

    @torch.inference_mode()
    def _probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._onnx is not None:
            return self._onnx(images)  # temperatures and softmax/sigmoid are in the exported graph
        batch = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self._amp_dtype is not None:
            with torch.autocast("cuda", dtype=self._amp_dtype):
                logits = self.model(batch)
        else:
            logits = self.model(batch)
        probs = {}
        for key, (_, attribute) in self._heads.items():
            scaled = logits[key].float() / self._temps[key]
            probs[key] = (torch.sigmoid(scaled) if attribute.multi_label else torch.softmax(scaled, dim=1)).cpu()
        return probs

    def _image(self, i: int, group: str | None, probs: dict[str, torch.Tensor]) -> ImagePrediction:
        attributes = {}
        for key, (head_group, attribute) in self._heads.items():
            if group is not None and head_group != group:
                continue
            row = probs[key][i].tolist()
            best = max(range(len(row)), key=row.__getitem__)
            threshold = self._thresholds[key]
            above = tuple(v for v, p in zip(attribute.values, row, strict=True) if p >= threshold)
            attributes[key] = AttributePrediction(
                group=head_group,
                name=attribute.name,
                probabilities=dict(zip(attribute.values, row, strict=True)),
                top=attribute.values[best],
                confidence=row[best],
                multi_label=attribute.multi_label,
                threshold=threshold,
                values=above if attribute.multi_label else (),
            )
        return ImagePrediction(group, attributes)
