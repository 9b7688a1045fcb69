#!/usr/bin/env bash
# Distributed runs on the CPU with OpenMPI: tensor-parallel, data-parallel and both together (up to
# 8 ranks), with and without ZeRO-1 and with many gradient buckets, must reproduce the single-rank
# losses (20 steps, within 1e-5 relative, fp32) for SP and muP, AdamW and SGD; bad layouts fail on
# rank 0 with a non-zero exit of the whole job; a rank that dies ends the job.
# Usage: tests/distributed_test.sh path/to/gdn
source "$(dirname "$0")/lib.sh" "$1"
pangram_data

# 12 key heads (width 64 * 0.75 / 4), MLP 128, vocabulary 128: divisible by 1, 2 and 4.
cat >base.textproto <<'SPEC'
model { width: 64 depth: 2 head_dim: 4 vocab_size: 128 chunk_size: 16 }
parametrization { base_width: 32 }
optimizer { warmup_steps: 3 weight_decay: 0.01 }
data { train_path: "data/train.bin" val_path: "data/val.bin" seq_len: 32 batch_size: 8 }
run { steps: 20 eval_interval: 10 eval_batches: 2 }
SPEC

# compare DIR_A DIR_B: every step's train_loss and val_loss within 1e-5 relative.
compare() {
  python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) == 20, f"{len(a)} vs {len(b)} steps"
worst = 0.0
for x, y in zip(a, b):
    for key in ("train_loss", "val_loss"):
        if key in x or key in y:
            worst = max(worst, abs(x[key] - y[key]) / abs(x[key]))
assert worst < 1e-5, f"max relative difference {worst:.3g}"
PY
}

# Learning rates in the stable range: at the edge of stability (AdamW 1e-2, SGD 0.1-0.3 here) fp32
# rounding differences, even between 1 and 2 threads on one rank, grow past 1e-5 in 20 steps.
for par in MUP SP; do
  for opt in ADAMW SGD; do
    lr=0.003
    [ "$opt" = SGD ] && lr=0.05
    common=(--spec base.textproto --quiet --set parametrization.kind=$par --set optimizer.kind=$opt
      --set optimizer.lr=$lr)
    ref=runs/$par-$opt-single
    "$gdn" train "${common[@]}" --set run.dir=$ref || { fail "$par $opt single rank"; continue; }
    # ranks, tensor_parallel, extra settings
    # ZeRO-1 shards the optimizer state over the data-parallel ranks; tiny buckets make many;
    # recomputed activations must change nothing.
    for layout in "2 2" "4 4" "2 1" "4 2" "2 1 data.micro_batch_size=2" "2 1 parallel.zero_stage=1" \
        "4 1 parallel.zero_stage=1" "4 2 parallel.zero_stage=1" "4 1 parallel.bucket_mb=0.002" \
        "2 2 run.recompute=true"; do
      read -r np tp extra <<<"$layout"
      dir=runs/$par-$opt-np$np-tp$tp${extra:+-${extra//[^a-z0-9]/_}}
      args=("${common[@]}" --set run.dir=$dir --set parallel.tensor_parallel=$tp)
      [ -n "$extra" ] && args+=(--set "$extra")
      if mpi "$np" "$gdn" train "${args[@]}" >"$dir.log" 2>&1; then
        out=$(compare "$ref" "$dir" 2>&1) && ok || fail "$par $opt np=$np tp=$tp $extra: $out"
      else
        fail "$par $opt np=$np tp=$tp $extra exited non-zero: $(tail -3 "$dir.log")"
      fi
    done
  done
done

# Tied embeddings (the vocabulary-parallel table serves as the head too) and grouped values.
for set in "model.tie_embeddings=true" "model.value_heads_per_key_head=2"; do
  "$gdn" train --spec base.textproto --quiet --set "$set" --set run.dir=runs/single-$set
  mpi 4 "$gdn" train --spec base.textproto --quiet --set "$set" --set parallel.tensor_parallel=2 \
    --set run.dir=runs/np4-$set >/dev/null 2>&1 || fail "$set np=4 tp=2 failed"
  out=$(compare runs/single-$set runs/np4-$set 2>&1) && ok || fail "$set: $out"
done

# The head and the vocabulary-parallel loss in chunks of rows (the test hook makes them small):
# the single rank's losses on TP 2 and DP 2 x TP 2 (within 1e-5, as every layout).
for np in 2 4; do
  GDN_TEST_MAX_LOGITS_ELEMENTS=500 mpi $np "$gdn" train --spec base.textproto --quiet \
    --set parametrization.kind=MUP --set optimizer.kind=ADAMW --set optimizer.lr=0.003 \
    --set parallel.tensor_parallel=2 --set run.dir=runs/chunked-np$np >/dev/null 2>&1 \
    || fail "chunked head np=$np failed"
  out=$(compare runs/MUP-ADAMW-single runs/chunked-np$np 2>&1) && ok || fail "chunked head np=$np: $out"
done

# Eight ranks, the layouts of an 8-GPU machine on CPUs: DP 8 (with ZeRO-1 too), DP 4 x TP 2,
# DP 2 x TP 4 and TP 8, on a model whose 8 key heads, MLP 128, vocabulary 128 and batch of 8 all
# divide by 8.
sed 's/head_dim: 4 /head_dim: 4 key_dim_ratio: 0.5 /' base.textproto >eight.textproto
eight=(--spec eight.textproto --quiet --set optimizer.lr=0.003)
"$gdn" train "${eight[@]}" --set run.dir=runs/eight-single || fail "8 key heads, single rank"
for layout in "1" "1 parallel.zero_stage=1" "2" "4" "8"; do
  read -r tp extra <<<"$layout"
  dir=runs/eight-tp$tp${extra:+-zero1}
  args=("${eight[@]}" --set run.dir=$dir --set parallel.tensor_parallel=$tp)
  [ -n "$extra" ] && args+=(--set "$extra")
  if mpi 8 "$gdn" train "${args[@]}" >"$dir.log" 2>&1; then
    out=$(compare runs/eight-single "$dir" 2>&1) && ok || fail "np=8 tp=$tp $extra: $out"
  else
    fail "np=8 tp=$tp $extra exited non-zero: $(tail -3 "$dir.log")"
  fi
done

# Bad layouts: one error line (from rank 0), a non-zero exit, nothing written.
bad_layout() {
  local np=$1 pattern=$2
  shift 2
  out=$(mpi "$np" "$gdn" train --spec base.textproto --set run.dir=runs/bad "$@" 2>&1)
  local rc=$?
  [ "$rc" -ne 0 ] && ok || fail "np=$np $*: exit 0"
  [ "$(grep -c '^error:' <<<"$out")" -eq 1 ] && ok || fail "np=$np $*: expected one error line: $out"
  grep -qE "$pattern" <<<"$out" && ok || fail "np=$np $*: no /$pattern/ in: $out"
  [ ! -e runs/bad ] && ok || { fail "np=$np $*: wrote runs/bad"; rm -rf runs/bad; }
}
bad_layout 3 "parallel.tensor_parallel: 2 does not divide the job's 3 ranks" --set parallel.tensor_parallel=2
bad_layout 4 "parallel.tensor_parallel: 8 does not divide the number of key heads \(12\)" --set parallel.tensor_parallel=8
bad_layout 2 "parallel.tensor_parallel: 2 does not divide the vocabulary size \(127\)" --set parallel.tensor_parallel=2 --set model.vocab_size=127
bad_layout 3 "data.batch_size: 8 is not divisible by the data-parallel size 3"
bad_layout 2 "data.micro_batch_size: 3 does not divide the 4 sequences" --set data.micro_batch_size=3
bad_layout 2 "parallel.zero_stage: must be 0 or 1" --set parallel.zero_stage=2
bad_layout 2 "parallel.bucket_mb: must be > 0" --set parallel.bucket_mb=0
out=$("$gdn" train --spec base.textproto --set parallel.tensor_parallel=2 --set run.dir=runs/bad 2>&1)
[ $? -eq 2 ] && grep -q "needs 2 ranks" <<<"$out" && ok || fail "tp=2 without mpirun: $out"

# The benchmark runs the trainer's step on a grid too: DP 2 with ZeRO-1 and TP 2 print their layout
# and a throughput; a layout that does not fit fails with the field named.
for args in "--zero:data parallel 2 x tensor parallel 1, ZeRO-1" "--tp 2:data parallel 1 x tensor parallel 2"; do
  flags=${args%%:*} want=${args#*:}
  out=$(mpi 2 "$gdn" bench --width 128 --head-dim 16 --depth 1 --seq 32 --batch 2 --iters 2 $flags 2>&1)
  grep -q "ranks: 2 ($want)" <<<"$out" && grep -qE "tokens/s \| [0-9]+ tokens/s per rank" <<<"$out" && ok \
    || fail "bench $flags: $out"
done
out=$(mpi 2 "$gdn" bench --width 128 --head-dim 16 --depth 1 --tp 4 2>&1)
[ $? -ne 0 ] && grep -q "parallel.tensor_parallel: 4" <<<"$out" && ok || fail "bench --tp 4 on 2 ranks: $out"

# A rank that dies ends the job (no hang): kill -9 one rank of a long run.
mpi 2 "$gdn" train --spec base.textproto --quiet --set run.steps=1000000 --set run.dir=runs/long \
  >long.log 2>&1 &
job=$!
for _ in $(seq 1 100); do [ -s runs/long/metrics.jsonl ] && break; sleep 0.2; done
victim=$(pgrep -f "run.dir=runs/long" | while read -r p; do
  [ "$(cat /proc/$p/comm 2>/dev/null)" = gdn ] && echo "$p"; done | tail -1)
if [ -z "$victim" ]; then
  fail "no rank of the long run found"
else
  kill -9 "$victim"
  for _ in $(seq 1 150); do kill -0 "$job" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$job" 2>/dev/null; then
    fail "job still running 30 s after a rank died"
    pkill -9 -f "run.dir=runs/long"
  else
    wait "$job"
    rc=$?
    [ "$rc" -ne 0 ] && ok || fail "job exited 0 after a rank died"
  fi
fi

# A rank that hangs (SIGSTOP after step 3) ends the job within GDN_COLLECTIVE_TIMEOUT_S, the rank
# waiting for it naming the collective; a bad timeout is refused before anything runs.
start=$SECONDS
out=$(GDN_COLLECTIVE_TIMEOUT_S=3 GDN_TEST_RAISE_AFTER_STEP=3:STOP:1 timeout 120 mpirun --oversubscribe \
  -x OMP_NUM_THREADS=1 -x GDN_COLLECTIVE_TIMEOUT_S -x GDN_TEST_RAISE_AFTER_STEP -np 2 "$gdn" train \
  --spec base.textproto --quiet --set run.steps=1000 --set run.dir=runs/hang 2>&1)
rc=$?
pkill -9 -f "run.dir=runs/hang" 2>/dev/null
[ $rc -ne 0 ] && [ $rc -ne 124 ] && ok || fail "hung rank: exit $rc (124: the job hung)"
grep -q "not finished after 3 s (GDN_COLLECTIVE_TIMEOUT_S): another rank stopped or hangs" <<<"$out" && ok \
  || fail "hung rank: no timeout message: $(tail -5 <<<"$out")"
[ $((SECONDS - start)) -lt 60 ] && ok || fail "hung rank: the job took $((SECONDS - start)) s to end"
out=$(GDN_COLLECTIVE_TIMEOUT_S=soon mpirun --oversubscribe -x GDN_COLLECTIVE_TIMEOUT_S -np 2 "$gdn" train \
  --spec base.textproto --set run.dir=runs/bad 2>&1)
[ $? -eq 2 ] && grep -q "^error: GDN_COLLECTIVE_TIMEOUT_S: 'soon' is not a number" <<<"$out" && [ ! -e runs/bad ] \
  && ok || fail "bad GDN_COLLECTIVE_TIMEOUT_S: $out"

# A sweep whose points run as their own 2-rank jobs, one of them tensor parallel: same losses.
cat >sweep.textproto <<'SPEC'
model { width: 64 depth: 1 head_dim: 4 vocab_size: 128 }
parametrization { base_width: 32 }
data { train_path: "data/train.bin" val_path: "data/val.bin" seq_len: 32 batch_size: 8 }
run { steps: 20 eval_interval: 0 eval_batches: 2 }
sweep { axes { field: "parallel.tensor_parallel" values: ["1", "2"] } dir: "runs/sweep" }
SPEC
"$gdn" sweep run --spec sweep.textproto --ranks 2 >sweep.log 2>&1 && ok || fail "sweep --ranks 2: $(cat sweep.log)"
[ "$(grep -c ',done,' runs/sweep/results.csv)" -eq 2 ] && ok || fail "sweep: both points should be done"
# Run directories are named <assignments>-<hash>; the sweep directory also holds the report (plots/).
dirs=(runs/sweep/*-*/)
[ "${#dirs[@]}" -eq 2 ] && out=$(compare "${dirs[0]}" "${dirs[1]}" 2>&1) && ok || fail "sweep tp=1 vs tp=2: $out"

# The same sweep in-process on one 2-rank job (tensor_parallel 2 for every point): one table, from
# rank 0, and the losses of the sweep above (sweep.axes cannot be cleared by --set: a copy of the
# spec replaces it with a one-point grid).
sed 's/sweep { axes .* dir: "runs\/sweep" }/sweep { seeds: [0] dir: "runs\/sweep2" }/' sweep.textproto >sweep2.textproto
out=$(mpi 2 "$gdn" sweep run --spec sweep2.textproto --set parallel.tensor_parallel=2 2>&1)
[ "$(grep -c 'best lr' <<<"$out")" -eq 1 ] && ok || fail "in-process sweep under mpirun: $out"
tp1=$(ls -d runs/sweep/*-*/ | head -1)
inproc=(runs/sweep2/*-*/)
[ "$(grep -c ',done,' runs/sweep2/results.csv)" -eq 1 ] && ok || fail "in-process sweep: not done"
out=$(compare "$tp1" "${inproc[0]}" 2>&1) && ok || fail "in-process sweep vs --ranks sweep: $out"

finish
