#!/usr/bin/env bash
# On a GPU machine: the same run trained on the CPU and on CUDA (float32) must give the same loss
# at every step, within 1e-4 relative over 50 steps (issue 5's acceptance), once with head sizes
# the chunked CUDA kernel takes (dk 64, dv 128) and once with ones only the sequential kernel takes.
# Usage: tests/gpu/train_check.sh path/to/gdn WORKDIR      Exit status: non-zero on a mismatch.
set -uo pipefail
gdn=$(realpath "$1")
work=$2
mkdir -p "$work" && cd "$work" || exit 1
mkdir -p corpus
for i in $(seq 1 60); do
  for j in $(seq 1 40); do echo "document $i line $j: the quick brown fox $((i * j)) jumps over the lazy dog $j."; done >"corpus/doc$i.txt"
done
"$gdn" data prepare --input corpus --format text --out data --val-every 10 >/dev/null || exit 1
status=0
for model in "width: 256 depth: 2 head_dim: 64" "width: 64 depth: 2 head_dim: 16"; do
  cat >spec.textproto <<SPEC
model { $model }
parametrization { base_width: 64 }
optimizer { lr: 1e-3 warmup_steps: 5 }
data { train_path: "data/train.bin" val_path: "data/val.bin" seq_len: 128 batch_size: 8 }
run { steps: 50 eval_interval: 25 eval_batches: 2 log_interval: 25 }
SPEC
  rm -rf runs
  for device in CPU CUDA; do
    "$gdn" train --spec spec.textproto --set run.dir=runs/$device --set run.device=$device | tail -2 || status=1
  done
  paste -d' ' <(grep -o '"train_loss":[^,]*' runs/CPU/metrics.jsonl | cut -d: -f2) \
              <(grep -o '"train_loss":[^,]*' runs/CUDA/metrics.jsonl | cut -d: -f2) |
    awk -v m="$model" '{ d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > worst) { worst = d; at = NR } n++ }
      END { printf "model { %s }: %d steps, worst relative train-loss difference CPU vs CUDA %.2e (step %d): %s\n",
            m, n, worst, at, (n == 50 && worst <= 1e-4) ? "PASS" : "FAIL"; exit !(n == 50 && worst <= 1e-4) }' || status=1
done
exit $status
