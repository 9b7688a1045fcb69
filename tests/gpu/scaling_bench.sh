#!/usr/bin/env bash
# Multi-GPU throughput on one machine with 2 or more GPUs (every figure printed by `gdn bench`):
#  - data-parallel weak scaling of the reference model (hidden 1024, 12 layers, 6 heads of dk 128,
#    dv 256, vocabulary 32000, bf16 matrix products, 8 x 2048 tokens per GPU) from 1 GPU to every
#    power of two up to the machine's GPUs, with and without ZeRO-1: efficiency = tokens/s per GPU
#    over the one-GPU rate;
#  - tensor parallelism: TP = t on a model t times as wide (width 1024 t), beside the same model
#    on one GPU;
#  - the gradient buckets' bus bandwidth inside the data-parallel step (on the communication
#    stream, while the backward runs) beside a standalone all-reduce of the same sizes
#    (`gdn bench allreduce`).
#
# Usage: tests/gpu/scaling_bench.sh [LOG_DIR]     (default: $OUT when set, else ./gpu-logs)
# Environment: see tests/gpu/gpu_build.sh (reuses its build folder).
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
log=${1:-${OUT:-$PWD/gpu-logs}}
mkdir -p "$log"
log=$(realpath "$log")
source "$root/tests/gpu/gpu_build.sh"
gdn_gpu_configure >/dev/null || exit 1
step "build"
cmake --build "$build" -j "$(nproc)" --target gdn 2>&1 | tail -1
gdn=$build/gdn
gpus=$(nvidia-smi -L | wc -l)
export NCCL_NVLS_ENABLE=0 OMP_NUM_THREADS=4
mpi=(mpirun --allow-run-as-root -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH -x OMP_NUM_THREADS -np)
ref=("${ref_model[@]}" --precision bf16 --iters 5)
out=$log/scaling.txt
# bench NAME COMMAND...: runs it (4 minutes at most), full output in bench-NAME.log.
bench() {
  local name=$1
  shift
  step "$name" | tee -a "$out"
  timeout 240 "$@" >"$log/bench-$name.log" 2>&1 || echo "FAIL: $name exited $?" | tee -a "$out"
  grep -E '^ranks|^training step|^MFU|^device memory|^data-parallel traffic|bucket sizes|^error' \
    "$log/bench-$name.log" | tee -a "$out"
}

bench dp1 "$gdn" bench "${ref[@]}" --width 1024
for ((n = 2; n <= gpus; n *= 2)); do
  bench dp$n "${mpi[@]}" $n "$gdn" bench "${ref[@]}" --width 1024
  bench dp$n-zero1 "${mpi[@]}" $n "$gdn" bench "${ref[@]}" --width 1024 --zero
done
for ((t = 2; t <= gpus; t *= 2)); do
  bench wide$t-1gpu "$gdn" bench "${ref[@]}" --width $((1024 * t))
  bench tp$t "${mpi[@]}" $t "$gdn" bench "${ref[@]}" --width $((1024 * t)) --tp $t
done
# Standalone all-reduce over every GPU at the bucket sizes the data-parallel runs used (MiB).
sizes=$(grep -h 'bucket sizes' "$log"/bench-dp2.log | head -1 | sed 's/.*://' | awk '{
  for (i = 1; i <= NF; i++) printf "%s%.3f", (i > 1 ? "," : ""), $i * 1e6 / 1048576 }')
if "$gdn" help 2>&1 | grep -q 'allreduce'; then
  bench allreduce "${mpi[@]}" "$gpus" "$gdn" bench allreduce --device cuda --sizes "$sizes"
  grep -E '^ +[0-9]' "$log/bench-allreduce.log" | tee -a "$out"
fi

step "summary" | tee -a "$out"
python3 - "$log" "$gpus" <<'PY' | tee -a "$out"
import glob, os, re, sys
log, gpus = sys.argv[1], int(sys.argv[2])
def rate(name):
    try:
        text = open(os.path.join(log, f"bench-{name}.log")).read()
    except OSError:
        return None
    m = re.search(r"\| ([0-9.]+) tokens/s \| ([0-9.]+) tokens/s per rank", text)
    return (float(m.group(1)), float(m.group(2))) if m else None
one = rate("dp1")
n = 2
while n <= gpus:
    for suffix in ("", "-zero1"):
        r = rate(f"dp{n}{suffix}")
        if one and r:
            print(f"data parallel {n}{suffix or ''}: {r[1]:.0f} tokens/s per GPU, "
                  f"weak-scaling efficiency {100 * r[1] / one[1]:.1f}% of one GPU's {one[1]:.0f}")
    # The buckets' time inside the step against the same all-reduces alone (gdn bench allreduce
    # ran over every GPU of the machine at the 2-GPU run's bucket sizes).
    if n == 2 and os.path.exists(os.path.join(log, "bench-allreduce.log")):
        rows = [l.split() for l in open(os.path.join(log, "bench-allreduce.log"))
                if re.match(r"^ +[0-9]", l)]
        alone_ms = sum(float(r[1]) for r in rows) / 1e3
        bus_bytes = sum(float(r[0]) for r in rows) * 2 * (n - 1) / n
        m = re.search(r"([0-9.]+) ms per step on the communication stream",
                      open(os.path.join(log, "bench-dp2.log")).read())
        if m and rows:
            inside = float(m.group(1))
            print(f"data parallel 2: the {len(rows)} bucket all-reduces take {inside:.2f} ms inside "
                  f"the step ({bus_bytes / inside / 1e6:.0f} GB/s bus bandwidth) and {alone_ms:.2f} ms "
                  f"alone ({bus_bytes / alone_ms / 1e6:.0f} GB/s)")
    w, t = rate(f"wide{n}-1gpu"), rate(f"tp{n}")
    if w and t:
        print(f"tensor parallel {n} on width {1024 * n}: {t[0]:.0f} tokens/s, "
              f"{t[0] / w[0]:.2f}x the same model on one GPU ({w[0]:.0f} tokens/s)")
    n *= 2
PY
