"""`swatch export` and the predictor's ONNX Runtime backend, on the tiny test model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import torch
from typer.testing import CliRunner

from tagger import export as export_module
from tagger.__main__ import app
from tagger.card import (
    CARD_FILE,
    DEMO_MODEL_DIR,
    WEIGHTS_FILE,
    ModelCard,
    ModelCardError,
    read_card,
    save_model,
    sha256_file,
)
from tagger.export import (
    EXPORT_FILES,
    INPUT_NAME,
    SIDECAR_FILE,
    TORCHSCRIPT_EXTRA_FILE,
    ExportError,
    ExportParityError,
    OnnxRunner,
    ProbabilityHeads,
    cache_dir,
    default_export_dir,
    export_model,
    is_current,
    read_record,
)
from tagger.model import TINY_BACKBONE, MultiHeadTagger
from tagger.predict import Predictor
from tagger.preprocess import PreprocessConfig
from tagger.taxonomy import Taxonomy
from tests.tagger.conftest import TINY_SIZE, jpeg

TOLERANCE = 1e-4
BATCH_SIZES = (1, 3, 5)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Exports of read-only model folders go to a cache under tmp, never the real home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, taxonomy: Taxonomy) -> Path:
    """A tiny model with calibrated temperatures (so the exports must bake them in), exported both ways."""
    torch.manual_seed(0)
    model = MultiHeadTagger(taxonomy, TINY_BACKBONE).eval()
    heads = [key for key, _, _ in taxonomy.heads()]
    card = ModelCard(
        name="tiny",
        version="0.0.1",
        backbone=TINY_BACKBONE,
        taxonomy=taxonomy.to_dict(),
        preprocessing=PreprocessConfig(image_size=TINY_SIZE).to_dict(),
        temperatures={key: 0.5 + 0.25 * (i % 5) for i, key in enumerate(heads)},
    )
    directory = tmp_path_factory.mktemp("export") / "model"
    save_model(model, card, directory)
    for fmt in ("onnx", "torchscript"):
        assert export_model(directory, fmt) == directory / EXPORT_FILES[fmt]
    return directory


@pytest.fixture(scope="module")
def torch_predictor(model_dir: Path) -> Predictor:
    return Predictor.load(model_dir, "cpu")


@pytest.fixture
def model_copy(model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the exported model folder, for tests that change it."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def _random(batch_size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(seed))


def _max_diff(a: list[dict[str, list[float]]], b: list[dict[str, list[float]]]) -> float:
    assert len(a) == len(b)
    worst = 0.0
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            worst = max(worst, *(abs(x - y) for x, y in zip(row_a[key], row_b[key], strict=True)))
    return worst


def _photos() -> list[bytes]:
    colours = [(200, 30, 30), (20, 20, 160), (240, 240, 240), (30, 120, 40), (90, 60, 20)]
    return [jpeg(c, shape="ellipse" if i % 2 else "rect") for i, c in enumerate(colours)]


def test_onnx_export_matches_pytorch_at_every_batch_size(model_dir: Path, torch_predictor: Predictor) -> None:
    path = model_dir / "model.onnx"
    graph = onnx.load(str(path)).graph
    opsets = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
    assert opsets[""] >= 17
    assert [i.name for i in graph.input] == [INPUT_NAME]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [3, TINY_SIZE, TINY_SIZE]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in graph.output] == list(torch_predictor.probabilities(_random(1))[0])

    runner = OnnxRunner(path, [o.name for o in graph.output], TINY_SIZE)
    for seed, batch_size in enumerate(BATCH_SIZES):
        images = _random(batch_size, seed)
        expected = torch_predictor.probabilities(images)
        outputs = runner(images)
        actual = [{k: v[i].tolist() for k, v in outputs.items()} for i in range(batch_size)]
        assert _max_diff(expected, actual) <= TOLERANCE, batch_size


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*deprecated:FutureWarning")
def test_torchscript_export_matches_pytorch_at_every_batch_size(model_dir: Path, torch_predictor: Predictor) -> None:
    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    module = torch.jit.load(str(model_dir / "model.torchscript.pt"), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra[TORCHSCRIPT_EXTRA_FILE])
    assert meta["model_id"] == torch_predictor.model_id
    heads = meta["head_keys"]
    assert heads == list(torch_predictor.probabilities(_random(1))[0])
    for seed, batch_size in enumerate(BATCH_SIZES):
        images = _random(batch_size, seed)
        with torch.inference_mode():
            outputs = dict(zip(heads, module(images), strict=True))
        actual = [{k: v[i].tolist() for k, v in outputs.items()} for i in range(batch_size)]
        assert _max_diff(torch_predictor.probabilities(images), actual) <= TOLERANCE, batch_size


def test_sidecar_ties_each_export_to_the_model_and_leaves_the_model_alone(model_dir: Path) -> None:
    card = read_card(model_dir)
    assert sha256_file(model_dir / WEIGHTS_FILE) == card.weights_sha256
    assert "export" not in (model_dir / CARD_FILE).read_text()
    sidecar = json.loads((model_dir / SIDECAR_FILE).read_text())
    assert set(sidecar["exports"]) == {"model.onnx", "model.torchscript.pt"}
    for fmt, name in EXPORT_FILES.items():
        record = read_record(model_dir / name)
        assert record is not None
        assert record.format == fmt
        assert record.model_id == card.model_id
        assert record.sha256 == sha256_file(model_dir / name)
        assert 0 <= record.max_abs_diff <= TOLERANCE
        assert is_current(model_dir / name, card, fmt)
    assert not list(model_dir.glob(".*.tmp"))


def test_onnx_predictor_matches_torch_predictor_on_real_images(model_dir: Path, torch_predictor: Predictor) -> None:
    predictor = Predictor.load(model_dir, "cpu", runtime="onnx")
    assert predictor.runtime == "onnx" and torch_predictor.runtime == "torch"
    assert predictor.model_id == torch_predictor.model_id
    assert predictor.taxonomy.to_dict() == torch_predictor.taxonomy.to_dict()
    assert predictor.card.model_id == torch_predictor.card.model_id
    photos = _photos()
    images = torch.stack([predictor.preprocess(p) for p in photos])
    assert torch.equal(images, torch.stack([torch_predictor.preprocess(p) for p in photos]))
    for batch in (images[:1], images[:3], images):
        assert _max_diff(predictor.probabilities(batch), torch_predictor.probabilities(batch)) <= TOLERANCE
    groups: list[str | None] = ["apparel", None, "footwear", "apparel", None]
    for a, b in zip(predictor.predict(images, groups), torch_predictor.predict(images, groups), strict=True):
        assert a.group == b.group and a.attributes.keys() == b.attributes.keys()
        for key, pa in a.attributes.items():
            pb = b.attributes[key]
            assert max(abs(pa.probabilities[v] - pb.probabilities[v]) for v in pa.probabilities) <= TOLERANCE
            assert abs(pa.confidence - pb.confidence) <= TOLERANCE


@pytest.mark.slow
def test_missing_export_of_read_only_model_is_made_in_the_cache(
    model_copy: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (model_copy / "model.onnx").unlink()
    card = read_card(model_copy)
    real_access = export_module.os.access
    monkeypatch.setattr(
        export_module.os,
        "access",
        lambda p, mode: False if Path(p).resolve() == model_copy.resolve() else real_access(p, mode),
    )
    predictor = Predictor.load(model_copy, "cpu", runtime="onnx")
    cached = cache_dir(card) / "model.onnx"
    assert cached.is_relative_to(private_cache)
    assert cached.is_file() and is_current(cached, card, "onnx")
    assert not (model_copy / "model.onnx").exists()
    images = _random(2)
    assert (
        _max_diff(predictor.probabilities(images), Predictor.load(model_copy, "cpu").probabilities(images)) <= TOLERANCE
    )
    mtime = cached.stat().st_mtime_ns
    Predictor.load(model_copy, "cpu", runtime="onnx")  # current now: used, not made again
    assert cached.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_stale_export_is_made_again_after_calibration(model_copy: Path) -> None:
    card = read_card(model_copy)
    card.temperatures = {key: 2.5 for key in card.temperatures}  # what `swatch calibrate` does: same weights, new card
    (model_copy / CARD_FILE).write_text(card.to_json())
    assert read_card(model_copy).model_id == card.model_id
    assert not is_current(model_copy / "model.onnx", card, "onnx")
    before = sha256_file(model_copy / "model.onnx")
    predictor = Predictor.load(model_copy, "cpu", runtime="onnx")
    assert sha256_file(model_copy / "model.onnx") != before
    assert is_current(model_copy / "model.onnx", card, "onnx")
    images = _random(3)
    assert (
        _max_diff(predictor.probabilities(images), Predictor.load(model_copy, "cpu").probabilities(images)) <= TOLERANCE
    )


def test_staleness_checks_model_id_and_file_hash(model_copy: Path) -> None:
    card = read_card(model_copy)
    path = model_copy / "model.onnx"
    assert is_current(path, card, "onnx")
    assert not is_current(path, card, "torchscript")
    sidecar = model_copy / SIDECAR_FILE
    original = sidecar.read_text()
    data = json.loads(original)
    data["exports"]["model.onnx"]["model_id"] = "other@1.0.0+deadbeef"
    sidecar.write_text(json.dumps(data))
    assert not is_current(path, card, "onnx")
    sidecar.write_text(original)
    with path.open("ab") as handle:
        handle.write(b"\0")
    assert not is_current(path, card, "onnx")
    sidecar.unlink()
    assert not is_current(path, card, "onnx")


def test_packaged_demo_model_exports_to_the_cache(private_cache: Path) -> None:
    card = read_card(DEMO_MODEL_DIR)
    assert default_export_dir(DEMO_MODEL_DIR, card) == cache_dir(card)
    assert cache_dir(card).is_relative_to(private_cache)


def test_export_refuses_a_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelCardError, match="does not exist"):
        export_model(tmp_path / "no-such-model", "onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelCardError, match="not a model directory"):
        export_model(tmp_path / "empty", "torchscript")


def test_export_refuses_an_unknown_format(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not one of"):
        export_model(model_dir, "tflite", tmp_path / "model.tflite")  # type: ignore[arg-type]


def test_parity_failure_leaves_nothing_behind(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "PARITY_TOLERANCE", -1.0)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportParityError, match="differs from PyTorch"):
        export_model(model_dir, "torchscript", out)
    assert list(out.iterdir()) == []


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("COLUMNS", "250")  # wide output: assertions look for whole paths and messages
    return CliRunner()


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def test_cli_export_prints_the_path_and_the_difference(
    model_dir: Path, tmp_path: Path, cli: CliRunner, fmt: str
) -> None:
    out = tmp_path / "exported" / f"tiny.{fmt}"
    result = cli.invoke(app, ["export", "--model", str(model_dir), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "max abs difference from PyTorch" in result.output
    record = read_record(out)
    assert record is not None and record.file == out.name and record.format == fmt
    assert record.sha256 == sha256_file(out) and record.max_abs_diff <= TOLERANCE
    assert json.loads((out.parent / SIDECAR_FILE).read_text())["exports"][out.name]["format"] == fmt


def test_cli_export_errors(model_dir: Path, tmp_path: Path, cli: CliRunner) -> None:
    bad = cli.invoke(app, ["export", "--model", str(tmp_path / "nope"), "--format", "onnx"])
    assert bad.exit_code == 1 and "does not exist" in bad.output
    bad = cli.invoke(app, ["export", "--model", str(model_dir), "--format", "tflite"])
    assert bad.exit_code == 1 and "tflite" in bad.output


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch's two OpenMP threads crawl on a busy two-core machine; the bench tests need no speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_cli_bench_both_runtimes_side_by_side(model_dir: Path, tmp_path: Path, cli: CliRunner) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "predict", "--model", str(model_dir), "--batch-sizes", "1,2", "--seconds", "0.1"]
    result = cli.invoke(app, [*args, "--runtime", "both", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "onnx/torch" in result.output
    data = json.loads(out.read_text())
    assert set(data["runtimes"]) == {"torch", "onnx"}
    assert data["runtimes"]["onnx"] == {"runtime": "onnx", "device": "cpu", "threads": 1}
    assert [row["batch_size"] for row in data["inference"]] == [1, 2]
    for row in data["inference"]:
        assert row["torch"]["images_per_s"] > 0 and row["onnx"]["images_per_s"] > 0
        ratio = row["torch"]["median_batch_ms"] / row["onnx"]["median_batch_ms"]
        assert row["onnx_vs_torch"] == pytest.approx(ratio, rel=0.01)

    single = cli.invoke(app, [*args, "--runtime", "onnx", "--json", str(tmp_path / "one.json")])
    assert single.exit_code == 0, single.output
    assert json.loads((tmp_path / "one.json").read_text())["runtime"] == "onnx"
    bad = cli.invoke(app, ["bench", "predict", "--runtime", "tensorrt"])
    assert bad.exit_code == 1 and "tensorrt" in bad.output


def test_onnx_runtime_refuses_cuda_and_unknown_runtimes(model_dir: Path) -> None:
    from tagger.errors import TaggerError

    with pytest.raises(TaggerError, match="CPU only"):
        Predictor.load(model_dir, "cuda", runtime="onnx")
    with pytest.raises(TaggerError, match="runtime 'tvm'"):
        Predictor.load(model_dir, "cpu", runtime="tvm")


def test_probability_heads_is_what_the_predictor_computes(model_dir: Path, torch_predictor: Predictor) -> None:
    wrapper = ProbabilityHeads(torch_predictor.model, torch_predictor.card).eval()
    images = _random(2, seed=7)
    with torch.inference_mode():
        outputs = dict(zip(wrapper.head_keys, wrapper(images), strict=True))
    actual = [{k: v[i].tolist() for k, v in outputs.items()} for i in range(2)]
    assert _max_diff(torch_predictor.probabilities(images), actual) <= 1e-6
