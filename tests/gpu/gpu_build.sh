# Sourced by the GPU-machine scripts (run_gpu_tests.sh, multi_gpu_check.sh): describes the machine,
# unpacks the Debian packages it lacks and configures a CUDA build, so those steps live in one place.
#
# Expects: root (the source tree), log (the log folder). Defines step (prints a timed heading).
# Environment: GDN_DEBS  folder of Debian .debs for what the machine lacks (abseil, glog, gflags,
#                        libunwind, OpenBLAS OpenMP build, libgfortran5); default: .deps in or above
#                        the source tree. They are unpacked with dpkg -x into GDN_DEPS_PREFIX
#                        (default /tmp/gdn-deps), never into /.
#              CUDA_ARCH architectures to build (default 90a); BUILD_DIR (default /tmp/gdn-build).
# Sets prefix, build and arch, exports LD_LIBRARY_PATH and PATH for the build and its binaries.
# Defines ref_model: `gdn bench` flags for the reference model of shared/docs/gpu-machine.md
# (12 layers, 6 heads of dk 128, dv 256, vocabulary 32000; batch 8 x 2048) but its width (1024;
# the tensor-parallel benchmark widens it).
step() { echo "=== $* ($(date -u +%H:%M:%S))"; }
ref_model=(--device cuda --depth 12 --head-dim 128 --vocab 32000 --seq 2048 --batch 8)
prefix=${GDN_DEPS_PREFIX:-/tmp/gdn-deps}
build=${BUILD_DIR:-/tmp/gdn-build}
arch=${CUDA_ARCH:-90a}

# Writes $log/env.txt and $log/build.log (configure output); non-zero when the build cannot go on.
gdn_gpu_configure() {
  local debs=${GDN_DEBS:-} d f
  if [[ -z "$debs" ]]; then
    for d in "$root/.deps" "$root/../.deps"; do [[ -d "$d" ]] && debs=$d && break; done
  fi
  step "machine" | tee "$log/env.txt"
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -2
    g++ --version | head -1; cmake --version | head -1; nproc; } 2>&1 | tee -a "$log/env.txt"

  step "dependencies from ${debs:-<none>} into $prefix"
  if [[ -n "$debs" ]]; then
    mkdir -p "$prefix"
    for f in "$debs"/*.deb; do dpkg -x "$f" "$prefix" || { echo "cannot unpack $f"; return 1; }; done
  fi
  local libdir=$prefix/usr/lib/x86_64-linux-gnu
  # glog's CMake config names its find modules (FindUnwind) by the absolute /usr/share path of an
  # installed package: point it at the unpacked copy.
  local glog_modules=$libdir/cmake/glog/glog-modules.cmake
  [[ -f "$glog_modules" ]] && sed -i "s|\"/usr/share/glog/cmake\"|\"$prefix/usr/share/glog/cmake\"|" "$glog_modules"
  # glog's own dependencies (gflags, libunwind) and OpenBLAS's libgfortran are found through this
  # at run time (the executables' RUNPATH covers direct dependencies only); test discovery at build
  # time runs the test binaries too.
  export LD_LIBRARY_PATH=$libdir:$libdir/openblas-openmp:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export PATH=/usr/local/cuda/bin:$PATH

  step "configure (CUDA architectures $arch)"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix/usr" \
    -DGDN_DEPS_PREFIX="$prefix" -DCMAKE_CUDA_ARCHITECTURES="$arch" 2>&1 | tee "$log/build.log" \
    || { echo "configure failed"; return 1; }
  grep -q "CUDA backend: on" "$log/build.log" || { echo "CUDA backend not enabled"; return 1; }
}
