#!/usr/bin/env bash
# Installs what gdn needs on Debian 12 (as root, with apt-get) when it is missing, then configures
# and builds into build/. Arguments: extra commands to install when absent (e.g. npm). Used by launcher/quickstart.sh and tests/run.sh; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3 and python3-numpy: the tests' scripts (numpy for tests/fla_reference_check.py).
packages=(cmake ninja-build g++ protobuf-compiler libprotobuf-dev libabsl-dev
  libgoogle-glog-dev libgtest-dev libopenblas-openmp-dev openmpi-bin libopenmpi-dev zlib1g-dev
  gnuplot-nox python3 python3-numpy)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Extra commands the caller needs (e.g. npm), installed from Debian when not on the PATH (a
# machine may have them from elsewhere, e.g. node with its own npm).
for c in "$@"; do command -v "$c" >/dev/null || missing+=("$c"); done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

jobs=$(nproc)
mkdir -p build
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >build/configure.log 2>&1 ||
  { cat build/configure.log; exit 1; }
echo "setup: building with $jobs jobs"
cmake --build build -j "$jobs"
