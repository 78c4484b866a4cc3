#!/usr/bin/env bash
# Reproduce BKD runs: train (blind_knowledge_dist_training.py), evaluate (learning.py), score detection (detection.py).
# Each run's logs go to results/<dataset>_<noise>_seed_<seed>/{training,learning,detection}.log.
#
#   bash run.sh                                    # the reference run: CIFAR-10N aggre, worst, rand1, seed 0
#   DATASET=cifar100 bash run.sh                   # CIFAR-100N noisy100
#   NOISE_TYPES="worst" SEEDS="1 2 3" bash run.sh --val_ratio 0   # extra flags go to all three scripts
#   DATASET=synthetic bash run.sh                  # offline demo on CPU, a few minutes
#
# Settings: DATASET (cifar10 | cifar100 | synthetic), NOISE_TYPES (or NOISE_TYPE), SEEDS (or SEED),
# RESULTS_DIR (default results), PYTHON (default python).
set -uo pipefail
cd "$(dirname "$0")"

DATASET=${DATASET:-cifar10}
PYTHON=${PYTHON:-python}
RESULTS_DIR=${RESULTS_DIR:-results}
demo_flags=()
case "$DATASET" in
  cifar10) default_noise="aggre worst rand1" ;;
  cifar100) default_noise="noisy100" ;;
  synthetic) default_noise="aggre worst rand1"; demo_flags=(--n_epoch 24 --lr 0.1 --lr_decay_every 5 --print_freq 10 --noisy_val_freq 3 --clean_test_freq 3) ;;
  *) echo "run.sh: unknown DATASET '$DATASET' (choose from cifar10, cifar100, synthetic)" >&2; exit 2 ;;
esac
NOISE_TYPES=${NOISE_TYPES:-${NOISE_TYPE:-$default_noise}}
SEEDS=${SEEDS:-${SEED:-0}}

failed=()
for noise in $NOISE_TYPES; do
  for seed in $SEEDS; do
    dir="$RESULTS_DIR/${DATASET}_${noise}_seed_${seed}"
    mkdir -p "$dir"
    flags=(--dataset "$DATASET" --noise_type "$noise" --seed "$seed" --results_dir "$RESULTS_DIR" "${demo_flags[@]}" "$@")
    echo "[$(date +%H:%M:%S)] $DATASET $noise seed $seed: training, logs in $dir/"
    if ! "$PYTHON" blind_knowledge_dist_training.py "${flags[@]}" > "$dir/training.log" 2>&1; then
      echo "  training failed; the end of $dir/training.log:" >&2; tail -n 3 "$dir/training.log" >&2
      failed+=("$DATASET $noise seed $seed"); continue
    fi
    "$PYTHON" learning.py "${flags[@]}" > "$dir/learning.log" 2>&1 || failed+=("$DATASET $noise seed $seed (learning.py)")
    "$PYTHON" detection.py "${flags[@]}" > "$dir/detection.log" 2>&1 || failed+=("$DATASET $noise seed $seed (detection.py)")
    echo "  $(grep -h '^test accuracy' "$dir/learning.log")  $(grep -h '^The f-score' "$dir/detection.log")"
  done
done
if [ ${#failed[@]} -gt 0 ]; then
  printf 'run.sh: failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
