#!/usr/bin/env bash
# The GPU measurements as one prepared script: model-only EfficientNet-B0 at 224 px (untrained
# weights: speed does not depend on them) and the worker end to end, cold, through the embedded
# broker and Redis, writing JSON under $OUT (default ./gpu-results). Installs nothing from the
# network: on the GPU machine it installs the wheels of .whl/ (benchmarks/gpu-wheels.sh) into
# /tmp/site when they are there; elsewhere it uses the current Python (.venv's when present), so
# it runs on the CPU too, which is how it is kept working between GPU sessions.
#   bash benchmarks/gpu.sh              # full: about 6 minutes on a GPU
#   QUICK=1 bash benchmarks/gpu.sh      # a smoke run (CPU, CI-sized)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:/tmp/site" PY=python3
fi
if [ "${QUICK:-0}" = 1 ]; then
  SECONDS_PER=0.3 BATCHES=8 LISTINGS=60 BATCH_MAX=16 THREADS=2
else
  SECONDS_PER=3 BATCHES=32,128,256 LISTINGS=20000 BATCH_MAX=256 THREADS=12
fi
{
  echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c 'import torch, os; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "cpus", os.cpu_count())'
} 2>&1 | tee "$OUT/gpu-machine.txt"
status=0
echo "== model only"
timeout 240 "$PY" -m streams bench model --backbone efficientnet_b0 --image-size 224 --runtimes torch \
  --batch-sizes "$BATCHES" --seconds "$SECONDS_PER" --json "$OUT/gpu-model.json" 2>&1 | tee "$OUT/gpu-model.log" || status=1
echo "== pipeline, cold"
timeout 300 "$PY" -m streams bench pipeline --workload cold --listings "$LISTINGS" \
  --backbone efficientnet_b0 --image-size 224 \
  --set SWATCH_BATCH_MAX_SIZE="$BATCH_MAX" --set SWATCH_BATCH_MAX_IN_FLIGHT=4096 \
  --set SWATCH_WORKER_MAX_IMAGES_IN_FLIGHT=1024 --set SWATCH_WORKER_PREPROCESS_THREADS="$THREADS" \
  --set SWATCH_FETCH_PER_HOST_CONCURRENCY=256 \
  --json "$OUT/gpu-pipeline.json" 2>&1 | tee "$OUT/gpu-pipeline.log" || status=1
exit $status
