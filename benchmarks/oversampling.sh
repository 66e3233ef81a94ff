#!/usr/bin/env bash
# The effect of augmentation-based oversampling, side by side: the same synthetic training catalog,
# seed, backbone and schedule, trained three ways, each evaluated on one clean held-out catalog
# (another seed):
#
#   on        oversampling on (the default): rare values repeated, repeats augmented harder
#   off       --no-oversample, the same number of epochs (fewer images seen)
#   off-long  --no-oversample, epochs raised so it sees as many images as "on" (equal compute)
#
#   bash benchmarks/oversampling.sh
#
# Prints, per head, macro-F1 and the F1 of the rarest value (scripts/compare_evals.py), on vs off and
# on vs off-long, and writes RUN_DIR/oversampling.json and RUN_DIR/results.md. The defaults fit the
# 2-core development machine (about 40 minutes for the three runs); on a GPU, e.g.
#   BACKBONE=efficientnet_b0 IMAGE_SIZE=224 N_TRAIN=8000 EPOCHS=30 BATCH=128 LOADER_WORKERS=4
#
#   N_TRAIN 3000, N_HELDOUT 1500, BACKBONE resnet10t, IMAGE_SIZE 128, EPOCHS 12, BATCH 32, LR 2e-3,
#   LOADER_WORKERS 0, RUN_DIR runs/oversampling, ARMS "on off off-long"
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RUN=${RUN_DIR:-runs/oversampling}
N_TRAIN=${N_TRAIN:-3000}
N_HELDOUT=${N_HELDOUT:-1500}
BACKBONE=${BACKBONE:-resnet10t}
IMAGE_SIZE=${IMAGE_SIZE:-128}
EPOCHS=${EPOCHS:-12}
BATCH=${BATCH:-32}
LR=${LR:-2e-3}
LOADER_WORKERS=${LOADER_WORKERS:-0}
ARMS=${ARMS:-on off off-long}
tagger() { "$PYTHON" -m tagger "$@"; }
step() { echo; echo "== $* ($(date +%H:%M:%S))"; }
started=$SECONDS

step "synthetic catalogs: $N_TRAIN training products (seed 1), $N_HELDOUT held-out (seed 2, clean labels)"
[ -f "$RUN/train/manifest.csv" ] || tagger synth --n "$N_TRAIN" --seed 1 --out "$RUN/train" --workers "$(nproc)"
[ -f "$RUN/heldout/manifest.csv" ] ||
  tagger synth --n "$N_HELDOUT" --seed 2 --missing-rate 0 --noise-rate 0 --split test --out "$RUN/heldout" --workers "$(nproc)"

arm() {  # NAME EPOCHS [train flags...]
  local name=$1 epochs=$2
  shift 2
  step "$name: $epochs epochs $*"
  rm -rf "${RUN:?}/$name"
  tagger train --data "$RUN/train/manifest.csv" --out "$RUN/$name/model" --backbone "$BACKBONE" \
    --image-size "$IMAGE_SIZE" --epochs "$epochs" --batch-size "$BATCH" --lr "$LR" --patience 1000 \
    --workers "$LOADER_WORKERS" --seed 0 --name "oversampling-$name" "$@" 2>&1 | tee "$RUN/$name.log" |
    grep -E "best epoch|draws per epoch|rror" || true
  tagger evaluate --model "$RUN/$name/model" --data "$RUN/heldout/manifest.csv" --split test \
    --json "$RUN/$name/heldout-eval.json" >/dev/null
}

for name in $ARMS; do
  case $name in
    on) arm on "$EPOCHS" --oversample ;;
    off) arm off "$EPOCHS" --no-oversample ;;
    off-long)
      # as many draws as the oversampled run: epochs x (items + extra draws) / items
      # (the 'on' arm's log says "D draws per epoch over N items")
      seen=$(tr -s ' \n' ' ' <"$RUN/on.log" | grep -oE "[0-9]+ draws per epoch over [0-9]+ items" | tail -1 || true)
      [ -n "$seen" ] || { echo "off-long needs the 'on' arm's log ($RUN/on.log)"; exit 1; }
      long=$(echo "$seen" | awk -v e="$EPOCHS" '{printf "%d", e * $1 / $6 + 0.5}')
      arm off-long "$long" --no-oversample
      ;;
    *) echo "unknown arm $name (on, off, off-long)"; exit 2 ;;
  esac
done

step "held-out results"
{
  echo "$BACKBONE, ${IMAGE_SIZE}px, $N_TRAIN products, $EPOCHS epochs, seed 0"
  if [ -f "$RUN/off/heldout-eval.json" ]; then
    echo
    echo "Oversampling on vs off, the same number of epochs:"
    echo
    "$PYTHON" scripts/compare_evals.py on="$RUN/on/heldout-eval.json" off="$RUN/off/heldout-eval.json" \
      --json "$RUN/oversampling.json"
  fi
  if [ -f "$RUN/off-long/heldout-eval.json" ]; then
    echo
    echo "Oversampling on vs off with as many images seen (equal compute):"
    echo
    "$PYTHON" scripts/compare_evals.py on="$RUN/on/heldout-eval.json" off-long="$RUN/off-long/heldout-eval.json" \
      --json "$RUN/oversampling-equal-compute.json"
  fi
  echo
  echo "Whole run: $((SECONDS - started)) s."
} | tee "$RUN/results.md"
