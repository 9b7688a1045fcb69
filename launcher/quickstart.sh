#!/usr/bin/env bash
# The quick start: set up, build, prepare the Brown Corpus, run the default width x learning-rate
# sweep under muP on the CPU (experiments/quickstart.textproto) and print its table.
# Extra arguments go to `gdn sweep run`, e.g. --set run.steps=50.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launcher/setup.sh npm
bash launcher/fetch_brown.sh data
build/gdn sweep run --spec experiments/quickstart.textproto "$@"
