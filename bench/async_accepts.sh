#!/usr/bin/env bash
# Async accepts through the whole gateway: 202s per second for POSTs with
# `x-fngate-invocation-type: async` (each stored with an fsync'd group commit before its 202),
# wrk closed loop, 64 connections, plaintext HTTP/1.1 keep-alive, 200-byte bodies. The
# dispatcher runs the stored tasks against the backend at the same time (async.max_concurrency
# 16), as it would in production. Pinning as bench/run.sh: fngate on core 0 (one worker), wrk and
# the backend on core 1. ROUNDS runs of DUR seconds; medians. Prints a summary; raw output in
# bench/out/async/.
#
#   bench/async_accepts.sh            # ROUNDS=5 DUR=8 CONNS=64
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}" DUR="${DUR:-8}" CONNS="${CONNS:-64}"
out=bench/out/async
rm -rf "$out" && mkdir -p "$out"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked -p fngate -p demo-backend
bin="${CARGO_TARGET_DIR:-target}/release"
command -v wrk >/dev/null || { echo "wrk is needed (Debian: apt-get install wrk)"; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

cat >"$out/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 200)
wrk.headers["x-fngate-invocation-type"] = "async"
wrk.headers["content-type"] = "application/octet-stream"
LUA

results=()
for r in $(seq "$ROUNDS"); do
    data="$out/data-$r"
    rm -rf "$data" && mkdir -p "$data"
    port=$((19600 + r))
    taskset -c 1 "$bin/demo-backend" --listen "127.0.0.1:$port" --id async >/dev/null 2>&1 &
    be=$!; pids+=("$be")
    cat >"$data/fngate.toml" <<TOML
[server]
listen = "127.0.0.1:0"
plaintext_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "."
[telemetry]
log = { stdout = false }
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
    TOKIO_WORKER_THREADS=1 taskset -c 0 "$bin/fngate" serve --config "$data/fngate.toml" >/dev/null 2>"$data/stderr.log" &
    gw=$!; pids+=("$gw")
    for _ in $(seq 100); do [ -f "$data/listeners.json" ] && break; sleep 0.05; done
    addr=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['plaintext'])" "$data/listeners.json")
    taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$out/post.lua" "http://$addr/job/x" >"$out/wrk-$r.txt"
    rps=$(awk '/^Requests\/sec/ {print $2}' "$out/wrk-$r.txt")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$out/wrk-$r.txt"); non2xx=${non2xx:-0}
    echo "round $r: $rps 202/s (non-2xx: $non2xx)"
    results+=("$rps")
    kill "$gw" "$be"; wait "$gw" "$be" 2>/dev/null || true
done
printf '%s\n' "${results[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median %.0f 202/s (min %.0f, max %.0f) over %d rounds\n", a[int((NR+1)/2)], a[1], a[NR], NR}' | tee "$out/summary.txt"
