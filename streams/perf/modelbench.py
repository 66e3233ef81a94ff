"""`swatch bench model`: the model alone, per runtime, thread count and batch size, on preprocessed tensors.

Each configuration calls what the worker's model thread calls (``Predictor.probabilities`` on a
stacked batch, lists of floats out), after warm-up. Configurations take turns in short slices until
each has run for ``seconds``, so load from other processes hits them alike. The best images/s over
all configurations is the ceiling ``bench pipeline`` is compared with.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streams.perf.procfs import CpuWindow
from tagger.predict import Predictor

logger = logging.getLogger(__name__)


@dataclass
class _Config:
    runtime: str
    threads: int
    batch_size: int
    run: Callable[[], object]
    times: list[float]


def available_runtimes() -> list[str]:
    """torch, and onnx when ONNX Runtime is installed."""
    import importlib.util  # noqa: PLC0415

    return ["torch", "onnx"] if importlib.util.find_spec("onnxruntime") is not None else ["torch"]


def _predictors(
    model_dir: Path | None, device: str, runtimes: Sequence[str], threads: Sequence[int]
) -> dict[tuple[str, int], Predictor]:
    from tagger.export import OnnxRunner  # noqa: PLC0415

    out: dict[tuple[str, int], Predictor] = {}
    if "torch" in runtimes:
        base = Predictor.load(model_dir, device, "torch")
        for n in threads if base.device.type == "cpu" else threads[:1]:
            out[("torch", n)] = base
    if "onnx" in runtimes:
        onnx = Predictor.load(model_dir, "cpu", "onnx")
        runner = onnx.onnx_runner
        if runner is None:
            raise RuntimeError("the onnx predictor has no ONNX Runtime session")
        heads = [key for key, _, _ in onnx.taxonomy.heads()]
        for n in threads:
            session = OnnxRunner(runner.path, heads, runner.image_size, threads=n)
            out[("onnx", n)] = Predictor(onnx.model, onnx.card, onnx.device, onnx=session)
    return out


def bench_model(
    model_dir: Path | None = None,
    *,
    device: str = "auto",
    runtimes: Sequence[str] | None = None,
    threads: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = (1, 8, 32),
    seconds: float = 3.0,
    images: Sequence[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Images/s per (runtime, threads, batch size); ``best`` is the fastest configuration."""
    import os  # noqa: PLC0415

    cores = len(os.sched_getaffinity(0))
    runtimes = list(runtimes or available_runtimes())
    threads = sorted(set(threads or {1, cores}))
    predictors = _predictors(model_dir, device, runtimes, threads)
    first = next(iter(predictors.values()))
    samples = list(images) if images else [_sample(first, i) for i in range(8)]
    configs = []
    for (runtime, n), predictor in predictors.items():
        for size in batch_sizes:
            batch = torch.stack([samples[i % len(samples)] for i in range(size)])
            configs.append(_Config(runtime, n, size, _caller(predictor, batch, n), []))
    torch_threads = torch.get_num_threads()
    try:
        cpu = _take_turns(configs, seconds)
    finally:
        torch.set_num_threads(torch_threads)  # the torch configurations set their own
    rows = [_row(c) for c in configs]
    best = max(rows, key=lambda r: r["images_per_s"])
    torch_rows = [r for r in rows if r["runtime"] == "torch"]
    return {
        "benchmark": "model",
        "model_id": first.model_id,
        "device": str(first.device),
        "image_size": first.preprocess_config.image_size,
        "rows": rows,
        "best": best,
        "best_torch": max(torch_rows, key=lambda r: r["images_per_s"]) if torch_rows else None,
        "cpu": cpu,
    }


def _take_turns(configs: list[_Config], seconds: float) -> dict[str, float]:
    """Warm every configuration up, then let them take turns until each ran ``seconds``; the CPU used."""
    window = CpuWindow()
    window.start()
    for config in configs:  # warm-up: first calls allocate and (ONNX Runtime) plan
        for _ in range(2):
            config.run()
    turn = max(0.1, seconds / 8)
    while any(sum(c.times) < seconds or len(c.times) < 3 for c in configs):
        for config in configs:
            if sum(config.times) >= seconds and len(config.times) >= 3:
                continue
            turn_end = time.perf_counter() + turn
            while True:
                started = time.perf_counter()
                config.run()
                config.times.append(time.perf_counter() - started)
                if time.perf_counter() >= turn_end:
                    break
    return window.stop()


def _caller(predictor: Predictor, batch: torch.Tensor, threads: int) -> Callable[[], object]:
    if predictor.runtime == "torch" and predictor.device.type == "cpu":

        def run() -> object:
            torch.set_num_threads(threads)
            return predictor.probabilities(batch)

        return run
    return lambda: predictor.probabilities(batch)  # on CUDA, .tolist() synchronises


def _row(config: _Config) -> dict[str, Any]:
    median = statistics.median(config.times)
    return {
        "runtime": config.runtime,
        "threads": config.threads,
        "batch_size": config.batch_size,
        "batches": len(config.times),
        "median_batch_ms": round(median * 1000, 2),
        "images_per_s": round(config.batch_size / median, 1),
    }


def _sample(predictor: Predictor, index: int) -> torch.Tensor:
    from tagger.bench import _sample_jpeg  # noqa: PLC0415

    return predictor.preprocess(_sample_jpeg(index))
