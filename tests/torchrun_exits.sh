#!/usr/bin/env bash
# How often a finished run under torchrun exits 0: N runs of the training script (2 ranks, CPU, gloo, 8 epochs on 100
# fake CIFAR-10 images in the real on-disk format) beside two processes that keep the CPU busy, the load under which
# rank 1 used to abort at exit (docs/distributed.md). Prints each run's exit code (and the ranks' codes torchrun
# reported, where it reported any) and, last, how many exited 0. Logs in a temporary folder it names.
#   bash tests/torchrun_exits.sh [N]        # N runs, 20 by default; a few minutes on a 2-core CPU
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
PYTHON=${PYTHON:-python}
work=$(mktemp -d)
"$PYTHON" - "$work" <<'EOF' || exit 1
import pathlib, sys
import numpy as np
sys.path.insert(0, ".")
from tests.conftest import write_fake_cifar, write_pickle
work = pathlib.Path(sys.argv[1])
clean = write_fake_cifar(work)["labels10"]
write_pickle(work / "labels.pt", {"clean_label": clean, "worse_label": (clean + np.arange(100) % 2) % 10})
EOF
burners=()
for _ in 1 2; do "$PYTHON" -c "while True: pass" & burners+=($!); done
trap 'kill "${burners[@]}" 2>/dev/null' EXIT
ok=0
for ((i = 1; i <= N; i++)); do
  rm -rf "$work/results"
  OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES= "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2 \
    blind_knowledge_dist_training.py --dataset cifar10 --arch small_cnn --data_dir "$work" \
    --noise_path "$work/labels.pt" --n_epoch 8 --batch_size 16 --print_freq 1000 --results_dir "$work/results" \
    > "$work/run_$i.log" 2>&1
  rc=$?
  [ $rc = 0 ] && ok=$((ok + 1))
  echo "run $i: exit $rc $(grep -oE 'exitcode *: -?[0-9]+' "$work/run_$i.log" | tr -s ' ' | tr '\n' ' ')"
done
echo "$ok of $N runs exited 0 (logs in $work)"
