"""`swatch bench predict`: how fast the predictor runs, measured, not assumed.

Times preprocessing (decode + letterbox + normalise, per image on one CPU thread) and batched
inference (per batch size, after warm-up, with CUDA synchronisation), and writes the table as JSON.
:func:`bench_runtimes` times several predictors (PyTorch and ONNX Runtime) on the same batches,
interleaved in short slices so that load from other processes hits them alike, with the throughput
ratio of each to the first.
"""

from __future__ import annotations

import io
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from PIL import Image, ImageDraw

from tagger.model import MultiHeadTagger
from tagger.predict import Predictor
from tagger.preprocess import PreprocessConfig
from tagger.taxonomy import load_taxonomy
from tagger.train import train_step


def _sample_jpeg(index: int, size: tuple[int, int] = (600, 800)) -> bytes:
    """A product-photo-sized JPEG (white background, coloured garment-like shape)."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    colour = ((index * 67) % 256, (index * 131) % 256, (index * 29) % 256)
    draw.polygon([(150, 120), (450, 120), (520, 700), (80, 700)], fill=colour)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88)
    return out.getvalue()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _preprocess_rate(predictor: Predictor, samples: list[bytes], seconds: float) -> float:
    started, count = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        predictor.preprocess(samples[count % len(samples)])
        count += 1
    return count / (time.perf_counter() - started)


def _timed(predictor: Predictor, batch: torch.Tensor, groups: list[str | None]) -> float:
    t0 = time.perf_counter()
    predictor.predict(batch, groups)
    _sync(predictor.device)
    return time.perf_counter() - t0


def _stats(batch_size: int, times: list[float]) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "batches": len(times),
        "median_batch_ms": round(median * 1000, 3),
        "images_per_s": round(batch_size / median, 1),
    }


def _header(predictor: Predictor, preprocess_per_s: float) -> dict[str, Any]:
    return {
        "model_id": predictor.model_id,
        "device": str(predictor.device),
        "device_name": torch.cuda.get_device_name(predictor.device)
        if predictor.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "image_size": predictor.preprocess_config.image_size,
        "preprocess_images_per_s_one_thread": round(preprocess_per_s, 1),
    }


def bench_predict(
    predictor: Predictor, batch_sizes: tuple[int, ...] = (1, 8, 32, 64), seconds: float = 3.0
) -> dict[str, Any]:
    """Images per second for preprocessing and for inference at each batch size."""
    samples = [_sample_jpeg(i) for i in range(16)]
    preprocess_per_s = _preprocess_rate(predictor, samples, seconds / 2)
    tensor = predictor.preprocess(samples[0])
    rows = []
    for batch_size in batch_sizes:
        batch = tensor.expand(batch_size, -1, -1, -1).contiguous()
        groups: list[str | None] = ["apparel"] * batch_size
        for _ in range(3):
            predictor.predict(batch, groups)
        _sync(predictor.device)
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 3:
            times.append(_timed(predictor, batch, groups))
        rows.append({"batch_size": batch_size, **_stats(batch_size, times)})
    return {**_header(predictor, preprocess_per_s), "runtime": predictor.runtime, "inference": rows}


def bench_runtimes(
    predictors: Mapping[str, Predictor], batch_sizes: tuple[int, ...] = (1, 8, 32, 64), seconds: float = 3.0
) -> dict[str, Any]:
    """Several predictors (e.g. ``{"torch": ..., "onnx": ...}``) side by side on the same batches.

    Per batch size each predictor is warmed up, then they take turns in slices of a fraction of
    ``seconds`` until each has run for ``seconds``. Each row has every predictor's stats under its
    name and ``<name>_vs_<first>``: its throughput divided by the first predictor's (above 1 = faster).
    """
    if not predictors:
        raise ValueError("no predictors to compare")
    names = list(predictors)
    first = predictors[names[0]]
    samples = [_sample_jpeg(i) for i in range(16)]
    preprocess_per_s = _preprocess_rate(first, samples, seconds / 2)
    tensor = first.preprocess(samples[0])
    turn = max(0.1, seconds / 6)
    rows = []
    for batch_size in batch_sizes:
        batch = tensor.expand(batch_size, -1, -1, -1).contiguous()
        groups: list[str | None] = ["apparel"] * batch_size
        for predictor in predictors.values():
            for _ in range(3):
                predictor.predict(batch, groups)
            _sync(predictor.device)
        times: dict[str, list[float]] = {name: [] for name in names}
        while any(sum(times[name]) < seconds or len(times[name]) < 3 for name in names):
            for name, predictor in predictors.items():
                if sum(times[name]) >= seconds and len(times[name]) >= 3:
                    continue
                turn_end = time.perf_counter() + turn
                times[name].append(_timed(predictor, batch, groups))
                while time.perf_counter() < turn_end:
                    times[name].append(_timed(predictor, batch, groups))
        row: dict[str, Any] = {"batch_size": batch_size}
        for name in names:
            row[name] = _stats(batch_size, times[name])
        base = statistics.median(times[names[0]])
        for name in names[1:]:
            row[f"{name}_vs_{names[0]}"] = round(base / statistics.median(times[name]), 3)
        rows.append(row)
    return {
        **_header(first, preprocess_per_s),
        "runtimes": {name: _runtime_info(p) for name, p in predictors.items()},
        "inference": rows,
    }


def _runtime_info(predictor: Predictor) -> dict[str, Any]:
    onnx = predictor.onnx_runner
    threads = onnx.threads if onnx is not None else torch.get_num_threads()
    return {"runtime": predictor.runtime, "device": str(predictor.device), "threads": threads}


# -- training throughput ----------------------------------------------------------------------


def _train_step_fn(
    backbone: str, image_size: int, batch_size: int, device: torch.device, seed: int
) -> tuple[MultiHeadTagger, Callable[[], None]]:
    """A fresh model and a closure running one real training step on it (:func:`tagger.train.train_step`)
    with one fixed batch of random pixels and labels."""
    taxonomy = load_taxonomy()
    generator = torch.Generator().manual_seed(seed)
    model = MultiHeadTagger(taxonomy, backbone).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    config = PreprocessConfig(image_size=image_size)
    pixels = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
    pixels = pixels.to(device)
    targets: dict[str, torch.Tensor] = {}
    for key, _, attribute in taxonomy.heads():
        if attribute.multi_label:
            targets[key] = (torch.rand(batch_size, attribute.size, generator=generator) < 0.3).float().to(device)
        else:
            targets[key] = torch.randint(0, attribute.size, (batch_size,), generator=generator).to(device)

    def step() -> None:
        train_step(
            model,
            optimizer,
            pixels,
            targets,
            taxonomy=taxonomy,
            config=config,
            generator=generator,
            label_smoothing=0.05,
        )
        _sync(device)

    return model, step


def bench_train(
    configs: list[tuple[str, int]],
    device: torch.device,
    *,
    batch_size: int = 32,
    rounds: int = 3,
    steps_per_round: int = 2,
    images_per_run: int = 0,
) -> dict[str, Any]:
    """Training images per second for each (backbone, image size), measured side by side.

    Every configuration runs ``steps_per_round`` steps per round, round-robin, so load from other
    processes hits them alike; the first step of each (warm-up) is not timed. ``images_per_run``
    (training images times epochs), when given, turns each rate into the hours such a run would take.
    """
    runs: list[dict[str, Any]] = []
    for backbone, size in configs:
        model, step = _train_step_fn(backbone, size, batch_size, device, seed=len(runs))
        step()  # warm-up: allocations, cudnn autotuning
        parameters = sum(p.numel() for p in model.parameters())
        runs.append({"backbone": backbone, "image_size": size, "parameters": parameters, "step": step, "times": []})
    for _ in range(rounds):
        for run in runs:
            for _ in range(steps_per_round):
                t0 = time.perf_counter()
                run["step"]()
                run["times"].append(time.perf_counter() - t0)
    rows = []
    for run in runs:
        median = statistics.median(run["times"])
        row = {
            "backbone": run["backbone"],
            "image_size": run["image_size"],
            "parameters": run["parameters"],
            "steps": len(run["times"]),
            "median_step_s": round(median, 4),
            "images_per_s": round(batch_size / median, 2),
        }
        if images_per_run:
            row["hours_per_run"] = round(images_per_run / row["images_per_s"] / 3600, 2)
        rows.append(row)
    first = rows[0]["images_per_s"]
    for row in rows:
        row["relative_to_first"] = round(row["images_per_s"] / first, 3)
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "images_per_run": images_per_run,
        "results": rows,
    }
