"""Model directories: weights plus ``model_card.json``, the model's identity and how to use it.

A model directory holds ``weights.safetensors`` (never a pickle: loading runs no code) and
``model_card.json`` with the name, version, the weights' SHA-256, ``model_id``
(``name@version+<first 8 hex of the hash>``), the backbone, the taxonomy, the preprocessing
parameters, per-head thresholds and temperatures, metrics, the resolved training configuration and
the creation time. Loading checks the hash, so a truncated or swapped weights file is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tagger.errors import TaggerError
from tagger.model import MultiHeadTagger
from tagger.preprocess import PreprocessConfig
from tagger.taxonomy import Taxonomy

CARD_FILE = "model_card.json"
WEIGHTS_FILE = "weights.safetensors"
CARD_FORMAT = 1
DEFAULT_THRESHOLD = 0.5
PACKAGED_MODELS_DIR = Path(__file__).resolve().parent / "models"  # model directories shipped in the wheel
DEMO_MODEL_DIR = PACKAGED_MODELS_DIR / "demo"


class ModelCardError(TaggerError):
    """A model directory is missing, incomplete or corrupt."""


def default_model_dir() -> Path:
    """The demo model shipped with Swatch (used wherever no model is named)."""
    if not (DEMO_MODEL_DIR / CARD_FILE).is_file():
        raise ModelCardError(f"the demo model is missing from {DEMO_MODEL_DIR}; reinstall swatch or pass --model DIR")
    return DEMO_MODEL_DIR


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelCard:
    """Everything needed to rebuild, identify and apply a trained model."""

    name: str
    version: str
    backbone: str
    taxonomy: dict[str, Any]
    preprocessing: dict[str, Any]
    weights_sha256: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    format: int = CARD_FORMAT

    @property
    def model_id(self) -> str:
        """``name@version+<8 hex of the weights hash>``: names the model in every output and cache key."""
        return f"{self.name}@{self.version}+{self.weights_sha256[:8]}"

    def taxonomy_obj(self) -> Taxonomy:
        """The taxonomy the model was trained with."""
        return Taxonomy.from_dict(self.taxonomy, source=f"model card of {self.name}")

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing the model expects."""
        return PreprocessConfig.from_dict(self.preprocessing)

    def threshold(self, head: str) -> float:
        """Acceptance threshold of a head (the default until calibration sets one)."""
        return float(self.thresholds.get(head, DEFAULT_THRESHOLD))

    def temperature(self, head: str) -> float:
        """Softmax/sigmoid temperature of a head (1.0 until calibration sets one)."""
        return float(self.temperatures.get(head, 1.0))

    def to_json(self) -> str:
        """The card as indented JSON, with model_id spelled out for readers."""
        return json.dumps({"model_id": self.model_id, **asdict(self)}, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = CARD_FILE) -> ModelCard:
        """Parse a card; unknown future fields are ignored, missing required ones are an error."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"{source}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelCardError(f"{source}: expected a JSON object")
        if data.get("format", CARD_FORMAT) > CARD_FORMAT:
            raise ModelCardError(f"{source}: card format {data['format']} is newer than this Swatch; upgrade swatch")
        known = set(cls.__dataclass_fields__)
        missing = {"name", "version", "backbone", "taxonomy", "preprocessing"} - set(data)
        if missing:
            raise ModelCardError(f"{source}: missing field(s) {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in known})


def save_model(model: MultiHeadTagger, card: ModelCard, directory: str | Path, *, half: bool = False) -> ModelCard:
    """Write weights and card; fills in the weights hash and returns the updated card."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    weights = directory / WEIGHTS_FILE
    tmp = weights.with_suffix(".tmp")
    # One metadata key only: safetensors writes the metadata map in hash order, so more keys would
    # make identical weights hash differently (and change the model id).
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(weights)
    card.weights_sha256 = sha256_file(weights)
    (directory / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
    return card


def read_card(directory: str | Path) -> ModelCard:
    """Read a model directory's card without loading weights."""
    path = Path(directory) / CARD_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelCardError(f"{directory} is not a model directory (no readable {CARD_FILE}): {exc}") from exc
    return ModelCard.from_json(text, str(path))


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[MultiHeadTagger, ModelCard]:
    """Rebuild the model from its card and load its weights (hash-checked, fp32 on the device)."""
    directory = Path(directory)
    card = read_card(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelCardError(f"{directory}: {WEIGHTS_FILE} is missing")
    actual = sha256_file(weights)
    if actual != card.weights_sha256:
        raise ModelCardError(
            f"{weights}: SHA-256 {actual[:12]}... does not match the card's {card.weights_sha256[:12]}...; "
            "the file is corrupt or belongs to another model"
        )
    model = MultiHeadTagger(card.taxonomy_obj(), card.backbone)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelCardError(f"{weights} does not fit {card.backbone} with this taxonomy: {exc}") from exc
    return model.to(device).eval(), card
