"""`swatch export`: the model as ONNX or TorchScript, probabilities out, checked against PyTorch.

An export computes exactly what :meth:`tagger.predict.Predictor.probabilities` returns: every head's
probabilities after the card's temperatures (softmax for single-label heads, sigmoid for
multi-label ones), in fp32, for a batch of any size of images preprocessed with the card's
preprocessing (input ``images``, shape ``(N, 3, S, S)``, float32). ONNX outputs are named by head key
(``apparel.colour``); the TorchScript module returns a tuple in head-key order, and the order is
saved in the file (extra file ``swatch.json``) and in the sidecar.

Each export is verified right after it is written: a few random batches of different sizes go
through PyTorch and the export, and a probability differing by more than :data:`PARITY_TOLERANCE`
refuses the export (nothing is left in place). ``export.json`` next to the file records, per file,
its SHA-256, the ``model_id`` it came from and a digest of the card fields baked into it (taxonomy,
temperatures, input size): calibration changes temperatures without changing the weights, so the
model id alone cannot tell a stale export. The model directory itself is never modified unless the
export is written into it (``model.onnx`` / ``model.torchscript.pt`` and ``export.json`` only; never
the card or the weights).

Where no path is given, exports go next to the model when that folder is writable and is not the
demo model shipped inside the package, otherwise into ``$XDG_CACHE_HOME/swatch/exports`` (default
``~/.cache/swatch/exports``), one folder per model id and card digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from tagger.card import PACKAGED_MODELS_DIR, ModelCard, ModelCardError, default_model_dir, load_model, sha256_file
from tagger.errors import TaggerError

logger = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "torchscript"]
FORMATS: tuple[ExportFormat, ...] = ("onnx", "torchscript")
EXPORT_FILES: dict[ExportFormat, str] = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
SIDECAR_FILE = "export.json"
TORCHSCRIPT_EXTRA_FILE = "swatch.json"
INPUT_NAME = "images"
ONNX_OPSET = 18
PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZES = (1, 3)  # differ from the batch the export is traced with: exercises the dynamic batch
_TRACE_BATCH_SIZE = 2

Runner = Callable[[torch.Tensor], dict[str, torch.Tensor]]


class ExportError(TaggerError):
    """A model cannot be exported, or an export cannot be read or run."""


class ExportParityError(ExportError):
    """An export's probabilities differ from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class ExportRecord:
    """What ``export.json`` says about one exported file."""

    format: ExportFormat
    file: str
    sha256: str
    model_id: str
    card_digest: str
    head_keys: list[str]
    image_size: int
    max_abs_diff: float
    opset: int | None = None
    input_name: str = INPUT_NAME
    torch_version: str = field(default_factory=lambda: torch.__version__)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportRecord:
        """Parse one entry of the sidecar (unknown keys ignored)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class ProbabilityHeads(nn.Module):
    """The tagger plus the predictor's post-processing: images → per-head probabilities, head-key order."""

    def __init__(self, model: nn.Module, card: ModelCard) -> None:
        super().__init__()
        self.model = model
        heads = list(card.taxonomy_obj().heads())
        self.head_keys = [key for key, _, _ in heads]
        self.temperatures = [card.temperature(key) for key in self.head_keys]
        self.multi_label = [attribute.multi_label for _, _, attribute in heads]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Calibrated probabilities per head, each (N, number of values), fp32."""
        logits = self.model(images)
        out = []
        for key, temperature, multi_label in zip(self.head_keys, self.temperatures, self.multi_label, strict=True):
            scaled = logits[key].float() / temperature
            out.append(torch.sigmoid(scaled) if multi_label else torch.softmax(scaled, dim=1))
        return tuple(out)


def card_digest(card: ModelCard) -> str:
    """SHA-256 of the card fields an export bakes in: backbone, taxonomy, temperatures, input size."""
    heads = [key for key, _, _ in card.taxonomy_obj().heads()]
    fields = {
        "backbone": card.backbone,
        "taxonomy": card.taxonomy,
        "temperatures": {key: card.temperature(key) for key in heads},
        "image_size": card.preprocess_config().image_size,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/swatch`` (default ``~/.cache/swatch``): exports of read-only model folders."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "swatch"


def cache_dir(card: ModelCard) -> Path:
    """The cache folder for one model id and card digest."""
    safe_id = re.sub(r"[^A-Za-z0-9._-]+", "_", card.model_id)
    return cache_root() / "exports" / f"{safe_id}-{card_digest(card)[:8]}"


def default_export_dir(model_dir: Path, card: ModelCard) -> Path:
    """The model folder when it is writable and not shipped inside the package; else the cache folder."""
    resolved = model_dir.resolve()
    if os.access(resolved, os.W_OK) and not resolved.is_relative_to(PACKAGED_MODELS_DIR):
        return resolved
    return cache_dir(card)


def read_record(path: Path) -> ExportRecord | None:
    """The sidecar's entry for an exported file, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((path.parent / SIDECAR_FILE).read_text(encoding="utf-8"))
        return ExportRecord.from_dict(data["exports"][path.name])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_current(path: Path, card: ModelCard, fmt: ExportFormat) -> bool:
    """True when ``path`` exists and the sidecar ties it, by hash, to this model id and card."""
    record = read_record(path)
    return (
        record is not None
        and record.format == fmt
        and record.model_id == card.model_id
        and record.card_digest == card_digest(card)
        and path.is_file()
        and sha256_file(path) == record.sha256
    )


def export_model(model_dir: str | Path | None, fmt: ExportFormat, out: Path | None = None) -> Path:
    """Export a model directory (the demo model when None); returns the written file's path.

    ``out`` may be a file or an existing folder; without it the export goes to
    :func:`default_export_dir`. Raises :class:`ExportParityError` when the export does not match
    PyTorch within :data:`PARITY_TOLERANCE`.
    """
    return export_model_record(model_dir, fmt, out)[0]


def export_model_record(
    model_dir: str | Path | None, fmt: ExportFormat, out: Path | None = None
) -> tuple[Path, ExportRecord]:
    """Like :func:`export_model`, also returning the sidecar record (hash, measured difference)."""
    directory = Path(model_dir) if model_dir is not None else default_model_dir()
    if not directory.is_dir():
        raise ModelCardError(f"model directory {directory} does not exist")
    model, card = load_model(directory, "cpu")
    if out is None:
        target = default_export_dir(directory, card) / EXPORT_FILES[fmt]
    elif out.is_dir():
        target = out / EXPORT_FILES[fmt]
    else:
        target = out
    record = export_loaded(model, card, fmt, target)
    return target, record


def export_loaded(model: nn.Module, card: ModelCard, fmt: ExportFormat, path: Path) -> ExportRecord:
    """Export an already loaded model to ``path``, verify it, and record it in the sidecar there."""
    if fmt not in FORMATS:
        raise ExportError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    wrapper = ProbabilityHeads(model.to("cpu").float(), card).eval()
    size = card.preprocess_config().image_size
    example = torch.randn(_TRACE_BATCH_SIZE, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {path.parent}: {exc}") from exc
    with _temporary_beside(path) as tmp:
        if fmt == "onnx":
            _write_onnx(wrapper, example, tmp)
            diff = max_abs_diff(wrapper, OnnxRunner(tmp, wrapper.head_keys, size), size)
        else:
            _write_torchscript(wrapper, example, tmp, card)
            diff = max_abs_diff(wrapper, _torchscript_runner(tmp, wrapper.head_keys), size)
        if not diff <= PARITY_TOLERANCE:  # also refuses NaN
            raise ExportParityError(
                f"{fmt} export of {card.model_id} differs from PyTorch by {diff:.3g} (tolerance {PARITY_TOLERANCE:g})"
            )
        record = ExportRecord(
            format=fmt,
            file=path.name,
            sha256=sha256_file(tmp),
            model_id=card.model_id,
            card_digest=card_digest(card),
            head_keys=wrapper.head_keys,
            image_size=size,
            max_abs_diff=diff,
            opset=ONNX_OPSET if fmt == "onnx" else None,
        )
        tmp.replace(path)
    _write_record(path, record)
    logger.info("exported %s as %s to %s (max abs diff %.2g)", card.model_id, fmt, path, diff)
    return record


def max_abs_diff(
    wrapper: ProbabilityHeads, runner: Runner, image_size: int, batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES
) -> float:
    """Largest probability difference between PyTorch and ``runner`` on seeded random batches."""
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    with torch.inference_mode():
        for batch_size in batch_sizes:
            images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
            expected = dict(zip(wrapper.head_keys, wrapper(images), strict=True))
            actual = runner(images)
            for key, probs in expected.items():
                if actual[key].shape != probs.shape:
                    raise ExportError(f"export output {key} has shape {tuple(actual[key].shape)}, not {probs.shape}")
                worst = max(worst, float((actual[key].float() - probs).abs().max()))
    return worst


class OnnxRunner:
    """An ONNX Runtime session on the CPU: (N, 3, S, S) float32 images → probabilities per head key."""

    def __init__(self, path: Path, head_keys: list[str], image_size: int, threads: int | None = None) -> None:
        import onnxruntime as ort  # noqa: PLC0415 - heavy, and only needed for this backend

        options = ort.SessionOptions()
        self.threads = threads or torch.get_num_threads()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        # Idle intra-op threads sleep instead of spinning: in the worker they share the cores with
        # decoding and the event loop, and spinning took them (worker cold, 2 cores: +19 % listings/s
        # with spinning off, BENCHMARKS.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own (non-exported) exception types
            raise ExportError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self.path = path
        self.head_keys = head_keys
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or outputs != head_keys:
            raise ExportError(
                f"{path} has inputs {inputs} and outputs {outputs}; expected [{INPUT_NAME}] and the heads"
            )
        self.image_size = image_size

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run a batch; outputs are CPU tensors."""
        array = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        try:
            results = self.session.run(None, {INPUT_NAME: array})
        except Exception as exc:  # ORT raises its own (non-exported) exception types
            raise ExportError(f"ONNX Runtime failed on a batch of shape {tuple(images.shape)}: {exc}") from exc
        return {key: torch.from_numpy(value) for key, value in zip(self.head_keys, results, strict=True)}


def ensure_onnx(model: nn.Module, card: ModelCard, model_dir: Path) -> Path:
    """A current ONNX export of this model: next to it, else in the cache, else exported now."""
    candidates = [model_dir / EXPORT_FILES["onnx"], cache_dir(card) / EXPORT_FILES["onnx"]]
    for candidate in candidates:
        if is_current(candidate, card, "onnx"):
            return candidate
    target = default_export_dir(model_dir, card) / EXPORT_FILES["onnx"]
    reason = "stale" if target.exists() else "missing"
    logger.info("ONNX export of %s is %s; exporting to %s", card.model_id, reason, target)
    export_loaded(model, card, "onnx", target)
    return target


def load_onnx_runner(model: nn.Module, card: ModelCard, model_dir: Path) -> OnnxRunner:
    """An ONNX Runtime session for a loaded model, exporting it first when needed."""
    path = ensure_onnx(model, card, model_dir)
    heads = [key for key, _, _ in card.taxonomy_obj().heads()]
    return OnnxRunner(path, heads, card.preprocess_config().image_size)


def _torchscript_runner(path: Path, head_keys: list[str]) -> Runner:
    with _quiet_jit():
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]

    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(head_keys, module(images), strict=True))

    return run


def _write_onnx(wrapper: ProbabilityHeads, example: torch.Tensor, path: Path) -> None:
    from torch.export import Dim  # noqa: PLC0415 - torch.export is only needed here

    try:
        with torch.inference_mode(False):
            program = torch.onnx.export(
                wrapper,
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=wrapper.head_keys,
                opset_version=ONNX_OPSET,
                dynamo=True,
                dynamic_shapes={"images": {0: Dim("batch", min=1)}},
                external_data=False,
                verbose=False,
            )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        program.save(str(path), external_data=False)
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"ONNX export failed: {exc}") from exc


def _write_torchscript(wrapper: ProbabilityHeads, example: torch.Tensor, path: Path, card: ModelCard) -> None:
    meta = {"model_id": card.model_id, "head_keys": wrapper.head_keys, "input_name": INPUT_NAME}
    try:
        with torch.inference_mode(False), torch.no_grad(), _quiet_jit():
            traced = torch.jit.trace(wrapper, example, strict=True, check_trace=False)  # type: ignore[no-untyped-call]
            torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA_FILE: json.dumps(meta)})
    except Exception as exc:  # tracing raises many unrelated types
        raise ExportError(f"TorchScript export failed: {exc}") from exc


def _write_record(path: Path, record: ExportRecord) -> None:
    sidecar = path.parent / SIDECAR_FILE
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        exports = data["exports"] if isinstance(data, dict) and isinstance(data.get("exports"), dict) else {}
    except (OSError, ValueError):
        exports = {}
    exports[path.name] = asdict(record)
    with _temporary_beside(sidecar) as tmp:
        tmp.write_text(json.dumps({"exports": exports}, indent=2) + "\n", encoding="utf-8")
        tmp.replace(sidecar)


@contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary file name in the target's folder (same file system, so replace() is atomic)."""
    # Not mkstemp: its files are private (0600), and an export is read by other users' workers.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """TorchScript is deprecated in favour of torch.export; `--format torchscript` is asked for knowingly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated")
        yield
