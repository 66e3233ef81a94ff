"""GPU checks for a trained model: CUDA vs CPU agreement on real (held-out) images, and throughput.

Run on a machine with a CUDA device:  python3 scripts/gpu_check.py MODEL_DIR HELDOUT_MANIFEST OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tagger.bench import bench_predict
from tagger.manifest import read_manifest
from tagger.predict import Predictor


def main(model_dir: str, manifest: str, out: str) -> None:
    """Compare CUDA (bf16 autocast) with CPU (fp32) predictions and benchmark both."""
    cpu, gpu = Predictor.load(model_dir, "cpu"), Predictor.load(model_dir, "cuda")
    items = read_manifest(manifest)[:256]
    root = Path(manifest).parent
    batch = torch.stack([cpu.preprocess(Path(i.image_location(root)).read_bytes()) for i in items])
    groups = [g.name if (g := cpu.taxonomy.group_for(i.category)) else None for i in items]
    agree = total = 0
    max_diff = 0.0
    for a, b in zip(cpu.predict(batch, groups), gpu.predict(batch, groups), strict=True):
        for key, pa in a.attributes.items():
            pb = b.attributes[key]
            total += 1
            agree += pa.top == pb.top
            max_diff = max(max_diff, *(abs(pa.probabilities[v] - pb.probabilities[v]) for v in pa.probabilities))
    result = {
        "images": len(items),
        "top_value_agreement": agree / total,
        "max_abs_probability_diff": max_diff,
        "bench_cuda": bench_predict(gpu, (1, 8, 32, 64, 128), seconds=2.0),
        "bench_cpu": bench_predict(cpu, (1, 8, 32), seconds=2.0),
    }
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("bench")}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
