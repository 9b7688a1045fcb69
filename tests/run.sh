#!/usr/bin/env bash
# Sets up (installs what is missing, builds) and runs every test with ctest.
# Extra arguments go to ctest, e.g. tests/run.sh -R Gradient.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launcher/setup.sh
# OpenMPI refuses root without these; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd build
ctest --output-on-failure --timeout 900 -j "$(nproc)" "$@"
