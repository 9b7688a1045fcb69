#!/usr/bin/env bash
# `gdn bench allreduce` under mpirun on the CPU: the table from rank 0 with positive times and
# bandwidths in nccl-tests' convention for each collective, a wrong collective result caught (the
# GDN_TEST_BENCH_CORRUPT hook), one rank saying it measures nothing, and bad flags refused.
# Usage: tests/bench_collective_test.sh path/to/gdn
source "$(dirname "$0")/lib.sh" "$1"

# check_row OUT BYTES FACTOR: the row of BYTES has positive times (min <= median), algbw = BYTES /
# median and busbw = algbw * FACTOR (to the printed rounding).
check_row() {
  BENCH_OUT=$1 python3 - "$2" "$3" <<'PY'
import os, sys
want_bytes, factor = int(sys.argv[1]), eval(sys.argv[2])
lines = os.environ["BENCH_OUT"].splitlines()
rows = [l.split() for l in lines if l.split() and l.split()[0] == str(want_bytes)]
assert len(rows) == 1, f"{len(rows)} rows for {want_bytes} bytes"
b, med, lo, algbw, busbw = map(float, rows[0])
assert 0 < lo <= med, f"times {lo} {med}"
assert algbw > 0 and busbw > 0, f"bandwidths {algbw} {busbw}"
assert abs(algbw - b / (med * 1e-6) / 1e9) <= 2e-3 * algbw + 1e-3, f"algbw {algbw} vs {b}/{med}us"
assert abs(busbw - algbw * factor) <= 2e-3 * busbw + 1e-3, f"busbw {busbw} vs {algbw} * {factor}"
PY
}

# run NP OP SIZES EXPECTED_BYTES FACTOR
run() {
  local np=$1 op=$2 sizes=$3 bytes=$4 factor=$5
  out=$(mpi "$np" "$gdn" bench allreduce --device cpu --op "$op" --sizes "$sizes" --iters 3 \
    --warmup 1 2>&1)
  [ $? -eq 0 ] || { fail "np=$np $op exited non-zero: $out"; return; }
  [ "$(grep -c "^gdn bench allreduce: op $op, $np ranks" <<<"$out")" -eq 1 ] && ok ||
    fail "np=$np $op: expected one header line from rank 0: $out"
  grep -q "busbw (GB/s)" <<<"$out" && ok || fail "np=$np $op: no busbw column: $out"
  msg=$(check_row "$out" "$bytes" "$factor" 2>&1) && ok || fail "np=$np $op: $msg in: $out"
}
run 2 allreduce 1 1048576 "2*1/2"
run 4 allreduce 0.5,2 2097152 "2*3/4"
# 1 MiB is 262144 floats: rounded down to a multiple of 3 ranks.
run 3 reducescatter 1 1048572 "2/3"
run 3 allgather 1 1048572 "2/3"

# A wrong result on one rank fails the job before any timing, rank 0 naming that rank.
out=$(GDN_TEST_BENCH_CORRUPT=1 mpi 2 "$gdn" bench allreduce --sizes 1 --iters 3 2>&1)
rc=$?
[ "$rc" -eq 1 ] && ok || fail "corrupted result: exit $rc, expected 1: $out"
[ "$(grep -c '^error:' <<<"$out")" -eq 1 ] && grep -q "wrong result (rank 1: 1 of 262144 elements)" <<<"$out" &&
  ok || fail "corrupted result: expected one error naming rank 1: $out"
grep -qE '^ +1048576 ' <<<"$out" && fail "corrupted result: a bandwidth was printed: $out" || ok
out=$(GDN_TEST_BENCH_CORRUPT=0 mpi 3 "$gdn" bench allreduce --op allgather --sizes 1 --iters 3 2>&1)
[ $? -eq 1 ] && grep -q "rank 0: 1 of 262143 elements); rank 0: element 131071 is 3, expected 2" <<<"$out" &&
  ok || fail "corrupted all-gather on rank 0: $out"

# One rank: every collective is the identity; it says so and exits 0.
out=$("$gdn" bench allreduce --sizes 1 2>&1)
[ $? -eq 0 ] && grep -q "no bandwidth to measure" <<<"$out" && ok || fail "one rank: $out"

# Bad flags: exit 2, one error line naming the flag (once, from rank 0, under mpirun).
expect_usage() {
  local pattern=$1
  shift
  out=$("$@" 2>&1)
  local rc=$?
  [ "$rc" -eq 2 ] && ok || fail "'$*' exited $rc, expected 2: $out"
  [ "$(grep -c '^error:' <<<"$out")" -eq 1 ] && grep -qE -- "$pattern" <<<"$out" && ok ||
    fail "'$*': expected one error line matching /$pattern/: $out"
}
expect_usage "--sizes: '0' is not a size in MiB" "$gdn" bench allreduce --sizes 1,0
expect_usage "--sizes: 'x' is not a size in MiB" mpi 2 "$gdn" bench allreduce --sizes x
expect_usage "--sizes: '' is not" "$gdn" bench allreduce --sizes 1,,4
expect_usage "--sizes: '5000' is not a size in MiB > 0 and <= 4096" "$gdn" bench allreduce --sizes 5000
expect_usage "--op: 'broadcast' \(use allreduce, reducescatter or allgather\)" mpi 2 "$gdn" bench allreduce --op broadcast
expect_usage "--iters: 0 is not a count from 1" "$gdn" bench allreduce --iters 0
expect_usage "--warmup: -1 is not a count from 0" "$gdn" bench allreduce --warmup -1
expect_usage "--device: 'gpu' \(use cpu or cuda\)" "$gdn" bench allreduce --device gpu
expect_usage "unknown flag --width" "$gdn" bench allreduce --width 4

finish
