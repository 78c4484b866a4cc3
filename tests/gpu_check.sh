#!/usr/bin/env bash
# Checks and times the GPU path in one call, on a CUDA machine (a GPU workstation, or a lent GPU machine):
#   bash tests/gpu_check.sh            # about 8 minutes on one H100; logs in $OUT (default gpu_check/)
# 1. the CUDA tier (tests/test_cuda.py): captured step == eager step, a short real run, --deterministic twice,
#    SIGKILL + --resume;  2. the tests that pin the CPU but ran red on a GPU machine before (resume, torchrun);
# 3. tests/benchmark.py: the step eager and captured, the reference-style baseline, the training script on 50,000
#    CIFAR-shaped images, in bf16 and fp32, eager networks and --compile. A table of every figure comes last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt" 2>&1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/device.txt" 2>&1

status=()
check() {  # check <name> <log> <command...>: run, keep the log, note the result
  local name=$1 log=$2; shift 2
  local t0=$SECONDS
  "$@" > "$OUT/$log" 2>&1
  local rc=$?
  status+=("| $name | $([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc)") | $((SECONDS - t0)) s | $log |")
}
check "CUDA tier" cuda_tier.log python -m pytest -q tests/test_cuda.py
check "resume and torchrun tests (CPU-pinned)" cpu_pinned.log python -m pytest -q tests/test_resume.py tests/test_distributed.py -x
check "benchmark, bf16" bench_bf16.log python tests/benchmark.py
check "benchmark, fp32" bench_fp32.log python tests/benchmark.py --precision fp32 --no_baseline --loop_epochs 2
check "benchmark, bf16, --compile" bench_compile.log python tests/benchmark.py --compile --no_baseline --loop_epochs 2

{
  cat "$OUT/device.txt"
  echo
  echo "| check | result | time | log |"
  echo "|---|---|---|---|"
  printf '%s\n' "${status[@]}"
  for log in bench_bf16 bench_fp32 bench_compile; do
    echo; echo "$log:"; sed -n '/^| measure/,$p' "$OUT/$log.log"
  done
} | tee "$OUT/summary.md"
