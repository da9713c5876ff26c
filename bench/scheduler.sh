#!/usr/bin/env bash
# Scheduling decisions per second with 1,000 functions configured: RUNS separate runs of
# gateway/examples/scheduler_rate.rs (acquire + release cycles through the per-function
# scheduler, no network; single task, several tasks on 2 workers, contention on one function,
# metrics recorder off and on). Medians over runs.
# Writes bench/out/scheduler/ (raw) and replaces the "Scheduling decisions per second" part of
# the "Instances: cold start and scheduling" section of bench/RESULTS.md.
#
#   bench/scheduler.sh                       # RUNS=5 ITERS=2000000 FUNCTIONS=1000
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-5}"
ITERS="${ITERS:-2000000}"
FUNCTIONS="${FUNCTIONS:-1000}"
out=bench/out/scheduler
rm -rf "$out" && mkdir -p "$out"

[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked -p fngate --example scheduler_rate
tool=target/release/examples/scheduler_rate
[ -x "$tool" ] || { echo "missing $tool (build first, or drop SKIP_BUILD)"; exit 1; }

for r in $(seq "$RUNS"); do
    echo "== run $r of $RUNS"
    ITERS=$ITERS FUNCTIONS=$FUNCTIONS "$tool" | tee "$out/run-$r.txt"
done

cat >"$out/meta.txt" <<META
date=$(date -u '+%Y-%m-%d %H:%M UTC')
nproc=$(nproc)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
kernel=$(uname -r)
build=cargo build --release --locked -p fngate --example scheduler_rate
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gateway/src 2>/dev/null || echo ' + uncommitted changes')
command=$([ "${SKIP_BUILD:-0}" = 1 ] && echo "SKIP_BUILD=1 " || true)RUNS=$RUNS ITERS=$ITERS FUNCTIONS=$FUNCTIONS bench/scheduler.sh
META
python3 bench/instances_report.py scheduler "$out" bench/RESULTS.md
