#!/usr/bin/env bash
# Checkpoints and resume, end to end: a run killed (kill -9, in the middle of a checkpoint, with
# its newest checkpoint corrupted) or preempted (SIGTERM, SIGUSR2 on any rank) and run again must
# give exactly the metrics of a run that was never interrupted, on one rank and on DP 2 x TP 2
# (with and without ZeRO-1); checkpoints also resume on another layout (a ZeRO-1 one on DP 4).
# Usage: tests/resume_test.sh path/to/gdn
source "$(dirname "$0")/lib.sh" "$1"
export OMP_NUM_THREADS=1 OMPI_MCA_rmaps_base_oversubscribe=1
mpirun=(mpirun --oversubscribe -x OMP_NUM_THREADS -x GDN_TEST_RAISE_AFTER_STEP -x GDN_TEST_KILL_IN_CHECKPOINT)
check() { if eval "$1"; then ok; else fail "$2"; fi; }

mkdir -p corpus
for i in $(seq 1 30); do
  for j in $(seq 1 30); do echo "document $i line $j: the quick brown fox $((i * j)) jumps over the lazy dog $j."; done >"corpus/doc$i.txt"
done
"$gdn" data prepare --input corpus --format text --out data --val-every 10 >/dev/null || { echo "FAIL: data"; exit 1; }

# 24 steps, a checkpoint every 6, the newest 2 kept; tensor_parallel 2 holds for the MPI runs.
cat >spec.textproto <<'SPEC'
model { width: 32 depth: 2 head_dim: 4 chunk_size: 16 }
parametrization { base_width: 32 }
optimizer { lr: 0.01 warmup_steps: 2 }
data { train_path: "data/train.bin" val_path: "data/val.bin" seq_len: 32 batch_size: 4 }
run { steps: 24 eval_interval: 12 eval_batches: 2 checkpoint_interval: 6 keep_checkpoints: 2 }
SPEC

# Everything but the wall-clock throughput, one line a step.
metrics() { sed -E 's/"tokens_per_s":[^,]*,//' "$1/metrics.jsonl"; }
same_run() {  # same_run DIR REFERENCE: identical metrics and final losses
  if [ "$(metrics "$1")" = "$(metrics "$2")" ] && [ "$(cat "$1/status")" = done ] &&
     [ "$(grep -o '"train_loss":[^,]*,"val_loss":[^,]*' "$1/summary.json")" = \
       "$(grep -o '"train_loss":[^,]*,"val_loss":[^,]*' "$2/summary.json")" ]; then
    ok
  else
    fail "$1 differs from $2:"; diff <(metrics "$1") <(metrics "$2") | head -5
  fi
}
train() { "$gdn" train --spec spec.textproto --set run.dir="$@"; }
# run_expect CODE LOGFILE -- command...
run_expect() {
  local code=$1 log=$2
  shift 3
  "$@" >"$log" 2>&1
  local rc=$?
  [ "$rc" -eq "$code" ] && ok || { fail "'$*' exited $rc, expected $code"; tail -5 "$log"; }
}
ckpts() { ls "$1/checkpoints" | tr '\n' ' '; }

# --- one rank
run_expect 0 straight.log -- train runs/straight
check '[ "$(ckpts runs/straight)" = "step_00000018 step_00000024 " ]' \
  "keep_checkpoints 2 should leave steps 18 and 24: $(ckpts runs/straight)"

# kill -9 after step 9: the metrics of steps 7-9 are dropped and taken again from step 6's checkpoint.
GDN_TEST_RAISE_AFTER_STEP=9:KILL run_expect 137 killed.log -- train runs/killed
check '[ "$(wc -l <runs/killed/metrics.jsonl)" -eq 9 ] && [ "$(cat runs/killed/status)" = running ]' \
  "killed run should have 9 metrics lines and status running"
# It resumes with run.recompute and run.save_recurrence toggled: neither is part of a run's identity.
run_expect 0 resumed.log -- train runs/killed --set run.recompute=true --set run.save_recurrence=true
check 'grep -q "resuming from step 6" resumed.log' "no 'resuming from step 6': $(head -2 resumed.log)"
same_run runs/killed runs/straight

# Killed in the middle of writing step 12's checkpoint: step 6's is used.
GDN_TEST_KILL_IN_CHECKPOINT=12 run_expect 137 midckpt.log -- train runs/midckpt
check '[ -d runs/midckpt/checkpoints/step_00000012.tmp ] && [ ! -e runs/midckpt/checkpoints/step_00000012 ]' \
  "a checkpoint killed midway must stay a .tmp directory: $(ckpts runs/midckpt)"
run_expect 0 midckpt2.log -- train runs/midckpt
check 'grep -q "resuming from step 6" midckpt2.log' "mid-checkpoint kill should resume from step 6"
check '[ ! -e runs/midckpt/checkpoints/step_00000012.tmp ]' "the unfinished .tmp checkpoint should be cleaned up"
same_run runs/midckpt runs/straight

# The newest checkpoint corrupted (one byte flipped) or truncated: skipped with a warning.
for damage in flip truncate; do
  GDN_TEST_RAISE_AFTER_STEP=13:KILL run_expect 137 $damage.log -- train runs/$damage
  shard=runs/$damage/checkpoints/step_00000012/shard-0-of-1.safetensors
  if [ $damage = flip ]; then
    printf '\x55' | dd of="$shard" bs=1 seek=$(($(stat -c %s "$shard") - 100)) conv=notrunc status=none
  else
    truncate -s -1000 "$shard"
  fi
  run_expect 0 $damage-resumed.log -- train runs/$damage
  check "grep -q 'skipping checkpoint .*step_00000012.*$([ $damage = flip ] && echo corrupted || echo truncated)' $damage-resumed.log" \
    "$damage: no warning naming the damaged checkpoint: $(grep -i skip $damage-resumed.log)"
  check "grep -q 'resuming from step 6' $damage-resumed.log" "$damage: should resume from step 6"
  same_run runs/$damage runs/straight
done

# Preempted by SIGTERM (as a scheduler would) after step 8: checkpoint, status, exit 4.
GDN_TEST_RAISE_AFTER_STEP=8:TERM run_expect 4 preempt.log -- train runs/preempt
check '[ "$(cat runs/preempt/status)" = preempted ] && [ -f runs/preempt/checkpoints/step_00000008/MANIFEST ]' \
  "preempted run: status $(cat runs/preempt/status), checkpoints $(ckpts runs/preempt)"
check 'grep -q "preempted after step 8" preempt.log' "no preemption message"
run_expect 0 preempt2.log -- train runs/preempt
same_run runs/preempt runs/straight

# keep_checkpoints 0: a preemption's checkpoint carries the run; once done, no checkpoint is left.
GDN_TEST_RAISE_AFTER_STEP=8:TERM run_expect 4 keep0.log -- train runs/keep0 --set run.keep_checkpoints=0
check '[ "$(ckpts runs/keep0)" = "step_00000008 " ]' \
  "keep 0, preempted: checkpoints $(ckpts runs/keep0)"
run_expect 0 keep0b.log -- train runs/keep0 --set run.keep_checkpoints=0
check '[ "$(cat runs/keep0/status)" = done ] && [ ! -e runs/keep0/checkpoints ]' \
  "keep 0, done: status $(cat runs/keep0/status), checkpoints left: $(ckpts runs/keep0 2>&1)"
same_run runs/keep0 runs/straight

# A checkpoint on request (SIGUSR1, run.checkpoint_signals) at step 9; the run goes on unchanged.
GDN_TEST_RAISE_AFTER_STEP=9:USR1 run_expect 0 request.log -- train runs/request --set run.keep_checkpoints=5
check '[ "$(ckpts runs/request)" = "step_00000006 step_00000009 step_00000012 step_00000018 step_00000024 " ]' \
  "SIGUSR1 should add a checkpoint at step 9: $(ckpts runs/request)"
same_run runs/request runs/straight

# signal_from_outside SIGNAL DIR FILE -- command...: a long run (run.dir DIR) signalled once it has
# taken a step must exit 4 with FILE in the checkpoint of the last step it logged.
signal_from_outside() {
  local sig=$1 dir=$2 file=$3
  shift 4
  "$@" --set run.dir="$dir" --set run.steps=100000 --set run.checkpoint_interval=0 >"$dir.log" 2>&1 &
  local pid=$! rc last
  for _ in $(seq 1 300); do [ -s "$dir/metrics.jsonl" ] && break; sleep 0.1; done
  kill -"$sig" $pid
  wait $pid
  rc=$?
  last=$(tail -1 "$dir/metrics.jsonl" | sed -E 's/^\{"step":([0-9]+),.*/\1/')
  check "[ $rc -eq 4 ] && [ -f $dir/checkpoints/step_$(printf %08d "$last")/$file ]" \
    "SIG$sig from outside: exit $rc, last step $last, checkpoints $(ckpts "$dir")"
}

# A real SIGTERM from outside, at whatever step the run has reached.
signal_from_outside TERM runs/signal MANIFEST -- "$gdn" train --spec spec.textproto

# A second trainer in a directory a running one holds is refused, naming it; the first goes on.
"$gdn" train --spec spec.textproto --set run.dir=runs/locked --set run.steps=100000 \
  --set run.checkpoint_interval=0 >locked.log 2>&1 &
holder=$!
for _ in $(seq 1 300); do [ -s runs/locked/metrics.jsonl ] && break; sleep 0.1; done
run_expect 1 locked2.log -- train runs/locked
check "grep -q 'run.dir: runs/locked is in use by another gdn process (pid $holder)' locked2.log" \
  "second trainer: $(tail -1 locked2.log)"
kill -TERM $holder
wait $holder
check "[ $? -eq 4 ] && [ \"\$(cat runs/locked/status)\" = preempted ]" "the holder should have run on to its preemption"

# A finished run's directory is not touched again; a different run there is refused.
run_expect 0 again.log -- train runs/straight
check 'grep -q "already done" again.log' "a finished run should be reported, not rerun"

# --- DP 2 x TP 2 on 4 ranks
mpitrain() { "${mpirun[@]}" -np 4 "$gdn" train --spec spec.textproto --set parallel.tensor_parallel=2 --set run.dir="$@"; }
run_expect 0 mpi.log -- mpitrain runs/mpi
check '[ -f runs/mpi/checkpoints/step_00000024/shard-1-of-2.safetensors ]' "no TP shard files: $(ls runs/mpi/checkpoints/*)"
GDN_TEST_RAISE_AFTER_STEP=9:KILL "${mpirun[@]}" -np 4 "$gdn" train --spec spec.textproto \
  --set parallel.tensor_parallel=2 --set run.dir=runs/mpi_killed >mpi_killed.log 2>&1
rc=$?
check '[ $rc -ne 0 ] && [ "$(wc -l <runs/mpi_killed/metrics.jsonl)" -eq 9 ]' "rank 0 kill -9 should end the MPI job after step 9"
run_expect 0 mpi_resumed.log -- mpitrain runs/mpi_killed
check 'grep -q "resuming from step 6" mpi_resumed.log' "MPI run should resume from step 6"
same_run runs/mpi_killed runs/mpi

# SIGUSR2 on rank 3 only: every rank checkpoints the same step and exits 4.
GDN_TEST_RAISE_AFTER_STEP=8:USR2:3 run_expect 4 mpi_preempt.log -- mpitrain runs/mpi_preempt
check '[ "$(cat runs/mpi_preempt/status)" = preempted ] && [ -f runs/mpi_preempt/checkpoints/step_00000008/MANIFEST ]' \
  "MPI preemption from rank 3: status $(cat runs/mpi_preempt/status), $(ckpts runs/mpi_preempt)"
run_expect 0 mpi_preempt2.log -- mpitrain runs/mpi_preempt
same_run runs/mpi_preempt runs/mpi

# A real SIGUSR2 sent to mpirun reaches every rank: checkpoint and exit 4.
signal_from_outside USR2 runs/mpi_signal shard-1-of-2.safetensors -- \
  "${mpirun[@]}" -np 4 "$gdn" train --spec spec.textproto --set parallel.tensor_parallel=2

# ZeRO-1 (optimizer state sharded over the 2 data-parallel ranks): a run killed after step 9 and
# run again is exactly the uninterrupted one; its checkpoints hold the whole state, so one of them
# also resumes with the sharding off.
zerotrain() { mpitrain "$@" --set parallel.zero_stage=1; }
run_expect 0 zero.log -- zerotrain runs/zero
GDN_TEST_RAISE_AFTER_STEP=9:KILL "${mpirun[@]}" -np 4 "$gdn" train --spec spec.textproto \
  --set parallel.tensor_parallel=2 --set parallel.zero_stage=1 --set run.dir=runs/zero_killed >zero_killed.log 2>&1
check '[ "$(wc -l <runs/zero_killed/metrics.jsonl)" -eq 9 ]' "the ZeRO-1 job should end after step 9"
cp -r runs/zero_killed runs/zero_to_plain
cp -r runs/zero_killed runs/zero_to_dp4
run_expect 0 zero_resumed.log -- zerotrain runs/zero_killed
check 'grep -q "resuming from step 6" zero_resumed.log' "ZeRO-1 run should resume from step 6"
same_run runs/zero_killed runs/zero
run_expect 0 zero_to_plain.log -- mpitrain runs/zero_to_plain
a=$(grep -o '"train_loss":[^,]*' runs/zero_to_plain/summary.json | cut -d: -f2)
b=$(grep -o '"train_loss":[^,]*' runs/zero/summary.json | cut -d: -f2)
check "awk -v a=$a -v b=$b 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-6 * b) }'" \
  "a ZeRO-1 checkpoint resumed without sharding: final loss $a vs $b"
# The same ZeRO-1 checkpoint (DP 2 x TP 2) resumed on another data-parallel size: DP 4, its state
# sharded 4 ways. Sums run in another order, so every step's training and validation loss agrees
# with the uninterrupted ZeRO-1 run's to float32 rounding (1e-5 relative, as for resharding below).
losses() { grep -o '"\(train\|val\)_loss":[^,}]*' "$1/metrics.jsonl" | cut -d: -f2; }
close_losses() {  # close_losses DIR REFERENCE TOLERANCE: the same steps, each loss within TOLERANCE
  [ "$(wc -l <"$1/metrics.jsonl")" -eq "$(wc -l <"$2/metrics.jsonl")" ] &&
    paste <(losses "$1") <(losses "$2") | awk -v tol="$3" '
      { d = $1 - $2; if (d < 0) d = -d; if (NF != 2 || !(d <= tol * $2)) bad++; n++ }
      END { exit !(n > 0 && bad == 0) }'
}
run_expect 0 zero_to_dp4.log -- "${mpirun[@]}" -np 4 "$gdn" train --spec spec.textproto \
  --set parallel.zero_stage=1 --set run.dir=runs/zero_to_dp4
check 'grep -q "resuming from step 6" zero_to_dp4.log && grep -q "(dp 4 x tp 1)" zero_to_dp4.log' \
  "the ZeRO-1 checkpoint on DP 4 should resume from step 6: $(head -2 zero_to_dp4.log)"
check 'grep -q "\"ranks\":4,\"tensor_parallel\":1," runs/zero_to_dp4/summary.json' \
  "the DP 4 run's summary: $(cat runs/zero_to_dp4/summary.json)"
check 'close_losses runs/zero_to_dp4 runs/zero 1e-5' "a ZeRO-1 checkpoint resumed on DP 4:
$(paste <(losses runs/zero_to_dp4) <(losses runs/zero) | head -30)"

# Another layout: the one-rank checkpoint of step 6 resumed on TP 2 (and DP 2) reshards. Sums run
# in another order, so the losses agree to float32 rounding rather than bit for bit.
cp -r runs/killed runs/reshard
rm -rf runs/reshard/checkpoints/step_00000024 runs/reshard/checkpoints/step_00000018 runs/reshard/summary.json
mkdir -p runs/reshard/checkpoints && cp -r runs/straight/checkpoints/step_00000018 runs/reshard/checkpoints/
echo running >runs/reshard/status
run_expect 0 reshard.log -- mpitrain runs/reshard
check 'grep -q "resuming from step 18" reshard.log' "reshard run should resume from step 18: $(head -1 reshard.log)"
a=$(grep -o '"train_loss":[^,]*' runs/reshard/summary.json | cut -d: -f2)
b=$(grep -o '"train_loss":[^,]*' runs/straight/summary.json | cut -d: -f2)
check "awk -v a=$a -v b=$b 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-5 * b) }'" \
  "TP 2 x DP 2 resume of a one-rank checkpoint: final loss $a vs $b"

finish
