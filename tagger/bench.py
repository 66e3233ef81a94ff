"""`swatch bench predict`: how fast the predictor runs, measured, not assumed.

Times preprocessing (decode + letterbox + normalise, per image on one CPU thread) and batched
inference (per batch size, after warm-up, with CUDA synchronisation), and writes the table as JSON.
"""

from __future__ import annotations

import io
import platform
import statistics
import time
from typing import Any

import torch
from PIL import Image, ImageDraw

from tagger.predict import Predictor


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


def bench_predict(
    predictor: Predictor, batch_sizes: tuple[int, ...] = (1, 8, 32, 64), seconds: float = 3.0
) -> dict[str, Any]:
    """Images per second for preprocessing and for inference at each batch size."""
    samples = [_sample_jpeg(i) for i in range(16)]
    started, count = time.perf_counter(), 0
    while time.perf_counter() - started < seconds / 2:
        predictor.preprocess(samples[count % len(samples)])
        count += 1
    preprocess_per_s = count / (time.perf_counter() - started)
    tensor = predictor.preprocess(samples[0])
    rows = []
    for batch_size in batch_sizes:
        batch = tensor.expand(batch_size, -1, -1, -1).contiguous()
        groups = ["apparel"] * batch_size
        for _ in range(3):
            predictor.predict(batch, groups)
        _sync(predictor.device)
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 3:
            t0 = time.perf_counter()
            predictor.predict(batch, groups)
            _sync(predictor.device)
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        rows.append(
            {
                "batch_size": batch_size,
                "batches": len(times),
                "median_batch_ms": round(median * 1000, 3),
                "images_per_s": round(batch_size / median, 1),
            }
        )
    return {
        "model_id": predictor.model_id,
        "device": str(predictor.device),
        "device_name": torch.cuda.get_device_name(predictor.device)
        if predictor.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "image_size": predictor.preprocess_config.image_size,
        "preprocess_images_per_s_one_thread": round(preprocess_per_s, 1),
        "inference": rows,
    }
