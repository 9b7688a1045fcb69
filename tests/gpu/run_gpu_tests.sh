#!/usr/bin/env bash
# Builds the project with CUDA on a GPU machine and runs the GPU tests: the CUDA ops against the
# CPU (tests/cuda_ops_test.cc), the chunked recurrence against its float64 reference, the
# model's CUDA-only checks (tests/cuda_model_test.cc), the CPU kernel tests, then
# compute-sanitizer memcheck (all CUDA tests) and racecheck (the shared-memory kernels) on the
# CUDA test binary. Full logs go to the
# log directory as they are written; a summary (per-op maximum relative errors, sanitizer
# verdicts) ends the output.
#
# Usage: tests/gpu/run_gpu_tests.sh [LOG_DIR]     (default: $OUT when set, else ./gpu-logs)
# Environment: GDN_DEBS, GDN_DEPS_PREFIX, CUDA_ARCH, BUILD_DIR (see tests/gpu/gpu_build.sh).
# Exit status: non-zero when the build, a test or a sanitizer check failed.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
log=${1:-${OUT:-$PWD/gpu-logs}}
mkdir -p "$log"
status=0

source "$root/tests/gpu/gpu_build.sh"
gdn_gpu_configure || exit 1

step "build"
targets=(cuda_tests cuda_gdr_tests cuda_model_tests kernel_tests gdn gdr_cuda_bench gemm_bench)
# conv_cudnn_bench exists where CMake found cuDNN (it says so in the configure output).
grep -q "^-- cuDNN: /" "$log/build.log" && targets+=(conv_cudnn_bench)
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}" 2>&1 | tee -a "$log/build.log" \
  || { echo "build failed"; exit 1; }

step "CUDA ops vs CPU"
if ! "$build/tests/cuda_tests" 2>&1 | tee "$log/cuda_tests.log"; then
  status=1
  # A crash (a failed CHECK) ends the binary early: run each test in its own process as well.
  step "CUDA ops vs CPU, one process per test"
  (cd "$build" && ctest -R 'Cuda' --output-on-failure --timeout 120) 2>&1 | tail -40 | tee "$log/cuda_ctest.log"
fi
step "chunked gated delta rule vs the float64 reference" | tee -a "$log/cuda_tests.log"
"$build/tests/cuda_gdr_tests" 2>&1 | tee -a "$log/cuda_tests.log" | grep -E '^\[  (PASSED|FAILED)' || status=1
step "the model on CUDA (bf16 mode's kept weight copies)" | tee -a "$log/cuda_tests.log"
"$build/tests/cuda_model_tests" 2>&1 | tee -a "$log/cuda_tests.log" | grep -E '^\[  (PASSED|FAILED)' || status=1
step "CPU kernel tests" | tee -a "$log/cuda_tests.log"
OMP_NUM_THREADS=$(nproc) "$build/tests/kernel_tests" 2>&1 | tee -a "$log/cuda_tests.log" | tail -1 || status=1
# On a GPU machine a skipped CUDA test (no usable GPU found) is a failure, not a pass.
if grep -q '^\[  SKIPPED ' "$log/cuda_tests.log"; then
  echo "CHECK FAILED: CUDA tests skipped on a GPU machine"; status=1
fi

step "compute-sanitizer memcheck"
# The death test forks children that abort on purpose; it is left out here.
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
  "$build/tests/cuda_tests" --gtest_filter='-*DeathTest*' >"$log/memcheck.log" 2>&1 || status=1
tail -3 "$log/memcheck.log"
step "compute-sanitizer racecheck (shared-memory kernels)"
timeout 75 compute-sanitizer --tool racecheck --error-exitcode 9 "$build/tests/cuda_tests" \
  --gtest_filter='*GatedDeltaRuleSmall*:*RmsNorm*:*L2Norm*:*CrossEntropy*' >"$log/racecheck.log" 2>&1 \
  || status=1
tail -3 "$log/racecheck.log"

step "training on CUDA vs the CPU, 50 steps (float32)" | tee "$log/train.log"
timeout 240 bash "$root/tests/gpu/train_check.sh" "$build/gdn" /tmp/gdn-train-check 2>&1 | tee -a "$log/train.log" || status=1
step "benchmarks" | tee -a "$log/train.log"
timeout 60 "$build/kernels/gdr_cuda_bench" 2>&1 | tee -a "$log/train.log"
timeout 60 "$build/kernels/gemm_bench" 2>&1 | tee -a "$log/train.log"
if [[ -x "$build/kernels/conv_cudnn_bench" ]]; then
  timeout 120 "$build/kernels/conv_cudnn_bench" 2>&1 | tee -a "$log/train.log"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
else
  echo "conv_cudnn_bench: not built (CMake found no cuDNN)" | tee -a "$log/train.log"
fi
# The reference model (ref_model, gpu_build.sh): float32, bf16, and bf16 with activation
# recomputation (the memory of one layer's activations instead of all), and the last two with the
# recurrence's forward saved for its backward.
for mode in "" "--precision bf16" "--precision bf16 --recompute" "--precision bf16 --save-recurrence" \
    "--precision bf16 --recompute --save-recurrence"; do
  # shellcheck disable=SC2086  # $mode: zero or more flags
  timeout 150 "$build/gdn" bench "${ref_model[@]}" --width 1024 --iters 3 $mode 2>&1 | tee -a "$log/train.log"
done

step "summary"
{
  echo "max relative error per op and output (GPU vs CPU, over all shapes of the run):"
  grep '^RELERR' "$log/cuda_tests.log" | awk '{k=$2" "$3; v=$NF+0; if (!(k in m) || v > m[k]) m[k]=v; n[k]++}
    END {for (k in m) printf "  %-40s %.3e  (%d checks)\n", k, m[k], n[k]}' | sort
  grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$log/cuda_tests.log"
  echo "memcheck:  $(grep -E 'ERROR SUMMARY' "$log/memcheck.log" | tail -1)"
  echo "racecheck: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$log/racecheck.log" | tail -1)"
  grep -E 'worst relative train-loss|gdn bench|tokens/s|MFU|device memory|one step.s matrix|gdn .* faster|conv_cudnn' "$log/train.log"
  echo "exit status $status"
} 2>&1 | tee "$log/summary.txt"
exit $status
