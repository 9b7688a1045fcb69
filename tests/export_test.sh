#!/usr/bin/env bash
# Models that leave the tool, end to end: train under tensor parallelism (mpirun -np 2, TP=2), export
# to fla's layout, import into a new run, evaluate both: the same validation loss within 1e-6
# relative, for SP and muP, tied and untied heads. Also: the export read as fla's own model (no
# "gdn" block: SP, multipliers 1) evaluates the same; gdn eval repeats the trainer's val_loss;
# greedy samples agree; an imported run trains on from its weights; and every user error is a
# one-line message with exit code 2 that leaves existing files alone.
# Usage: tests/export_test.sh path/to/gdn
source "$(dirname "$0")/lib.sh" "$1"
pangram_data

# 6 key heads of 8 (width 64), grouped values (12 value heads), negative eigenvalues; muP at m = 2
# with input and output multipliers that differ (a tied head must be exported untied).
cat >base.textproto <<'SPEC'
model { width: 64 depth: 2 head_dim: 8 value_heads_per_key_head: 2 negative_eigenvalues: true chunk_size: 16 }
parametrization { base_width: 32 alpha_in: 2 alpha_out: 1.5 }
optimizer { lr: 0.01 warmup_steps: 3 }
data { train_path: "data/train.bin" val_path: "data/val.bin" seq_len: 32 batch_size: 8 }
run { steps: 12 eval_interval: 0 eval_batches: 2 }
SPEC

# loss_of "gdn eval output": the number after "loss ".
loss_of() { sed -n 's/.* loss \([^ ]*\) nats.*/\1/p' <<<"$1"; }
# close A B TOL: |A - B| <= TOL * |A|
close() { python3 -c "import sys; a, b, t = map(float, sys.argv[1:]); sys.exit(0 if abs(a - b) <= t * abs(a) else 1)" "$@"; }

for par in MUP SP; do
  for tied in false true; do
    id=$par-tied-$tied
    mpi 2 "$gdn" train --spec base.textproto --quiet --set parallel.tensor_parallel=2 \
      --set parametrization.kind=$par --set model.tie_embeddings=$tied --set run.dir=runs/$id \
      || { fail "$id: TP=2 training"; continue; }
    out=$("$gdn" export --run runs/$id --out export/$id) || { fail "$id: export"; continue; }
    [ -f export/$id/config.json ] && [ -f export/$id/model.safetensors ] || fail "$id: export files"
    if [ "$tied" = true ]; then
      grep -q '"untied_on_export": true' export/$id/config.json || fail "$id: tied head with differing multipliers must be exported untied"
      grep -q 'exported UNTIED' <<<"$out" || fail "$id: export does not say it untied the head"
    fi
    "$gdn" import --from export/$id --run imported/$id >/dev/null || { fail "$id: import"; continue; }
    grep -q "tie_embeddings: $tied" imported/$id/spec.textproto || fail "$id: import lost the tied head"
    grep -q "kind: $par" imported/$id/spec.textproto || fail "$id: import lost the parametrization"
    a=$("$gdn" eval --run runs/$id --batches 0) || { fail "$id: eval original"; continue; }
    b=$("$gdn" eval --run imported/$id --batches 0) || { fail "$id: eval imported"; continue; }
    la=$(loss_of "$a")
    lb=$(loss_of "$b")
    echo "$id: gdn eval --batches 0: original $la, imported $lb"
    close "$la" "$lb" 1e-6 && ok || fail "$id: original $la vs imported $lb (whole validation set)"
    # The trainer's own evaluation (TP=2) is what gdn eval repeats on one rank.
    lt=$(python3 -c "import json; print(json.load(open('runs/$id/summary.json'))['val_loss'])")
    ld=$(loss_of "$("$gdn" eval --run imported/$id)")
    close "$lt" "$ld" 1e-5 && ok || fail "$id: trainer val_loss $lt vs gdn eval of the import $ld"
    grep -q "bits/byte" <<<"$a" || fail "$id: no bits per byte for byte-level data"
    # Greedy decoding with the recurrent state: the same text from both.
    sa=$("$gdn" sample --run runs/$id --prompt "doc 3 line" --max-tokens 40)
    sb=$("$gdn" sample --run imported/$id --prompt "doc 3 line" --max-tokens 40)
    [ -n "$sa" ] && [ "$sa" = "$sb" ] && ok || fail "$id: samples differ: '$sa' vs '$sb'"
  done
done

# The exported weights alone, read as fla reads them (no "gdn" block: SP, multipliers 1), compute
# the same function: the folding is right. (Same windows: the same seq_len and batch.)
id=MUP-tied-true
mkdir -p asfla
cp export/$id/model.safetensors asfla/
python3 - export/$id/config.json asfla/config.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
del c["gdn"]
json.dump(c, open(sys.argv[2], "w"), indent=2)
PY
"$gdn" import --from asfla --run imported/asfla --set data.val_path=data/val.bin --set data.seq_len=32 >/dev/null || fail "import as fla"
grep -q "kind: SP" imported/asfla/spec.textproto || fail "a model without a gdn block must import as SP"
la=$(loss_of "$("$gdn" eval --run runs/$id --batches 0)")
lb=$(loss_of "$("$gdn" eval --run imported/asfla --batches 0 --data data/val.bin)")
echo "as fla's model (no gdn block, SP): original $la, imported $lb"
close "$la" "$lb" 1e-6 && ok || fail "as fla's model: $la vs $lb"

# An imported run trains on from its weights: its first loss is far below a fresh model's.
"$gdn" import --from export/$id --run imported/more --set run.steps=2 >/dev/null || fail "import with --set"
"$gdn" train --spec imported/more/spec.textproto --quiet || fail "training an imported run"
first=$(python3 -c "import json; print(json.loads(open('imported/more/metrics.jsonl').readline())['train_loss'])")
fresh=$(python3 -c "import json; print(json.loads(open('runs/$id/metrics.jsonl').readline())['train_loss'])")
python3 -c "import sys; sys.exit(0 if $first < 0.7 * $fresh else 1)" && ok \
  || fail "imported run starts at loss $first, a fresh one at $fresh"

# --step picks a checkpoint; a missing one is an error.
"$gdn" export --run runs/$id --step 12 --out export/step12 >/dev/null && ok || fail "export --step 12"

# User errors: exit 2, one line naming the problem, nothing overwritten.
expect_error() {  # expect_error "message fragment" command...
  local fragment=$1
  shift
  local err
  err=$("$@" 2>&1 >/dev/null)
  local rc=$?
  if [ $rc -ne 2 ]; then fail "exit $rc (want 2): $*"; return; fi
  if ! grep -q -- "$fragment" <<<"$err"; then fail "message '$err' lacks '$fragment': $*"; return; fi
  if [ "$(wc -l <<<"$err")" -ne 1 ]; then fail "not one line: $err"; return; fi
  ok
}
expect_error "is not a run directory" "$gdn" export --run nowhere --out x
before=$(md5sum export/$id/model.safetensors)
expect_error "already holds config.json" "$gdn" export --run runs/MUP-tied-false --out export/$id
[ "$before" = "$(md5sum export/$id/model.safetensors)" ] && ok || fail "export overwrote an export"
mkdir -p empty && cp runs/$id/spec.textproto empty/
expect_error "has no complete checkpoint" "$gdn" export --run empty --out x
expect_error "checkpoint of step 5" "$gdn" export --run runs/$id --step 5 --out x
before=$(md5sum imported/$id/spec.textproto)
expect_error "already holds a run" "$gdn" import --from export/$id --run imported/$id
[ "$before" = "$(md5sum imported/$id/spec.textproto)" ] && ok || fail "import overwrote a run"
expect_error "change the model's shape" "$gdn" import --from export/$id --run imported/w --set model.width=128
expect_error "multiplier" "$gdn" import --from export/$id --run imported/w --set parametrization.alpha_in=3
[ ! -e imported/w ] && ok || fail "a refused import left imported/w behind"
mkdir -p broken && cp export/$id/config.json broken/
head -c 5000 export/$id/model.safetensors >broken/model.safetensors
expect_error "bad safetensors file" "$gdn" import --from broken --run imported/broken
expect_error "config.json: cannot read" "$gdn" import --from nowhere --run imported/none
expect_error "--data" "$gdn" eval --run runs/$id --data missing.bin
expect_error "--temperature" "$gdn" sample --run runs/$id --prompt x --temperature -1
expect_error "--prompt" "$gdn" sample --run runs/$id --prompt ""
# An import writes only specs that train accepts, and checks config.json's sizes against the
# tensors before building anything of those sizes (conv_size 1e9 was an allocation abort).
expect_error "--set: optimizer.lr: must be > 0, got -1" \
  "$gdn" import --from export/$id --run imported/lr --set optimizer.lr=-1
[ ! -e imported/lr ] && ok || fail "a refused import left imported/lr behind"
mkdir -p huge && cp asfla/model.safetensors huge/
sed 's/"conv_size": 4,/"conv_size": 1000000000,/' asfla/config.json >huge/config.json
expect_error "has shape \[48, 1, 4\], the config needs \[48, 1, 1000000000\]" \
  "$gdn" import --from huge --run imported/huge
[ ! -e imported/huge ] && ok || fail "a refused import left imported/huge behind"
# --batches N reads N batches of distinct windows: no more than the file holds.
windows=$(( ($(stat -c %s data/val.bin) - 1024) / 2 / 33 ))
full=$((windows / 8))
expect_error "--batches $((full + 1)): data/val.bin has $windows windows of 33 tokens, $full full" \
  "$gdn" eval --run runs/$id --batches $((full + 1))
"$gdn" eval --run runs/$id --batches $full | grep -q "over $((full * 8 * 32)) tokens" && ok \
  || fail "eval --batches $full (all full batches)"
# Floating-point flags are finite numbers (SimpleAtod reads "nan" and "inf").
for t in nan inf; do
  expect_error "--temperature: not a finite number: '$t'" \
    "$gdn" sample --run runs/$id --prompt x --temperature $t
done
expect_error "--adamw-lr: 'inf' is not a finite positive number" \
  "$gdn" coord-check --spec base.textproto --widths 32,64 --steps 1 --adamw-lr inf --out cc
expect_error "--bucket-mb: 'inf'" \
  "$gdn" bench --width 32 --head-dim 8 --depth 1 --seq 16 --batch 1 --iters 1 --bucket-mb inf

finish
