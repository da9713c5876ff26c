#!/usr/bin/env bash
# Async accepts through the whole gateway: 202s per second for POSTs with
# `x-fngate-invocation-type: async` (each stored with an fsync'd group commit before its 202),
# wrk closed loop, 64 connections, plaintext HTTP/1.1 keep-alive, 200-byte bodies. The
# dispatcher runs the stored tasks against the backend at the same time (async.max_concurrency
# 16), as it would in production. Pinning as bench/run.sh: fngate on core 0 (one worker), wrk and
# the backend on core 1. ROUNDS runs of DUR seconds; medians. Prints a summary; raw output in
# bench/out/async/.
#
# QUEUE=nats runs the same against the NATS JetStream queue: a nats-server (JetStream on the
# data dir) started per round on core 1 beside wrk and the backend.
#
#   bench/async_accepts.sh            # ROUNDS=5 DUR=8 CONNS=64 QUEUE=embedded
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}" DUR="${DUR:-8}" CONNS="${CONNS:-64}" QUEUE="${QUEUE:-embedded}"
GW_CORES="${GW_CORES:-0}" GW_WORKERS="${GW_WORKERS:-1}"  # GW_CORES=0,1 GW_WORKERS=2: fngate on both cores
out=bench/out/async-$QUEUE
rm -rf "$out" && mkdir -p "$out"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked -p fngate -p demo-backend
bin="${CARGO_TARGET_DIR:-target}/release"
command -v wrk >/dev/null || { echo "wrk is needed (Debian: apt-get install wrk)"; exit 1; }

. bench/queue_common.sh

cat >"$out/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 200)
wrk.headers["x-fngate-invocation-type"] = "async"
wrk.headers["content-type"] = "application/octet-stream"
LUA
# ACCEPT_ONLY=1: every task is deferred a day (x-fngate-async-delay), so the dispatcher runs
# nothing during the measurement: the accept path's own capacity. No drain figure then.
if [ "${ACCEPT_ONLY:-0}" = 1 ]; then
    echo 'wrk.headers["x-fngate-async-delay"] = "86400"' >>"$out/post.lua"
fi

results=(); drains=()
for r in $(seq "$ROUNDS"); do
    data="$out/data-$r"
    port=$((19600 + r))
    start_round "$data" "$port" $((19700 + r)) async
    { config_head; cat <<TOML
[[service]]
name = "bench"
[[service.function]]
name = "job"
instance_concurrency = 64
async = { max_concurrency = 16 }
backend = { kind = "static", endpoints = ["http://127.0.0.1:$port"] }
[[trigger]]
name = "job"
kind = "http"
function = "bench/job"
path = "/job"
TOML
    } >"$data/fngate.toml"
    start_gateway "$data"
    t0=$(date +%s.%N)
    c0=$(awk '{print $14 + $15}' "/proc/$gw/stat")
    taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$out/post.lua" "http://$addr/job/x" >"$out/wrk-$r.txt"
    c1=$(awk '{print $14 + $15}' "/proc/$gw/stat")
    rps=$(awk '/^Requests\/sec/ {print $2}' "$out/wrk-$r.txt")
    total=$(awk '/requests in/ {print $1}' "$out/wrk-$r.txt")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$out/wrk-$r.txt"); non2xx=${non2xx:-0}
    accepted=$((total - non2xx))
    # Drain: until the backend has run every accepted task (at least once), from wrk's start.
    ran=0
    [ "${ACCEPT_ONLY:-0}" = 1 ] && accepted=0
    for _ in $(seq 1200); do
        ran=$(curl -s "http://127.0.0.1:$port/stats" | python3 -c "import json,sys;print(json.load(sys.stdin)['requests'])")
        [ "$ran" -ge "$accepted" ] && break
        sleep 0.1
    done
    t1=$(date +%s.%N)
    drain=$(python3 -c "print(round($ran / ($t1 - $t0)))")
    [ "${ACCEPT_ONLY:-0}" = 1 ] && drain=0
    # fngate's CPU per request over the wrk run, and the embedded store's mean group commit.
    cpu_us=$(awk -v t="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" -v n="$total" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    admin=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['admin'])" "$data/listeners.json")
    commit=$(curl -sk -H "authorization: Bearer $(cat "$data/admin-token")" "https://$admin/metrics" |
        awk '/^fngate_async_store_commit_commands_sum/ {s=$2} /^fngate_async_store_commit_commands_count/ {c=$2} END {if (c) printf "%.1f", s / c; else print "-"}')
    echo "round $r: $rps 202/s (non-2xx: $non2xx); $accepted accepted, $ran run, drained at $drain tasks/s (wrk start to last run); fngate CPU $cpu_us us/request; mean commit $commit commands"
    results+=("$rps"); drains+=("$drain")
    end_round
done
printf '%s\n' "${results[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median %.0f 202/s (min %.0f, max %.0f) over %d rounds\n", a[int((NR+1)/2)], a[1], a[NR], NR}' | tee "$out/summary.txt"
printf '%s\n' "${drains[@]}" | sort -n | awk '{a[NR]=$1} END {printf "drain: median %.0f tasks/s (min %.0f, max %.0f)\n", a[int((NR+1)/2)], a[1], a[NR]}' | tee -a "$out/summary.txt"
