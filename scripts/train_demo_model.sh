#!/usr/bin/env bash
# Reproduces the demo model shipped in tagger/models/demo/: a synthetic training catalog, a
# separate held-out catalog (another seed, clean labels), training, held-out evaluation.
#
#   bash scripts/train_demo_model.sh            # with the project's .venv, or PYTHON=python3
#
# The defaults are EfficientNet-B0 at 224 px, sized for one GPU (about five minutes on an H200).
# The shipped demo model (EfficientNet-B0, 224 px) was trained on 2 CPU cores in six runs of this
# script, each starting from the previous one (INIT_FROM) at a growing image size; the README's
# "Training the demo model in stages on the CPU" has the exact commands and times, and each stage's
# model directory is in scripts/demo-model/stages/. On a GPU, scripts/gpu_train.sh runs the defaults
# with the calibration and held-out evaluations.
#
# A run stopped part-way (kill -TERM, Ctrl-C, a lost machine) continues with the same variables plus
# RESUME=1: training checkpoints after every epoch and every CHECKPOINT_EVERY_S seconds (120) within
# one, so a kill loses at most that; a TERM writes a checkpoint at the next batch and exits 75.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RUN=${RUN_DIR:-runs/demo}
N_TRAIN=${N_TRAIN:-8000}
N_HELDOUT=${N_HELDOUT:-1500}
BACKBONE=${BACKBONE:-efficientnet_b0}
IMAGE_SIZE=${IMAGE_SIZE:-224}
EPOCHS=${EPOCHS:-60}
BATCH=${BATCH:-128}
LR=${LR:-3e-3}
BUDGET=${TIME_BUDGET_S:-300}
WORKERS=${WORKERS:-$(nproc)}
LOADER_WORKERS=${LOADER_WORKERS:-4}
TRAIN_SEED=${TRAIN_SEED:-1}
NAME=${NAME:-swatch-b0}
INIT=()
if [ -n "${INIT_FROM:-}" ]; then INIT=(--init-from "$INIT_FROM"); fi
if [ -n "${CONFIG:-}" ]; then INIT+=(--config "$CONFIG"); fi
if [ "${OVERSAMPLE:-1}" = "0" ]; then INIT+=(--no-oversample); fi
if [ "${RESUME:-0}" = "1" ]; then INIT+=(--resume); fi
tagger() { "$PYTHON" -m tagger "$@"; }

# A resumed run keeps the catalogs it rendered (same seed, same products).
if [ "${RESUME:-0}" != "1" ] || [ ! -f "$RUN/train/manifest.csv" ]; then
  tagger synth --n "$N_TRAIN" --seed "$TRAIN_SEED" --out "$RUN/train" --workers "$WORKERS"
fi
if [ "${RESUME:-0}" != "1" ] || [ ! -f "$RUN/heldout/manifest.csv" ]; then
  tagger synth --n "$N_HELDOUT" --seed 2 --missing-rate 0 --noise-rate 0 --split test --out "$RUN/heldout" \
    --workers "$WORKERS"
fi
tagger train --data "$RUN/train/manifest.csv" --out "$RUN/model" --backbone "$BACKBONE" --image-size "$IMAGE_SIZE" \
  --epochs "$EPOCHS" --batch-size "$BATCH" --lr "$LR" --patience 12 --workers "$LOADER_WORKERS" --seed 0 \
  --name "$NAME" --version "${VERSION:-1.0.0}" --time-budget "$BUDGET" \
  --checkpoint-every "${CHECKPOINT_EVERY_S:-120}" "${INIT[@]}"
tagger evaluate --model "$RUN/model" --data "$RUN/heldout/manifest.csv" --split test --json "$RUN/heldout-eval.json" \
  --report "$RUN/heldout-report.html"
echo "model in $RUN/model; held-out report in $RUN/heldout-eval.json and $RUN/heldout-report.html"
echo "to ship it: mkdir -p tagger/models/demo && cp $RUN/model/{weights.safetensors,model_card.json} tagger/models/demo/"
