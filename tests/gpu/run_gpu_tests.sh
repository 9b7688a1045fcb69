#!/usr/bin/env bash
# Builds the project with CUDA on a GPU machine and runs the GPU tests: the CUDA ops against the
# CPU (tests/cuda_ops_test.cc), the CPU kernel tests, then compute-sanitizer memcheck (all CUDA
# tests) and racecheck (the shared-memory kernels) on the CUDA test binary. Full logs go to the
# log directory as they are written; a summary (per-op maximum relative errors, sanitizer
# verdicts) ends the output.
#
# Usage: tests/gpu/run_gpu_tests.sh [LOG_DIR]     (default: $OUT when set, else ./gpu-logs)
# Environment: GDN_DEBS  folder of Debian .debs for what the machine lacks (abseil, glog, gflags,
#                        libunwind, OpenBLAS OpenMP build, libgfortran5); default: .deps in or above
#                        the source tree. They are unpacked with dpkg -x into GDN_DEPS_PREFIX
#                        (default /tmp/gdn-deps), never into /.
#              CUDA_ARCH architectures to build (default 90a); BUILD_DIR (default /tmp/gdn-build).
# Exit status: non-zero when the build, a test or a sanitizer check failed.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
log=${1:-${OUT:-$PWD/gpu-logs}}
mkdir -p "$log"
prefix=${GDN_DEPS_PREFIX:-/tmp/gdn-deps}
build=${BUILD_DIR:-/tmp/gdn-build}
arch=${CUDA_ARCH:-90a}
debs=${GDN_DEBS:-}
if [[ -z "$debs" ]]; then
  for d in "$root/.deps" "$root/../.deps"; do [[ -d "$d" ]] && debs=$d && break; done
fi
status=0
step() { echo "=== $* ($(date -u +%H:%M:%S))"; }

step "machine" | tee "$log/env.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -2
  g++ --version | head -1; cmake --version | head -1; nproc; } 2>&1 | tee -a "$log/env.txt"

step "dependencies from ${debs:-<none>} into $prefix"
if [[ -n "$debs" ]]; then
  mkdir -p "$prefix"
  for f in "$debs"/*.deb; do dpkg -x "$f" "$prefix" || { echo "cannot unpack $f"; exit 1; }; done
fi
libdir=$prefix/usr/lib/x86_64-linux-gnu
# glog's CMake config names its find modules (FindUnwind) by the absolute /usr/share path of an
# installed package: point it at the unpacked copy.
glog_modules=$libdir/cmake/glog/glog-modules.cmake
[[ -f "$glog_modules" ]] && sed -i "s|\"/usr/share/glog/cmake\"|\"$prefix/usr/share/glog/cmake\"|" "$glog_modules"
# glog's own dependencies (gflags, libunwind) and OpenBLAS's libgfortran are found through this
# at run time (the executables' RUNPATH covers direct dependencies only); test discovery at build
# time runs the test binaries too.
export LD_LIBRARY_PATH=$libdir:$libdir/openblas-openmp:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=/usr/local/cuda/bin:$PATH

step "configure (CUDA architectures $arch)"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix/usr" \
  -DGDN_DEPS_PREFIX="$prefix" -DCMAKE_CUDA_ARCHITECTURES="$arch" 2>&1 | tee "$log/build.log" \
  || { echo "configure failed"; exit 1; }
grep -q "CUDA backend: on" "$log/build.log" || { echo "CUDA backend not enabled"; exit 1; }

step "build"
cmake --build "$build" -j "$(nproc)" --target cuda_tests cuda_gdr_tests kernel_tests gdn gdr_cuda_bench 2>&1 | tee -a "$log/build.log" \
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
step "CPU kernel tests" | tee -a "$log/cuda_tests.log"
OMP_NUM_THREADS=$(nproc) "$build/tests/kernel_tests" 2>&1 | tee -a "$log/cuda_tests.log" | tail -1 || status=1

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
# The reference model of shared/docs/gpu-machine.md (hidden 1024, 12 layers, 6 heads of dk 128,
# dv 256, vocabulary 32000, batch 8 x 2048), float32.
timeout 150 "$build/gdn" bench --device cuda --width 1024 --depth 12 --head-dim 128 --vocab 32000 \
  --seq 2048 --batch 8 --iters 3 2>&1 | tee -a "$log/train.log"
timeout 150 "$build/gdn" bench --device cuda --precision bf16 --width 1024 --depth 12 --head-dim 128 \
  --vocab 32000 --seq 2048 --batch 8 --iters 3 2>&1 | tee -a "$log/train.log"

step "summary"
{
  echo "max relative error per op and output (GPU vs CPU, over all shapes of the run):"
  grep '^RELERR' "$log/cuda_tests.log" | awk '{k=$2" "$3; v=$NF+0; if (!(k in m) || v > m[k]) m[k]=v; n[k]++}
    END {for (k in m) printf "  %-40s %.3e  (%d checks)\n", k, m[k], n[k]}' | sort
  grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$log/cuda_tests.log"
  echo "memcheck:  $(grep -E 'ERROR SUMMARY' "$log/memcheck.log" | tail -1)"
  echo "racecheck: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$log/racecheck.log" | tail -1)"
  grep -E 'worst relative train-loss|gdn bench|tokens/s|MFU|device memory' "$log/train.log"
  echo "exit status $status"
} 2>&1 | tee "$log/summary.txt"
exit $status
