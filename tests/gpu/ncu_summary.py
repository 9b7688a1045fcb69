"""Sums an ncu CSV (gpu__time_duration.sum per kernel launch) by kernel: time per repetition,
share, cumulative share, launches and the median launch, largest first.

Usage: ncu_summary.py NCU_CSV REPETITIONS [WALL_MS]
REPETITIONS: how many times the program ran the work being broken down (the sums are divided by
it); WALL_MS: the same work's wall time measured without ncu, to show the time the GPU was idle.
"""
import collections
import csv
import re
import sys

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
# The program's own output is in the file too: the table starts at ncu's header row.
start = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
if start is None or start + 1 >= len(rows):
    sys.exit("no ncu rows in " + sys.argv[1])
rows = rows[start:]
reps = int(sys.argv[2])
wall = float(sys.argv[3]) if len(sys.argv) > 3 else None
h = rows[0]
ki, vi = h.index("Kernel Name"), h.index("Metric Value")
total = collections.defaultdict(float)
calls = collections.Counter()
launches = collections.defaultdict(list)
for r in rows[1:]:
    full = r[ki].replace("(anonymous namespace)::", "").replace("<unnamed>::", "").replace("unnamed>::", "").replace("__nv_bfloat16", "bf16")
    full = full.replace("(bool)1", "true").replace("(bool)0", "false")
    # A generic elementwise kernel is named by the function whose lambda it runs.
    lam = re.match(r"(?:void )?[\w:]*::(\w+)<[\w:]*::(\w+)\(.*lambda", full)
    if lam:
        full = f"{lam.group(1)}<{lam.group(2)} lambda>"
    m = re.match(r"(?:void )?(?:[\w:>]*::)?(\w+)(<[^(]*>)?", full)
    name = (m.group(1) + (m.group(2) or "")) if m else full
    name = name if len(name) <= 80 else name[:77] + "..."
    ns = float(r[vi].replace(",", ""))
    total[name] += ns / 1e6 / reps  # ms per repetition
    calls[name] += 1
    launches[name].append(ns / 1e3)  # us
all_ms = sum(total.values())
line = f"kernels per repetition: {sum(calls.values()) // reps}, {all_ms:.2f} ms"
if wall:
    line += f"; wall time without ncu {wall:.2f} ms, of which the GPU ran no kernel {wall - all_ms:.2f} ms"
print(line)
acc = 0.0
for k, v in sorted(total.items(), key=lambda x: -x[1]):
    acc += v
    print(f"  {v:9.3f} ms {100 * v / all_ms:5.1f}% (cum {100 * acc / all_ms:5.1f}%) "
          f"{calls[k] / reps:7.1f} launches, median {sorted(launches[k])[len(launches[k]) // 2]:9.1f} us  {k}")
