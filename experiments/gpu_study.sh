#!/usr/bin/env bash
# The muP transfer studies on one GPU machine: the GPU learning-rate sweeps (experiments/
# lr_transfer_gpu_*.textproto) on its GPUs, and beside them, on its CPU cores, the CPU sweeps named
# in CPU_SPECS. Every sweep resumes where it stopped, so the script can be run again (same machine,
# or a runs/ folder brought back) until all are done. After TIME_LIMIT seconds the sweeps are
# preempted (their runs checkpoint and exit 4). Then the run directories without their checkpoints
# (spec, status, metrics, summary, job log) and the logs go into one file, $OUT/study.tgz (the GPU
# tool brings back few files); `tar -xzf study.tgz` here and `gdn sweep report` make the reports.
#
# Usage: experiments/gpu_study.sh [OUT]      Environment: TIME_LIMIT (default 480), GPUS (default:
# all), CPU_SPECS (default: the SGD CPU study, head-size, init-std and alpha_out transfer specs),
# GPU_SPECS, plus tests/gpu/gpu_build.sh's.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${OUT:-$PWD/gpu-logs}}
mkdir -p "$out" && out=$(realpath "$out")
log=$(realpath -m "${root}/runs/study-logs")
mkdir -p "$log"
start=$(date +%s)
source "$root/tests/gpu/gpu_build.sh"
gdn_gpu_configure || exit 1
step "build"
cmake --build "$build" -j "$(nproc)" --target gdn 2>&1 | tail -2 | tee -a "$log/build.log"
[[ -x "$build/gdn" ]] || { echo "build failed"; exit 1; }
gdn=$build/gdn
cd "$root" || exit 1

gpus=${GPUS:-$(nvidia-smi -L | wc -l)}
gpu_specs=${GPU_SPECS:-experiments/lr_transfer_gpu_adamw.textproto experiments/lr_transfer_gpu_sgd.textproto}
cpu_specs=${CPU_SPECS:-experiments/lr_transfer_cpu_sgd.textproto experiments/head_size_cpu_adamw.textproto experiments/head_size_cpu_sgd.textproto experiments/init_std_transfer_cpu.textproto experiments/alpha_out_transfer_cpu.textproto}
# Cores: one per GPU run process, the rest to single-threaded CPU runs.
gpu_parallel=$((3 * gpus))
cpu_parallel=$(( ($(nproc) - gpu_parallel) / $(echo $cpu_specs | wc -w) ))
(( cpu_parallel < 1 )) && cpu_parallel=1
step "GPU sweeps on $gpus GPUs ($gpu_parallel at once); CPU sweeps $cpu_parallel at once each"
for spec in $cpu_specs; do
  OMP_NUM_THREADS=1 "$gdn" sweep run --spec "$spec" --parallel "$cpu_parallel" \
    > "$log/$(basename "$spec" .textproto).log" 2>&1 &
done
rm -f "$log/stop"
( for spec in $gpu_specs; do
    [[ -f "$log/stop" ]] && exit 4
    OMP_NUM_THREADS=2 "$gdn" sweep run --spec "$spec" --gpus "$gpus" --parallel "$gpu_parallel" \
      > "$log/$(basename "$spec" .textproto).log" 2>&1 || exit $?
  done ) &
limit=${TIME_LIMIT:-480}
while jobs -r | grep -q .; do
  (( $(date +%s) - start > limit )) && break
  sleep 5
done
if jobs -r | grep -q .; then
  step "time limit: preempting the sweeps"
  touch "$log/stop"
  pkill -USR2 -f "gdn sweep run"
fi
wait
step "reports"
for spec in $gpu_specs $cpu_specs; do
  name=$(basename "$spec" .textproto)
  "$gdn" sweep status --spec "$spec" > "$log/$name.status.txt" 2>&1
  tail -3 "$log/$name.status.txt"
done
tar -czf "$out/study.tgz" --exclude=checkpoints runs
ls -la "$out"
