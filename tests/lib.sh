# Shared by the end-to-end shell tests: `source "$(dirname "$0")/lib.sh" "$1"` at the top.
# Sets gdn (the binary's absolute path), works in a fresh temporary folder removed on exit, counts
# checks (ok / fail MESSAGE; finish prints the tally and sets the exit status), and lets OpenMPI
# run as root (CI runs as root).
set -uo pipefail
gdn=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
failures=0
pass=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { pass=$((pass + 1)); }
finish() {
  echo "$pass passed, $failures failed"
  [ "$failures" -eq 0 ]
}
# mpi N CMD...: N ranks on however few cores, one OpenMP thread each.
mpi() { mpirun --oversubscribe -x OMP_NUM_THREADS=1 -np "$@"; }
# A small byte-level corpus in data/ (30 documents of 25 lines, every 10th for validation).
pangram_data() {
  mkdir -p corpus
  for i in $(seq 1 30); do
    for j in $(seq 1 25); do echo "doc $i line $j: pack my box with $((i * j)) dozen liquor jugs, $j."; done >"corpus/d$i.txt"
  done
  "$gdn" data prepare --input corpus --format text --out data --val-every 10 >/dev/null || fail "data prepare"
}
