#!/usr/bin/env bash
# One training step of the reference model, broken down by GPU kernel: Nsight Compute (ncu) times
# every kernel of `gdn bench --iters 1` (three steps: warm-up, timed, per-op profiled), and the
# summary gives each kernel's time per step, its share, and how the kernels' sum compares with the
# step's wall time (the difference is time the GPU waits for the host). Needs a built gdn.
#
# Usage: tests/gpu/kernel_breakdown.sh GDN_BINARY LOG_DIR [extra gdn bench flags...]
set -uo pipefail
gdn=$1 log=$2
shift 2
mkdir -p "$log"
args=(bench --device cuda --width 1024 --depth 12 --head-dim 128 --vocab 32000 --seq 2048 --batch 8
      --iters 1 "$@")
echo "=== $gdn ${args[*]} (without ncu, for the step's wall time)"
"$gdn" "${args[@]}" 2>&1 | tee "$log/bench_plain.log" | grep -E "training step|tokens/s|memory"
echo "=== the same under ncu (every kernel, gpu__time_duration)"
timeout 420 ncu --clock-control none --print-units base --metrics gpu__time_duration.sum --csv \
  "$gdn" "${args[@]}" >"$log/ncu.csv" 2>"$log/ncu.err" || { echo "ncu failed:"; tail -5 "$log/ncu.err"; }
wall=$(grep -oE "median of [0-9]+\): [0-9.]+ s" "$log/bench_plain.log" | awk '{print $NF * 1000}')
# Three steps ran: warm-up, the timed one, the per-op profiled one.
python3 "$(dirname "$0")/ncu_summary.py" "$log/ncu.csv" 3 $wall 2>&1 | tee "$log/kernels.txt"
