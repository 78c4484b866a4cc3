#!/usr/bin/env bash
# Reproduce BKD runs: train, evaluate, score detection, draw the pictures, summarise the seeds. `bash run.sh --help`
# says how; the usage text below is the one place that describes it.
set -uo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'USAGE'
usage: [VARIABLE=value ...] bash run.sh [flags for the three scripts ...]

Trains BKD (blind_knowledge_dist_training.py), then for each run evaluates it (learning.py), scores its detection
(detection.py) and draws its pictures (plots.py, when matplotlib is installed); at the end, the seed summary
(summarize.py). Flags are passed to every script, e.g. --val_ratio 0, --label_fixes FILE, --data_dir DIR.
Each dataset runs its default recipe (docs/recipes.md): reference, the paper's procedure, on cifar10 and cifar100;
robust, ours, on synthetic, folder and npz. RECIPES runs others side by side, each in its own run directory.

Environment variables (default in brackets):
  DATASET       cifar10 | cifar100 | synthetic | folder | npz | all (cifar10 and cifar100)        [cifar10]
  NOISE_TYPES   label sets of one dataset (NOISE_TYPE works too)   [aggre worst rand1; noisy100; given for own data]
  SEEDS         seeds (SEED works too)                                                            [0]
  RECIPES       recipes to run side by side: reference, robust, ce (RECIPE works too)   [the dataset's default]
  RESULTS_DIR   where the run directories go                                                      [results]
  PYTHON        the Python that runs the scripts                                                  [python]
  GPUS          GPU ids to run jobs on concurrently, e.g. "0 1 2 3"          [unset: one job after another]
  JOBS_PER_GPU  concurrent jobs per GPU                                                           [1]
  DRY_RUN       1 = print every job's GPU and command lines, run nothing                          [0]

Examples:
  DATASET=synthetic bash run.sh                        # the offline demo on a CPU, a few minutes
  bash run.sh                                          # the reference runs: CIFAR-10N aggre, worst, rand1, seed 0
  DATASET=all SEEDS="1 2 3" GPUS="0 1 2 3" bash run.sh --val_ratio 0   # CIFAR-10N and -100N, 12 runs on 4 GPUs
  RECIPES="reference ce" bash run.sh                   # the paper's BKD and plain cross-entropy, side by side

Logs: RESULTS_DIR/<dataset>_<noise type>_seed_<seed>/{training,learning,detection,plots}.log, next to the run's
outputs (a recipe other than the dataset's default adds _<recipe> to the directory, --label_fixes FILE then
_fixes_<8 hex digits of the file's sha256>); the seed summary, a row per recipe, goes to RESULTS_DIR/summary.md and
summary.csv. More: docs/reproducing.md.
USAGE
}
for arg in "$@"; do
  case "$arg" in -h|--help) usage; exit 0 ;; esac
done


DATASET=${DATASET:-cifar10}
PYTHON=${PYTHON:-python}
RESULTS_DIR=${RESULTS_DIR:-results}
GPUS=${GPUS:-}
JOBS_PER_GPU=${JOBS_PER_GPU:-1}
DRY_RUN=${DRY_RUN:-0}
SEEDS=${SEEDS:-${SEED:-0}}
RECIPES=${RECIPES:-${RECIPE:-}}

default_noise() {
  case "$1" in
    cifar10|synthetic) echo "aggre worst rand1" ;;
    cifar100) echo "noisy100" ;;
    folder|npz) echo "given" ;;
  esac
}
default_recipe() {  # the training script's own rule (utils/recipes.py DEFAULT_RECIPE)
  case "$1" in
    cifar10|cifar100) echo reference ;;
    *) echo robust ;;
  esac
}
demo_flags() {  # the synthetic demo's short schedule, one flag a line
  [ "$1" = synthetic ] && printf '%s\n' --n_epoch 24 --lr 0.1 --lr_decay_every 5 --print_freq 10 --noisy_val_freq 3 --clean_test_freq 3
}

case "$DATASET" in
  cifar10|cifar100|synthetic) datasets=$DATASET ;;
  folder|npz) datasets=$DATASET  # where your data is cannot be guessed
       if [[ " $* " != *" --data_dir "* && " $* " != *" --data_dir="* ]]; then
         what=$([ "$DATASET" = folder ] && echo "DIR (the folder holding train/<class name>/<images>)" || echo FILE.npz)
         echo "run.sh: DATASET=$DATASET needs --data_dir $what among the arguments, e.g. DATASET=$DATASET bash run.sh --data_dir $what" >&2
         exit 2
       fi ;;
  all) datasets="cifar10 cifar100"
       [ -n "${NOISE_TYPES:-${NOISE_TYPE:-}}" ] && echo "run.sh: DATASET=all uses each dataset's default noise types; NOISE_TYPES is ignored" >&2 ;;
  *) echo "run.sh: unknown DATASET '$DATASET' (choose from cifar10, cifar100, synthetic, folder, npz, all)" >&2; exit 2 ;;
esac
if ! [[ "$JOBS_PER_GPU" =~ ^[1-9][0-9]*$ ]]; then
  echo "run.sh: JOBS_PER_GPU must be a positive integer, got '$JOBS_PER_GPU'" >&2; exit 2
fi
if [ -n "$GPUS" ] && [ "$DRY_RUN" != 1 ] && (( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501 )); then
  echo "run.sh: GPUS needs bash >= 5.1 (wait -n -p); this is $BASH_VERSION" >&2; exit 2
fi

# --recipe among the flags is one entry of RECIPES (the run directory depends on it, so run.sh must know it); the
# other flags go to every script.
extra_args=()
recipe_flag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --recipe) [ $# -gt 1 ] || { echo "run.sh: --recipe needs a value: reference, robust or ce" >&2; exit 2; }
              recipe_flag=$2; shift 2 ;;
    --recipe=*) recipe_flag=${1#--recipe=}; shift ;;
    *) extra_args+=("$1"); shift ;;
  esac
done
if [ -n "$recipe_flag" ]; then
  if [ -n "$RECIPES" ]; then
    echo "run.sh: RECIPES='$RECIPES' and --recipe $recipe_flag both given; choose one" >&2; exit 2
  fi
  RECIPES=$recipe_flag
fi
for recipe in $RECIPES; do
  case "$recipe" in
    reference|robust|ce) ;;
    *) echo "run.sh: unknown recipe '$recipe' (choose from reference, robust, ce)" >&2; exit 2 ;;
  esac
done

# The grid, one "dataset noise seed recipe" entry per job ("-": the dataset's default recipe, no --recipe flag).
grid=()
for dataset in $datasets; do
  noise_types=$(default_noise "$dataset")
  [ "$DATASET" != all ] && noise_types=${NOISE_TYPES:-${NOISE_TYPE:-$noise_types}}
  for noise in $noise_types; do
    for seed in $SEEDS; do
      for recipe in ${RECIPES:--}; do grid+=("$dataset $noise $seed $recipe"); done
    done
  done
done

# Slots, GPU by GPU in turn (with GPUS="0 1" and 2 jobs per GPU: 0 1 0 1), so that the first jobs spread over
# all GPUs before any GPU gets a second one. Without GPUS: one slot, no CUDA_VISIBLE_DEVICES.
read -ra gpu_list <<< "$GPUS"
slot_gpu=()
for ((j = 0; j < JOBS_PER_GPU; j++)); do slot_gpu+=("${gpu_list[@]}"); done
[ ${#slot_gpu[@]} -eq 0 ] && slot_gpu=("")

# The flags of one job for all three scripts (into the array `flags`) and its run directory (into `dir`).
job_setup() {
  local dataset=$1 noise=$2 seed=$3 recipe=$4 suffix="" recipe_flags=()
  if [ "$recipe" != - ]; then
    recipe_flags=(--recipe "$recipe")
    [ "$recipe" != "$(default_recipe "$dataset")" ] && suffix="_$recipe"
  fi
  dir="$RESULTS_DIR/${dataset}_${noise}_seed_${seed}${suffix}${fixes_suffix}"
  mapfile -t demo < <(demo_flags "$dataset")
  flags=(--dataset "$dataset" --noise_type "$noise" --seed "$seed" "${recipe_flags[@]}" --results_dir "$RESULTS_DIR"
         "${demo[@]}" "${extra_args[@]}")
}

# plots.py needs matplotlib, which the three scripts do not: without it the runs go on without pictures.
"$PYTHON" -c "import matplotlib" > /dev/null 2>&1 && PLOTS=1 || PLOTS=0
steps="blind_knowledge_dist_training:training learning:learning detection:detection"
[ "$PLOTS" = 1 ] && steps+=" plots:plots"

# The line of a log that says how the run went: the first line matching the first pattern that matches at all, else
# the last line (a run without a test set says so there, as does a script that failed).
result_line() {  # result_line <log> <pattern>...
  local log=$1 pattern; shift
  for pattern in "$@"; do grep -h -m 1 -e "$pattern" "$log" 2>/dev/null && return; done
  tail -n 1 "$log" 2>/dev/null
}

# One job: train, evaluate, score, draw; logs into its run directory. The exit status says what failed, bit by bit
# (1 training, 2 learning.py, 4 detection.py, 8 plots.py), since a background job can only report through its status.
run_job() {
  local name gpu=$5 status=0
  name=$(job_name "$1 $2 $3 $4")
  job_setup "$1" "$2" "$3" "$4"
  [ -n "$gpu" ] && export CUDA_VISIBLE_DEVICES=$gpu
  mkdir -p "$dir"
  echo "[$(date +%H:%M:%S)] $name: training${gpu:+ on GPU $gpu}, logs in $dir/"
  # a resumed run appends to the log of the run it continues; a new run starts a new log
  [[ " ${extra_args[*]} " == *" --resume "* ]] || : > "$dir/training.log"
  if ! "$PYTHON" blind_knowledge_dist_training.py "${flags[@]}" >> "$dir/training.log" 2>&1; then
    { echo "  $name: training failed; the end of $dir/training.log:"; tail -n 3 "$dir/training.log"; } >&2
    return 1
  fi
  "$PYTHON" learning.py "${flags[@]}" > "$dir/learning.log" 2>&1 || status=$((status | 2))
  "$PYTHON" detection.py "${flags[@]}" > "$dir/detection.log" 2>&1 || status=$((status | 4))
  if [ "$PLOTS" = 1 ]; then "$PYTHON" plots.py "${flags[@]}" > "$dir/plots.log" 2>&1 || status=$((status | 8)); fi
  echo "  $name: $(result_line "$dir/learning.log" '^test accuracy')  $(result_line "$dir/detection.log" '^The f-score' '^flagged as noisy')"
  return $status
}

failed=()
record() {  # record <job name> <exit status of run_job>
  if (( $2 > 15 )); then failed+=("$1 (killed, status $2)"); return 0; fi
  (( $2 & 1 )) && failed+=("$1")
  (( $2 & 2 )) && failed+=("$1 (learning.py)")
  (( $2 & 4 )) && failed+=("$1 (detection.py)")
  (( $2 & 8 )) && failed+=("$1 (plots.py)")
  return 0
}
job_name() {  # "cifar10 worst seed 0", and the recipe where one is named: "cifar10 worst seed 0 ce"
  set -- $1
  if [ "$4" = - ]; then echo "$1 $2 seed $3"; else echo "$1 $2 seed $3 $4"; fi
}

# With --label_fixes FILE the runs go to <dataset>_<noise>_seed_<seed>_fixes_<first 8 hex digits of the file's sha256>
# (the scripts' own rule, data/fixes.py run_dir_suffix), and so do their logs. A relative FILE counts from here.
fixes_suffix=""
for ((i = 0; i < ${#extra_args[@]}; i++)); do
  case "${extra_args[$i]}" in
    --label_fixes) fixes_file=${extra_args[$((i + 1))]:-} ;;
    --label_fixes=*) fixes_file=${extra_args[$i]#--label_fixes=} ;;
    *) continue ;;
  esac
  # from stdin: sha256sum escapes file names with a backslash in them and reads stdin for a file named "-"
  if ! [ -f "$fixes_file" ] || ! sum=$( (sha256sum < "$fixes_file" 2>/dev/null || shasum -a 256 < "$fixes_file") | cut -c1-8); then
    echo "run.sh: --label_fixes '$fixes_file' is not a readable file" >&2; exit 2
  fi
  fixes_suffix="_fixes_$sum"
done
[ "$PLOTS" = 0 ] && echo "run.sh: no pictures: matplotlib is not installed for $PYTHON (pip install matplotlib gives them)"
if [ "$DRY_RUN" = 1 ]; then
  # Job i goes to slot i mod (number of slots): the order the scheduler below fills them in when jobs take
  # equally long. Commands are shell-quoted, so they can be pasted as they are.
  for i in "${!grid[@]}"; do
    slot=$((i % ${#slot_gpu[@]})); gpu=${slot_gpu[$slot]}
    job_setup ${grid[$i]}
    where=${gpu:+GPU $gpu}
    echo "job $((i + 1))/${#grid[@]} $(job_name "${grid[$i]}"): slot $slot, ${where:-one job after another}"
    for step in $steps; do
      echo "  ${gpu:+CUDA_VISIBLE_DEVICES=$gpu }$(printf '%q ' "$PYTHON" "${step%%:*}.py" "${flags[@]}")> $(printf '%q' "$dir/${step##*:}.log") 2>&1"
    done
  done
  exit 0
fi

if [ -z "$GPUS" ]; then
  for job in "${grid[@]}"; do
    run_job $job ""
    status=$?  # before the $(...) below, which would reset $?
    record "$(job_name "$job")" $status
  done
else
  # A slot holds the pid of its running job (unset = free); pid_job maps a pid back to its job and slot.
  slot_pid=()
  declare -A pid_job pid_slot
  # Ctrl-C or kill: stop the running jobs too (background jobs of a script ignore Ctrl-C by themselves).
  stop() { for p in "${slot_pid[@]}"; do kill -- -"$p" 2>/dev/null; done; exit "$1"; }
  trap 'stop 130' INT; trap 'stop 143' TERM
  set -m  # each job in its own process group, so the trap above stops its python too
  reap() {  # wait for any job to end, record it, free its slot
    local pid
    wait -n -p pid; local status=$?
    if [ -z "${pid:-}" ]; then slot_pid=(); return; fi  # no job left to wait for: every slot is free
    record "$(job_name "${pid_job[$pid]}")" $status
    unset "slot_pid[${pid_slot[$pid]}]"
  }
  for job in "${grid[@]}"; do
    while :; do  # the first free slot, else wait for one
      for ((s = 0; s < ${#slot_gpu[@]}; s++)); do [ -z "${slot_pid[$s]:-}" ] && break; done
      [ $s -lt ${#slot_gpu[@]} ] && break
      reap
    done
    run_job $job "${slot_gpu[$s]}" &
    slot_pid[$s]=$!; pid_job[$!]=$job; pid_slot[$!]=$s
  done
  while [ ${#slot_pid[@]} -gt 0 ]; do reap; done
  set +m
fi

# Seed summary over everything in RESULTS_DIR; a failing summary is reported but never hides failed jobs.
echo
"$PYTHON" summarize.py --results_dir "$RESULTS_DIR" || failed+=("the seed summary (summarize.py)")
if [ ${#failed[@]} -gt 0 ]; then
  printf 'run.sh: failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
