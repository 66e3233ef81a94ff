#!/usr/bin/env bash
# The default model's GPU recipe as one prepared script for a lent GPU machine: train with
# scripts/train_demo_model.sh's defaults (EfficientNet-B0, 224 px, 8,000 products, 60 epochs, about
# five minutes on one H200), calibrate on the validation split, evaluate on two clean held-out
# catalogs (seed 2, the training script's, and FRESH_SEED, 31, never trained on), and leave
# everything to bring back under $OUT/model (default ./gpu-model): weights.safetensors (fp16, ~8 MB),
# the calibrated model_card.json, heldout_eval.json, heldout_seed<FRESH_SEED>_eval.json, train.log.
#
#   bash scripts/gpu_train.sh                       # on the GPU machine (the device tool: OUT=$OUT)
#   mkdir -p tagger/models/demo && cp gpu-model/{weights.safetensors,model_card.json,heldout_eval.json} tagger/models/demo/
#
# Like benchmarks/gpu.sh it installs nothing from the network: where .whl/ holds wheels
# (benchmarks/gpu-wheels.sh) they go into /tmp/site; otherwise the current Python (.venv's when
# present) runs it, on the CPU too. Every variable of scripts/train_demo_model.sh passes through
# (N_TRAIN, EPOCHS, IMAGE_SIZE, TIME_BUDGET_S, ...); TIME_BUDGET_S defaults to 420 here so a run
# fits one 10-minute device call with its evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-model}
RUN=${RUN_DIR:-/tmp/swatch-gpu-train}
FRESH_SEED=${FRESH_SEED:-31}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site" PYTHON=python3
  fi
fi
export PYTHON RUN_DIR="$RUN" TIME_BUDGET_S=${TIME_BUDGET_S:-420}
mkdir -p "$OUT/model"
log="$OUT/model/train.log"
{
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
  bash scripts/train_demo_model.sh
  "$PYTHON" -m tagger calibrate --model "$RUN/model" --data "$RUN/train/manifest.csv" --split val
  "$PYTHON" -m tagger synth --n "${N_HELDOUT:-1500}" --seed "$FRESH_SEED" --missing-rate 0 --noise-rate 0 \
    --split test --out "$RUN/heldout-s$FRESH_SEED" --workers "${WORKERS:-$(nproc)}"
  "$PYTHON" -m tagger evaluate --model "$RUN/model" --data "$RUN/heldout/manifest.csv" --split test \
    --json "$OUT/model/heldout_eval.json"
  "$PYTHON" -m tagger evaluate --model "$RUN/model" --data "$RUN/heldout-s$FRESH_SEED/manifest.csv" --split test \
    --json "$OUT/model/heldout_seed${FRESH_SEED}_eval.json"
} 2>&1 | tee "$log"
cp "$RUN/model/weights.safetensors" "$RUN/model/model_card.json" "$OUT/model/"
echo "model directory in $OUT/model"
