#!/usr/bin/env bash
# One training step of the reference model, broken down by GPU kernel: builds gdn with CUDA (as
# run_gpu_tests.sh does), then Nsight Compute (ncu) times every kernel of `gdn bench --iters 1`
# (three steps: warm-up, timed, per-op profiled). kernels.txt gives each kernel's time per step,
# its share and launches, and how the kernels' sum compares with the step's wall time measured
# without ncu (the difference is time the GPU waits for the host).
#
# Usage: tests/gpu/kernel_breakdown.sh [LOG_DIR [extra gdn bench flags...]]
#        (default LOG_DIR: $OUT/breakdown when OUT is set, else ./gpu-logs/breakdown; default
#        flags: --precision bf16)
# Environment: GDN_DEBS, GDN_DEPS_PREFIX, CUDA_ARCH, BUILD_DIR (see tests/gpu/gpu_build.sh).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
log=${1:-${OUT:-$PWD/gpu-logs}/breakdown}
shift || true
flags=("$@")
[[ ${#flags[@]} -eq 0 ]] && flags=(--precision bf16)
mkdir -p "$log"
source "$root/tests/gpu/gpu_build.sh"
gdn_gpu_configure >/dev/null || { tail -20 "$log/build.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target gdn >>"$log/build.log" 2>&1 || { echo "build failed"; exit 1; }

args=(bench "${ref_model[@]}" --width 1024 --iters 1 "${flags[@]}")
step "gdn ${args[*]} (without ncu: the step's wall time)"
"$build/gdn" "${args[@]}" >"$log/bench_plain.log" 2>&1 || { tail -5 "$log/bench_plain.log"; exit 1; }
grep -E "training step|memory" "$log/bench_plain.log"
step "the same under ncu (every kernel, gpu__time_duration)"
timeout 420 ncu --clock-control none --print-units base --metrics gpu__time_duration.sum --csv \
  "$build/gdn" "${args[@]}" >"$log/ncu.csv" 2>"$log/ncu.err" || { echo "ncu failed:"; tail -5 "$log/ncu.err"; }
wall=$(grep -oE "median of [0-9]+\): [0-9.]+ s" "$log/bench_plain.log" | awk '{print $NF * 1000}')
python3 "$root/tests/gpu/ncu_summary.py" "$log/ncu.csv" 3 $wall 2>&1 | tee "$log/kernels.txt"
