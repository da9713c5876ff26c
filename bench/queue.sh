#!/usr/bin/env bash
# Durable accepts per second of the embedded task store (SQLite WAL + synchronous=FULL, group
# commit): RUNS separate runs of gateway/examples/queue_accepts.rs with 1, 16, 64 and 256
# concurrent accepting tasks (200-byte bodies, every accept answered after its fsync), plus the
# cost of a claim + finish cycle one at a time and 64 at a time. Medians over runs.
# Writes bench/out/queue/ (raw runs, meta, summary.txt) and prints the summary; it does not
# edit bench/RESULTS.md.
#
#   bench/queue.sh                     # RUNS=5 ACCEPTS=20000 ACCEPTS_SINGLE=4000 CYCLES=2000
#   DIR=/path/on/data/disk bench/queue.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-5}"
export ACCEPTS="${ACCEPTS:-20000}" ACCEPTS_SINGLE="${ACCEPTS_SINGLE:-4000}" CYCLES="${CYCLES:-2000}"
out=bench/out/queue
rm -rf "$out" && mkdir -p "$out"

[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked -p fngate --example queue_accepts
tool="${CARGO_TARGET_DIR:-target}/release/examples/queue_accepts"
[ -x "$tool" ] || { echo "missing $tool (build first, or drop SKIP_BUILD)"; exit 1; }

for r in $(seq "$RUNS"); do
    echo "== run $r of $RUNS (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    "$tool" | tee "$out/run-$r.txt"
done

cat >"$out/meta.txt" <<META
date=$(date -u '+%Y-%m-%d %H:%M UTC')
nproc=$(nproc)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
kernel=$(uname -r)
loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)
dir=${DIR:-${TMPDIR:-/tmp}} on $(df -P "${DIR:-${TMPDIR:-/tmp}}" | awk 'NR==2 {print $1}')
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gateway/src 2>/dev/null || echo ' + uncommitted changes')
command=RUNS=$RUNS ACCEPTS=$ACCEPTS ACCEPTS_SINGLE=$ACCEPTS_SINGLE CYCLES=$CYCLES bench/queue.sh
META

python3 - "$out" <<'PY' | tee "$out/summary.txt"
import glob, os, statistics, sys
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "run-*.txt"))):
    for line in open(f):
        kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
        if "mode" in kv:
            rows.setdefault((kv["mode"], int(kv["tasks"])), []).append(kv)
def med(runs, key):
    vals = [float(r[key]) for r in runs if key in r]
    return statistics.median(vals) if vals else float("nan")
print(open(os.path.join(out, "meta.txt")).read().strip())
print()
print(f"{'mode':<20} {'tasks':>5} {'runs':>4} {'median ops/s':>13} {'min':>9} {'max':>9} {'p50 us':>8} {'p99 us':>8} {'ns/cycle':>10}")
for (mode, tasks), runs in sorted(rows.items(), key=lambda kv: (kv[0][0] != "accept", kv[0][1])):
    ops = [float(r["ops_per_s"]) for r in runs]
    print(f"{mode:<20} {tasks:>5} {len(runs):>4} {statistics.median(ops):>13.0f} {min(ops):>9.0f} {max(ops):>9.0f} "
          f"{med(runs, 'p50_us'):>8.0f} {med(runs, 'p99_us'):>8.0f} {med(runs, 'ns_per_cycle'):>10.0f}")
PY
