#!/usr/bin/env bash
# Checks and times the GPU path in stages that each fit a 10-minute GPU window. GPU windows are short and are often
# cut off at their limit, so every check runs under its own timeout, every stage under a budget, and every result is
# written the moment it is known. Call one stage per window:
#
#   bash tests/gpu_check.sh smoke        # 1-2 min, cut at 150 s: versions; a PreResNet18 pair stepped eagerly and
#                                        #   as a CUDA graph side by side (tests/gpu_smoke.py)
#   bash tests/gpu_check.sh tier         # at most 9.5 min: the CUDA tier tests/test_cuda.py, one check per test
#   bash tests/gpu_check.sh bench        # at most 9.5 min: tests/benchmark.py in bf16 (with the reference-style
#                                        #   baseline, training script 3 epochs) and in fp32 (2 epochs)
#   bash tests/gpu_check.sh compile      # at most 9 min: tests/benchmark.py --compile, and how often it recompiled
#   bash tests/gpu_check.sh cpu-pinned   # at most 9.5 min: tests/test_resume.py and tests/test_distributed.py,
#                                        #   the CPU-pinned tests that ran red on a GPU machine before
#   bash tests/gpu_check.sh all          # every stage above in this order (up to about 40 min)
#
# Settings: OUT (logs and summary.md; default gpu_check/ in the repository root, a relative path counts from there),
# PYTHON (default python), GPU_CHECK_STAGE_S (each stage's budget, default 570 s), GPU_CHECK_MAX_S (caps every
# check's timeout; for the tests). A check gets min(its timeout, what is left of its stage's budget,
# GPU_CHECK_MAX_S); a check that no longer fits is recorded as not run. Each check's output goes to its own log in
# $OUT; $OUT/summary.md is only ever appended to: a heading per call, then one line per check as soon as it ends,
# followed by its log's last 40 lines if it did not pass and by the smoke or benchmark table. SIGTERM or SIGINT
# (a scheduler ending the job, Ctrl-C) ends the running check and records it as STOPPED. Without CUDA every stage
# says so in one line and exits 0, writing nothing. Exit code: 0 when every check was ok or skipped, 1 otherwise,
# 2 for a bad call, 128 + the signal when stopped.
set -uo pipefail
cd "$(dirname "$0")/.."

STAGES=(smoke tier bench compile cpu-pinned)
USAGE="usage: bash tests/gpu_check.sh {smoke|tier|bench|compile|cpu-pinned|all}, one stage per GPU window (settings: OUT, PYTHON, GPU_CHECK_STAGE_S, GPU_CHECK_MAX_S)"
if [ $# = 0 ]; then
  echo "gpu_check.sh: no stage given; $USAGE" >&2; exit 2
fi
case "$1" in
  all) stages=("${STAGES[@]}") ;;
  smoke|tier|bench|compile|cpu-pinned) stages=("$1") ;;
  -h|--help) echo "$USAGE"; exit 0 ;;
  *) echo "gpu_check.sh: unknown stage '$1'; $USAGE" >&2; exit 2 ;;
esac
if [ $# -gt 1 ]; then
  echo "gpu_check.sh: one stage at a time, got '$*'; $USAGE" >&2; exit 2
fi
CALL=$1
OUT=${OUT:-gpu_check}
[ "$OUT" != / ] && OUT=${OUT%/}
PYTHON=${PYTHON:-python}
STAGE_S=${GPU_CHECK_STAGE_S:-570}  # 570 s + timeout's 10 s grace + start-up fit a 10-minute window
MAX_S=${GPU_CHECK_MAX_S:-}
for setting in "GPU_CHECK_STAGE_S=$STAGE_S" "GPU_CHECK_MAX_S=${MAX_S:-1}"; do
  if ! [[ ${setting#*=} =~ ^[1-9][0-9]*$ ]]; then
    echo "gpu_check.sh: ${setting%%=*} must be a positive number of seconds, got '${setting#*=}'" >&2; exit 2
  fi
done

# Before anything else: without CUDA (a CPU machine, or CUDA_VISIBLE_DEVICES="") there is nothing to check, so every
# stage says so in one line, runs nothing and writes nothing. A probe that cannot run at all (no torch, no such
# PYTHON) is not "no CUDA" but an error.
probe_err=$(timeout --kill-after=10 120 "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>&1 >/dev/null)
probe_rc=$?
if [ "$probe_rc" = 1 ] && [[ $probe_err != *Traceback* ]]; then
  echo "gpu_check.sh $CALL: no CUDA device here (torch.cuda.is_available() is False): nothing to check; run it on a CUDA machine"
  exit 0
elif [ "$probe_rc" != 0 ]; then
  echo "gpu_check.sh $CALL: the CUDA probe failed (exit $probe_rc) with PYTHON=$PYTHON: ${probe_err##*$'\n'}" >&2
  exit 1
fi

# What ran where: device.txt (rewritten per call) and the heading of this call in summary.md.
mkdir -p "$OUT" || exit 1
SUMMARY=$OUT/summary.md
export PYTHONUNBUFFERED=1  # logs fill as the checks print, so a check that is killed still leaves its last lines
if command -v nvidia-smi > /dev/null; then
  gpus=$(timeout --kill-after=5 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) \
    || gpus="nvidia-smi failed: ${gpus##*$'\n'}"
else
  gpus="no nvidia-smi"
fi
read -r -d '' VERSIONS <<'EOF'
import torch
try:
    import triton
    triton_version = triton.__version__
except Exception:
    triton_version = "not importable"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"Triton {triton_version}; {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
EOF
versions=$(timeout --kill-after=10 120 "$PYTHON" -c "$VERSIONS" 2>&1)
versions=${versions##*$'\n'}  # its line comes last, after any warning
if commit=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD -- 2>/dev/null || commit="$commit + local changes"
else
  commit=unknown
fi
printf '%s\n' "$gpus" "$versions" "commit $commit" > "$OUT/device.txt"
{
  echo
  echo "## gpu_check.sh $CALL, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo
  echo "${gpus%%$'\n'*}; $versions; commit $commit"
  echo
} >> "$SUMMARY"

stage=             # the stage running now
stage_t0=0         # its start, in $SECONDS
stage_rows=()      # its rows, "| check | result | seconds |", for the table printed at its end
failed=0           # 1 once a check of this call was neither ok nor skipped
cur_pid=           # the running check: the pid of its `timeout`, its name, log, start and options
cur_name= cur_log= cur_t0=0 cur_table= cur_pytest=0 cur_recompiles=0 cur_quiet=0

record() {  # record NAME RESULT [SECONDS LOG]: one check's row, printed and appended to summary.md at once
  local name=$1 result=$2 seconds=${3:-} log=${4:-}
  case "$result" in ok*|SKIPPED*) ;; *) failed=1 ;; esac
  stage_rows+=("| $name | $result | ${seconds:--} |")
  if [ -n "$log" ]; then
    echo "[$stage] $name: $result ($seconds s, log $OUT/$log)"
    echo "- **$stage** \`$name\`: $result ($seconds s, log \`$log\`)" >> "$SUMMARY"
  else
    echo "[$stage] $name: $result"
    echo "- **$stage** \`$name\`: $result" >> "$SUMMARY"
  fi
}

finish() {  # finish RESULT: the running check ended so; its row, its log's tail if it did not pass, its table
  local result=$1 log=$OUT/$cur_log passed=0
  [[ $result == ok || $result == SKIPPED ]] && passed=1
  (( passed && cur_quiet )) && return 0
  (( cur_recompiles )) && result="$result, $(plural "$(grep -c 'Recompiling function' "$log")" recompilation)"
  record "$cur_name" "$result" "$((SECONDS - cur_t0))" "$cur_log"
  if (( ! passed )); then
    tail -n 5 "$log" | sed 's/^/    /'
    # A list line, then a fenced block at the left margin: valid markdown however the rows and blocks interleave.
    { echo; echo '```text'; tail -n 40 "$log" | sed '$a\'; echo '```'; } >> "$SUMMARY"
  fi
  if [ -n "$cur_table" ]; then  # the table the smoke test or benchmark printed last, failed or not
    # From its (last) first line, the lines that start with "|": a traceback printed after it stays in the tail
    # above and does not run on as rows of the table.
    local table
    table=$(awk -v p="$cur_table" 'index($0, p) == 1 {t = ""; on = 1} on && !/^\|/ {on = 0} on {t = t $0 "\n"}
                                   END {printf "%s", t}' "$log")
    { echo; echo "${table:-(no table starting with '$cur_table' in $cur_log)}"; } >> "$SUMMARY"
  fi
  if (( ! passed )) || [ -n "$cur_table" ]; then echo >> "$SUMMARY"; fi  # a blank line before the next row
}

# check [--table PREFIX] [--pytest] [--recompiles] [--quiet] NAME LOG TIMEOUT COMMAND...
#   Runs COMMAND, its output in $OUT/LOG, under `timeout` for min(TIMEOUT, what is left of the stage's budget,
#   GPU_CHECK_MAX_S) seconds: TERM at the limit, KILL 10 s later. timeout puts the command in a process group of its
#   own and signals the whole group, so the check's children (training scripts, DataLoader workers) end with it.
#   The moment it ends, its row goes to stdout and summary.md. Returns 0 when it was ok or skipped.
#   --table PREFIX  append the table whose first line starts with PREFIX (the smoke or benchmark table)
#   --pytest        pytest's summary line (its last line) saying only "skipped" makes the result SKIPPED
#   --recompiles    the row says how many "Recompiling function" lines the log has (TORCH_LOGS=recompiles)
#   --quiet         no row when it passes (the tier's collection of test ids)
check() {
  cur_table= cur_pytest=0 cur_recompiles=0 cur_quiet=0
  while [[ $1 == --* ]]; do
    case "$1" in
      --table) cur_table=$2; shift ;;
      --pytest) cur_pytest=1 ;;
      --recompiles) cur_recompiles=1 ;;
      --quiet) cur_quiet=1 ;;
    esac
    shift
  done
  local name=$1 log=$2 limit=$3 why= rc result
  shift 3
  local left=$((STAGE_S - (SECONDS - stage_t0)))
  if (( left < 1 )); then
    record "$name" "not run: stage budget used up"
    return 1
  fi
  if (( left < limit )); then limit=$left; why=" (stage budget)"; fi
  if [ -n "$MAX_S" ] && (( MAX_S < limit )); then limit=$MAX_S; why=; fi
  echo "[$stage] $name: running, at most $limit s"
  cur_name=$name cur_log=$log cur_t0=$SECONDS
  # In the background, then waited for: a signal to this script interrupts `wait` at once, while a command in the
  # foreground would hold the trap back until it ended. (Backgrounded commands ignore SIGINT, but timeout resets
  # it, so the tests that interrupt their runs with SIGINT work as usual.)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$log" 2>&1 < /dev/null &
  cur_pid=$!
  wait "$cur_pid"
  rc=$?
  cur_pid=
  if (( rc == 0 )); then
    result=ok
    if (( cur_pytest )); then
      local last
      last=$(grep -v '^[[:space:]]*$' "$OUT/$log" | tail -n 1)
      [[ $last == *skipped* && $last != *passed* && $last != *failed* && $last != *error* ]] && result=SKIPPED
    fi
  elif (( rc == 124 || (rc == 137 && SECONDS - cur_t0 >= limit) )); then  # 137: it needed the KILL
    result="TIMEOUT after $limit s$why"
  else
    result="FAILED (exit $rc)"
  fi
  finish "$result"
  [[ $result == ok || $result == SKIPPED ]]
}

stop() {  # stop CODE SIGNAL: a scheduler ends the job, or Ctrl-C: end the running check, record it, exit
  trap '' TERM INT HUP  # once is enough: the check ends within timeout's 10 s grace, and its row must be written
  if [ -n "$cur_pid" ]; then
    kill -TERM "$cur_pid" 2>/dev/null  # timeout passes it on to the check's process group, and KILLs 10 s later
    wait "$cur_pid" 2>/dev/null
    cur_pid=
    finish "STOPPED after $((SECONDS - cur_t0)) s"
  fi
  echo "- gpu_check.sh $CALL stopped by SIG$2" >> "$SUMMARY"
  [ -n "$stage" ] && stage_table
  exit "$1"
}
trap 'stop 143 TERM' TERM
trap 'stop 130 INT' INT
trap 'stop 129 HUP' HUP

plural() { [ "$1" = 1 ] && echo "1 $2" || echo "$1 ${2}s"; }  # plural N WORD

stage_table() {  # the stage's rows, printed last
  echo
  echo "gpu_check.sh $stage: $(plural ${#stage_rows[@]} check) in $((SECONDS - stage_t0)) s (budget $STAGE_S s); logs and summary.md in $OUT/"
  echo "| check | result | seconds |"
  echo "|---|---|---|"
  (( ${#stage_rows[@]} )) && printf '%s\n' "${stage_rows[@]}"
}

stage_smoke() {  # first, and cheap: is this machine's stack sane, and does a captured step equal the eager one?
  check --table '| quantity' gpu_smoke.py smoke.log 150 "$PYTHON" tests/gpu_smoke.py
}

stage_tier() {  # one check per test, so that one hang costs that test's 200 s and not the whole stage
  check --quiet "collect tests/test_cuda.py" tier_collect.log 120 \
    "$PYTHON" -m pytest --collect-only -q tests/test_cuda.py || return
  local ids id n=0
  mapfile -t ids < <(grep -E '^[^[:space:]]+::' "$OUT/tier_collect.log" | awk '!seen[$0]++')
  if (( ${#ids[@]} == 0 )); then
    record "collect tests/test_cuda.py" "FAILED (no test ids in its output)" 0 tier_collect.log
    return
  fi
  for id in "${ids[@]}"; do
    n=$((n + 1))
    local short=${id#*::}
    short=${short//[^A-Za-z0-9._-]/_}
    short=${short%_}
    check --pytest "${id#*::}" "tier_${n}_${short:0:80}.log" 200 "$PYTHON" -m pytest -q -p no:cacheprovider "$id"
  done
}

stage_bench() {  # bf16 as the scripts run on CUDA, with the baseline and 3 epochs; fp32 lighter, to fit the budget
  check --table '| measure' "benchmark bf16" bench_bf16.log 330 "$PYTHON" tests/benchmark.py --precision bf16
  check --table '| measure' "benchmark fp32, no baseline, 2 epochs" bench_fp32.log 230 \
    "$PYTHON" tests/benchmark.py --precision fp32 --no_baseline --loop_epochs 2
}

stage_compile() {  # torch.compile takes minutes to start, hence a stage of its own; recompilations would cost more
  check --table '| measure' --recompiles "benchmark bf16 --compile, no baseline, 2 epochs" bench_compile.log 540 \
    env TORCH_LOGS=recompiles "$PYTHON" tests/benchmark.py --compile --no_baseline --loop_epochs 2
}

stage_cpu_pinned() {  # the suite hides the GPUs from these tests' scripts, but they ran red on a GPU machine before
  check --pytest tests/test_resume.py cpu_pinned_resume.log 280 \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_resume.py
  check --pytest tests/test_distributed.py cpu_pinned_distributed.log 280 \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_distributed.py
}

for stage in "${stages[@]}"; do
  [ "$stage" != "${stages[0]}" ] && echo
  stage_t0=$SECONDS
  stage_rows=()
  echo "gpu_check.sh $stage: budget $STAGE_S s, logs in $OUT/"
  "stage_${stage//-/_}"
  echo "- **$stage** done: $(plural ${#stage_rows[@]} check) in $((SECONDS - stage_t0)) s" >> "$SUMMARY"
  stage_table
done
exit "$failed"
