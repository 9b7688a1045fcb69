#!/usr/bin/env bash
# A sweep on a real Slurm: installs Debian's slurmctld, slurmd and munge when missing, starts a
# one-node cluster on this machine (shared/docs/slurm.md), submits a small sweep with
# `gdn sweep slurm --submit` (one learning rate diverges), preempts one running array task with
# SIGUSR2, and checks that it requeued itself and finished with the loss of an uninterrupted run,
# that every run is done or diverged, and that the report is written.
# Usage: tests/slurm_test.sh path/to/gdn. Exit 77 (ctest: skipped) when not root or without apt.
set -uo pipefail
gdn=$(realpath "$1")
if [ "$(id -u)" -ne 0 ]; then echo "SKIP: installing and running Slurm needs root"; exit 77; fi
if ! command -v apt-get >/dev/null; then echo "SKIP: no apt-get to install Slurm"; exit 77; fi

packages=(slurmctld slurmd slurm-client munge gnuplot-nox)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
  }
  install || { apt-get update -qq -o DPkg::Lock::Timeout=300 && install; } ||
    { echo "FAIL: cannot install ${missing[*]}"; exit 1; }
fi

work=$(mktemp -d /tmp/gdn-slurm.XXXXXX)
chmod 755 "$work"
cluster=$work/cluster
cleanup() {
  for pid_file in "$cluster/slurmd.pid" "$cluster/slurmctld.pid" "$cluster/munge/munged.pid"; do
    [ -f "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null
  done
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT
failures=0
pass=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { pass=$((pass + 1)); }

# --- A one-node cluster: our own munged socket and ports, every path under $cluster, no systemd
# or cgroups. cred_expire also sets how long a requeued job waits (120 s by default).
mkdir -p "$cluster/munge" "$cluster/state" "$cluster/spool"
chown munge:munge "$cluster/munge"
chmod 755 "$cluster" "$cluster/munge"
runuser -u munge -- munged --socket="$cluster/munge/socket" --pid-file="$cluster/munge/munged.pid" \
  --log-file="$cluster/munge/munged.log" --seed-file="$cluster/munge/seed" ||
  { echo "FAIL: munged did not start"; exit 1; }
port=$((20000 + RANDOM % 20000))
cat >"$cluster/slurm.conf" <<CONF
ClusterName=gdntest
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$cluster/munge/socket,cred_expire=5
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
StateSaveLocation=$cluster/state
SlurmdSpoolDir=$cluster/spool
SlurmctldPidFile=$cluster/slurmctld.pid
SlurmdPidFile=$cluster/slurmd.pid
SlurmctldLogFile=$cluster/slurmctld.log
SlurmdLogFile=$cluster/slurmd.log
$(slurmd -C | head -1) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$cluster/slurm.conf
slurmctld && slurmd || { echo "FAIL: Slurm daemons did not start"; cat "$cluster"/*.log; exit 1; }
for _ in $(seq 1 30); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o %t | grep -q idle || { echo "FAIL: the node is not idle"; sinfo; cat "$cluster"/*.log; exit 1; }
echo "Slurm $(sinfo --version) up on port $port"

# --- A sweep: 2 widths x a good and a diverging learning rate, 2 array tasks at once.
cd "$work"
export OMP_NUM_THREADS=1
mkdir corpus
for i in $(seq 1 40); do
  for j in $(seq 1 30); do echo "document $i line $j: the quick brown fox $((i * j)) jumps over the lazy dog $j."; done >"corpus/doc$i.txt"
done
"$gdn" data prepare --input corpus --format text --out data --val-every 10 >/dev/null || { echo "FAIL: data prepare"; exit 1; }
cat >sweep.textproto <<'SPEC'
name: "slurmtest"
model { depth: 1 head_dim: 8 }
parametrization { base_width: 32 }
optimizer { lr: 0.01 }
data { train_path: "data/train.bin" val_path: "data/val.bin" seq_len: 32 batch_size: 4 }
run { steps: 1500 eval_interval: 500 eval_batches: 2 log_interval: 100 checkpoint_interval: 500 }
sweep { widths: [32, 64] learning_rates: [0.01, 1000] dir: "runs/sweep" }
slurm { max_running: 2 cpus_per_task: 1 time: "00:10:00" signal_seconds: 30 }
SPEC

diagnose() {
  echo "--- squeue"; squeue -a
  echo "--- scontrol show job $job"; scontrol show job "$job" 2>&1 | head -60
  echo "--- sacct"; sacct -j "$job" 2>&1 | head -20
  echo "--- gdn sweep status"; "$gdn" sweep status --spec sweep.textproto
  echo "--- task logs"; tail -n 30 runs/sweep/slurm/*.out 2>/dev/null
  echo "--- slurmctld.log"; tail -n 30 "$cluster/slurmctld.log"
  echo "--- slurmd.log"; tail -n 30 "$cluster/slurmd.log"
}

out=$("$gdn" sweep slurm --spec sweep.textproto --submit 2>&1)
echo "$out"
job=$(sed -n 's/^submitted job array \([0-9]*\).*/\1/p' <<<"$out")
[ -n "$job" ] && ok || { fail "no job id from gdn sweep slurm --submit"; exit 1; }
grep -q "^#SBATCH --array=0-3%2$" runs/sweep/slurm/sweep.sbatch && ok || fail "array line: $(grep array runs/sweep/slurm/sweep.sbatch)"

# Preempt array task 2 (width 64, lr 0.01) once it has trained a while: SIGUSR2 to its batch
# shell, as Slurm sends before a time limit.
target=runs/sweep/$(sed -n 's/^  .runs\/sweep\/\(w64_lr1e-02-[0-9a-f]*\). *# 2$/\1/p' runs/sweep/slurm/sweep.sbatch)
preempted=0
for _ in $(seq 1 1200); do
  lines=$(cat "$target/metrics.jsonl" 2>/dev/null | wc -l)
  if [ "$lines" -ge 100 ]; then
    if [ "$(cat "$target/status" 2>/dev/null)" = running ]; then
      scancel --batch --signal=USR2 "${job}_2" && preempted=1
    fi
    break
  fi
  sleep 0.1
done
[ "$preempted" = 1 ] && ok || { fail "could not preempt $target while running (status $(cat "$target/status" 2>/dev/null), $lines steps)"; diagnose; }

# Wait for the array (bounded).
deadline=$((SECONDS + 180))
while [ -n "$(squeue -h -j "$job" 2>/dev/null)" ]; do
  if [ $SECONDS -gt $deadline ]; then fail "job array $job still queued after 180 s"; diagnose; break; fi
  sleep 1
done

status=$("$gdn" sweep status --spec sweep.textproto)
echo "$status"
grep -q "4 runs: 2 done, 2 diverged" <<<"$status" && ok || { fail "expected 2 done and 2 diverged"; diagnose; }
[ "$(grep -c 'lr1e+03.* diverged ' <<<"$status")" -eq 2 ] && ok || fail "the lr=1000 runs should be diverged"

# The preempted task: requeued once, resumed from its checkpoint, same final loss as a run that
# was never interrupted.
# Its log is the one naming its run id; with none (no id, no log), each check fails rather than
# let grep read stdin.
id=${target#runs/sweep/}
logs=()
[ -n "$id" ] && mapfile -t logs < <(grep -l -- "$id" runs/sweep/slurm/*.out 2>/dev/null)
in_task_log() {  # in_task_log PATTERN MESSAGE
  if [ "${#logs[@]}" -eq 0 ]; then
    fail "$2: no log in runs/sweep/slurm/ names task 2's run '$id'"
  elif grep -q -- "$1" "${logs[@]}"; then
    ok
  else
    fail "$2: $(cat "${logs[@]}")"
  fi
}
in_task_log "checkpointed; requeueing" "task 2 did not requeue itself"
in_task_log "restart 1" "task 2 did not run again after its requeue"
in_task_log "resuming from step" "task 2 did not resume from a checkpoint"
"$gdn" train --spec "$target/point.textproto" --set run.dir=runs/reference --quiet ||
  fail "the uninterrupted reference run failed"
final() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["train_loss"])' "$1/summary.json" 2>/dev/null ||
  sed 's/.*"train_loss":\([^,]*\).*/\1/' "$1/summary.json"; }
a=$(final "$target") b=$(final runs/reference)
[ -n "$a" ] && [ "$a" = "$b" ] && ok || fail "preempted run's final loss $a differs from the uninterrupted $b"
echo "preempted and resumed: final train loss $a, uninterrupted: $b"

# The report, from the run directories.
"$gdn" sweep report --spec sweep.textproto >report.log 2>&1 && ok || { fail "gdn sweep report failed"; cat report.log; }
for png in lr_sweep curves; do
  [ "$(head -c 8 runs/sweep/$png.png 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] && ok ||
    fail "runs/sweep/$png.png is not a PNG"
done
[ "$(grep -c ',diverged,' runs/sweep/results.csv)" -eq 2 ] && ok || fail "results.csv should show 2 diverged runs"
[ "$(wc -l <runs/sweep/best_lr.csv)" -eq 3 ] && ok || fail "best_lr.csv should have a row per width"

# Submitting again: nothing left to run.
expect_none=$("$gdn" sweep slurm --spec sweep.textproto --submit 2>&1)
grep -q "all 4 runs are finished" <<<"$expect_none" && ok || fail "resubmission should run nothing: $expect_none"

# Runs of 2 ranks (DP 2), started by srun (the default launcher) and by mpirun.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for launcher in "srun --mpi=pmix" mpirun; do
  name=${launcher%% *}
  out=$("$gdn" sweep slurm --spec sweep.textproto --set sweep.dir=runs/$name --set sweep.widths=32 \
    --set sweep.learning_rates=0.01 --set run.steps=20 --ntasks 2 --launcher "$launcher" --submit 2>&1)
  job=$(sed -n 's/^submitted job array \([0-9]*\).*/\1/p' <<<"$out")
  deadline=$((SECONDS + 90))
  while [ -n "$job" ] && [ -n "$(squeue -h -j "$job" 2>/dev/null)" ]; do
    [ $SECONDS -gt $deadline ] && { fail "$name job $job still queued after 90 s"; diagnose; break; }
    sleep 1
  done
  grep -q '"ranks":2' runs/$name/w32*/summary.json 2>/dev/null && [ "$(cat runs/$name/w32*/status)" = done ] && ok ||
    { fail "2 ranks under $launcher: $out"; tail -n 20 runs/$name/slurm/*.out; }
done

echo "$pass passed, $failures failed"
[ "$failures" -eq 0 ]
