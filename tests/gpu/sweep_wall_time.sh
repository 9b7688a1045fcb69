#!/usr/bin/env bash
# A sweep grid as concurrent single-GPU runs (issue 9: eight at once on an 8-GPU machine): runs
# SPEC's grid from scratch through `gdn sweep run --gpus G --parallel G` (each run in its own
# process on its own GPU) and prints the grid's total wall time beside the sum of its runs' process
# times (as the sweep prints them) and training times (summary.json's elapsed_s): concurrency =
# process time / wall time (G at best).
#
# Usage: tests/gpu/sweep_wall_time.sh [LOG_DIR]     (default: $OUT when set, else ./gpu-logs)
# Environment: SPEC (default experiments/lr_transfer_gpu_adamw.textproto: 90 runs, the Brown
# Corpus data in data/brown, made here by launcher/fetch_brown.sh and carried to the GPU machine),
# GPUS (default: all of the machine's; 0 runs on the CPU, for a check of this script),
# PARALLEL (default: GPUS), SETS (more --set flags for the spec), plus tests/gpu/gpu_build.sh's
# (GDN=path uses that gdn instead of building one).
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
log=${1:-${OUT:-$PWD/gpu-logs}}
mkdir -p "$log"
log=$(realpath "$log")
cd "$root" || exit 1
source "$root/tests/gpu/gpu_build.sh"
if [[ -n "${GDN:-}" ]]; then
  gdn=$GDN
else
  gdn_gpu_configure >/dev/null || exit 1
  step "build"
  cmake --build "$build" -j "$(nproc)" --target gdn 2>&1 | tail -1
  gdn=$build/gdn
fi
spec=${SPEC:-experiments/lr_transfer_gpu_adamw.textproto}
gpus=${GPUS:-$(nvidia-smi -L | wc -l)}
parallel=${PARALLEL:-$gpus}
((parallel >= 1)) || { echo "error: PARALLEL must be at least 1"; exit 1; }
dir=$(realpath -m "runs/sweep-wall-time")
rm -rf "$dir"  # from scratch: a resumed grid would time only its remainder
args=(--spec "$spec" --set "sweep.dir=$dir" --parallel "$parallel" --gpus "$gpus")
for s in ${SETS:-}; do args+=(--set "$s"); done
out=$log/sweep_wall_time.txt

step "$spec: $parallel runs at once on $gpus GPUs" | tee "$out"
start=$EPOCHREALTIME
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$gdn" sweep run "${args[@]}" >"$log/sweep.log" 2>&1
rc=$?
end=$EPOCHREALTIME
tail -3 "$log/sweep.log" | tee -a "$out"
python3 - "$dir" "$start" "$end" "$rc" "$parallel" "$log/sweep.log" <<'PY' | tee -a "$out"
import json, pathlib, re, sys
root = pathlib.Path(sys.argv[1])
wall = float(sys.argv[3]) - float(sys.argv[2])
rc, parallel = int(sys.argv[4]), int(sys.argv[5])
runs = sorted(p.parent for p in root.glob("*/point.textproto"))
train = [json.loads((r / "summary.json").read_text())["elapsed_s"] for r in runs
         if (r / "summary.json").exists()]
# Each finished run's process time, as `gdn sweep run` prints it ("[i/n] id: done | ... | 93s").
proc = [int(m.group(1)) for m in re.finditer(r"^\[\d+/\d+\] .*: done \|.* \| (\d+)s$",
                                              pathlib.Path(sys.argv[6]).read_text(), re.M)]
print(f"gdn sweep run exit {rc}: {len(train)} of {len(runs)} runs finished")
if train:
    print(f"total wall time {wall:.1f} s for {len(runs)} runs, {parallel} at a time; the runs' "
          f"processes took {sum(proc)} s together (longest {max(proc, default=0)} s), their "
          f"training {sum(train):.1f} s; concurrency (process time / wall time) "
          f"{sum(proc) / wall:.2f} of {parallel}")
sys.exit(0 if rc == 0 and runs and len(train) == len(runs) else 1)
PY
