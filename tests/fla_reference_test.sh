#!/usr/bin/env bash
# The independent numpy check of `gdn export` (tests/fla_reference_check.py): trains two tiny
# models (muP with a tied head exported untied, grouped values, negative eigenvalues; SP with a head
# that stays tied), exports them, writes gdn's logits on a validation batch (gdn eval --logits-out),
# and has the script recompute the logits from fla's equations in float64 with numpy.
# Usage: tests/fla_reference_test.sh path/to/gdn            (skips, exit 77, without numpy)
#        tests/fla_reference_test.sh path/to/gdn --prepare DIR  (only writes DIR/<case>/ and
#        DIR/<case>.logits.safetensors, to check elsewhere with fla_reference_check.py)
# The python is the first of python3 on the PATH and Debian's /usr/bin/python3 that imports
# numpy: launcher/setup.sh installs python3-numpy, which only Debian's python sees (a pyenv or
# other python3 ahead on the PATH does not).
set -uo pipefail
gdn=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
prepare=""
[ "${2:-}" = "--prepare" ] && prepare=$(realpath -m "$3")
py=""
for c in python3 /usr/bin/python3; do
  if command -v "$c" >/dev/null && "$c" -c 'import numpy' 2>/dev/null; then
    py=$(command -v "$c")
    break
  fi
done
if [ -z "$prepare" ] && [ -z "$py" ]; then
  echo "SKIP: no python3 here imports numpy (Debian: apt-get install python3-numpy)"
  exit 77
fi
if [ -z "$prepare" ]; then echo "python: $py"; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p corpus
for i in $(seq 1 30); do
  for j in $(seq 1 25); do echo "doc $i line $j: pack my box with $((i * j)) dozen liquor jugs, $j."; done >"corpus/d$i.txt"
done
"$gdn" data prepare --input corpus --format text --out data --val-every 10 >/dev/null || exit 1
cat >base.textproto <<'SPEC'
model { width: 64 depth: 2 head_dim: 8 chunk_size: 16 }
optimizer { lr: 0.01 warmup_steps: 3 }
data { train_path: "data/train.bin" val_path: "data/val.bin" seq_len: 40 batch_size: 4 }
run { steps: 30 eval_interval: 0 eval_batches: 1 }
SPEC
out=${prepare:-$work/out}
mkdir -p "$out"
status=0
for case in mup_tied_untied_on_export sp_tied; do
  if [ $case = sp_tied ]; then
    sets=(--set parametrization.kind=SP --set model.tie_embeddings=true)
  else
    sets=(--set parametrization.base_width=32 --set parametrization.alpha_in=2
      --set parametrization.alpha_out=1.5 --set model.tie_embeddings=true
      --set model.value_heads_per_key_head=2 --set model.negative_eigenvalues=true)
  fi
  OMP_NUM_THREADS=1 "$gdn" train --spec base.textproto --quiet "${sets[@]}" --set run.dir=runs/$case || exit 1
  "$gdn" export --run runs/$case --out "$out/$case" >/dev/null || exit 1
  "$gdn" eval --run runs/$case --logits-out "$out/$case.logits.safetensors" >/dev/null || exit 1
  if [ -z "$prepare" ]; then
    "$py" "$here/fla_reference_check.py" "$out/$case" "$out/$case.logits.safetensors" || status=1
  fi
done
exit $status
