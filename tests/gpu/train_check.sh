#!/usr/bin/env bash
# On a GPU machine: the same run trained on the CPU and on CUDA (float32) must give the same loss
# at every step, within 1e-6 relative over 50 steps (issue 5 accepts 1e-4; about 2e-8 measured),
# once with head sizes the chunked CUDA kernel takes (dk 64, dv 128) and once with ones only the
# sequential kernel takes; with bf16 matrix products (run.precision BF16) within 2e-3 (issue 5
# accepts 2e-2; about 2e-4 measured) and falling as on the CPU; the same
# with run.save_recurrence (the recurrence's backward reading its forward's states). Two CUDA runs
# are not bitwise equal (the embedding's gradient adds with atomics); the model test
# SavedRecurrenceGivesTheSameGradients compares one step's gradients exactly.
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
  for run in CPU:CPU:FP32 CUDA:CUDA:FP32 CUDA_BF16:CUDA:BF16 CUDA_SAVED:CUDA:FP32:true \
      CUDA_BF16_SAVED:CUDA:BF16:true; do
    IFS=: read -r name device precision save <<<"$run"
    "$gdn" train --spec spec.textproto --set run.dir=runs/$name --set run.device=$device \
      --set run.precision=$precision --set run.save_recurrence=${save:-false} | tail -2 || status=1
  done
  for pair in CUDA:1e-6 CUDA_BF16:2e-3 CUDA_SAVED:1e-6 CUDA_BF16_SAVED:2e-3; do
    IFS=: read -r name tol <<<"$pair"
    paste -d' ' <(grep -o '"train_loss":[^,]*' runs/CPU/metrics.jsonl | cut -d: -f2) \
                <(grep -o '"train_loss":[^,]*' runs/$name/metrics.jsonl | cut -d: -f2) |
      awk -v m="$model" -v name="$name" -v tol="$tol" '
        { d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > worst) { worst = d; at = NR } n++
          if (NR == 1) { first = $2 } last = $2 }
        END { ok = n == 50 && worst <= tol && last < first - 0.5
              printf "model { %s }: %d steps, worst relative train-loss difference CPU vs %s %.2e (step %d; tolerance %s), loss %.3f -> %.3f: %s\n",
                     m, n, name, worst, at, tol, first, last, ok ? "PASS" : "FAIL"; exit !ok }' || status=1
  done
done
exit $status
