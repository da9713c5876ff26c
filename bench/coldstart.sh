#!/usr/bin/env bash
# The gateway's share of a cold start (BENCH.md: spawn → ready → first byte, minus the backend's
# own start time; target ≤ 2 ms median), side by side in one run:
#  - direct: a perfect launcher (gateway/examples/cold_start.rs `direct`) spawns the release
#    demo-backend with PORT set, polls connect + GET /health every POLL_US µs until it answers,
#    then sends GET /bytes/1024 and takes the time to the first response byte;
#  - fngate: a release fngate with COUNT functions, each a process backend running the same
#    binary; one request per function on its canonical path /bench/fN/bytes/1024, sequential,
#    each a cold start; request → first response byte at the client (`cold_start.rs gateway`),
#    plus the x-fngate-cold-start header and the log line's spawn/readiness split.
# Backends: the plain demo-backend ("fast") and, for each D in SLOW_DELAY_MS, one with
# --startup-delay-ms D ("slowD"). ROUNDS interleaved rounds: fast-direct, fast-fngate,
# slow200-direct, slow200-fngate, …; after each fast fngate batch, a second pass over the same
# functions (warm: instances up, upstream connections pooled) as the per-request baseline.
# A fresh fngate per batch, so every first request is a cold start.
# Pinning (PIN=1): the launcher and the instances it starts share GW_CPU (fngate with one
# worker, or the direct launcher; children inherit the affinity), the client runs on CLIENT_CPU.
# Writes bench/out/coldstart/ (raw) and replaces the "Gateway share of a cold start" part of the
# "Instances: cold start and scheduling" section of bench/RESULTS.md.
#
#   bench/coldstart.sh                     # ROUNDS=5 COUNT=40 SLOW_COUNT=10 SLOW_DELAY_MS="200 1000"
#   ROUNDS=1 COUNT=5 SLOW_COUNT=2 SLOW_DELAY_MS=200 bench/coldstart.sh   # smoke run (~10 s once built)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"
COUNT="${COUNT:-40}"
SLOW_COUNT="${SLOW_COUNT:-10}"
SLOW_DELAY_MS="${SLOW_DELAY_MS-200 1000}"
POLL_US="${POLL_US:-150}"
GAP_MS="${GAP_MS:-20}"
PIN="${PIN:-1}"
GW_CPU="${GW_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
out=bench/out/coldstart
rm -rf "$out" && mkdir -p "$out"

# Two invocations: built together, the example's dev-dependency features (tokio test-util) would
# be unified into the fngate binary too; this way it is the same binary bench/run.sh measures.
[ "${SKIP_BUILD:-0}" = 1 ] || {
    cargo build --release --locked -p fngate -p demo-backend
    cargo build --release --locked -p fngate --example cold_start
}
bin="$PWD/target/release"
backend="$bin/demo-backend"
tool="$bin/examples/cold_start"
for f in "$bin/fngate" "$backend" "$tool"; do
    [ -x "$f" ] || { echo "missing $f (build first, or drop SKIP_BUILD)"; exit 1; }
done

if [ "$PIN" = 1 ]; then
    on_gw=(taskset -c "$GW_CPU"); on_client=(taskset -c "$CLIENT_CPU")
else
    on_gw=(); on_client=()
fi

# Every process this script starts, by PID; the direct launcher's children are listed in
# $out/direct.pids as they start (checked against the backend path before a kill, in case a PID
# was reused).
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -f "$out/direct.pids" ]; then
        while read -r p; do
            [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$backend" ] && kill -9 "$p" 2>/dev/null || true
        done <"$out/direct.pids"
    fi
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# variant → backend arguments, function count
variants=(fast)
declare -A ARGS=([fast]="") N=([fast]="$COUNT")
for d in $SLOW_DELAY_MS; do
    variants+=("slow$d"); ARGS[slow$d]="--startup-delay-ms $d"; N[slow$d]="$SLOW_COUNT"
done
for v in "${variants[@]}"; do echo "$v ${N[$v]} ${ARGS[$v]}"; done >"$out/variants.txt"

gw_config() { # variant count dir
    local args="" a
    for a in ${ARGS[$1]}; do args+=", \"$a\""; done
    {
        cat <<EOF
[server]
listen = "127.0.0.1:0"
plaintext_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "data"

[[service]]
name = "bench"
EOF
        for i in $(seq 0 $(($2 - 1))); do
            cat <<EOF

[[service.function]]
name = "f$i"
instance_concurrency = 4
max_queue_wait = "120s"
backend = { kind = "process", command = ["$backend"$args], port_env = "PORT", readiness = { path = "/health" }, startup_timeout = "60s" }
EOF
        done
        # A trigger without path or host opens the function's canonical path /bench/fN/….
        for i in $(seq 0 $(($2 - 1))); do
            printf '\n[[trigger]]\nname = "t%s"\nkind = "http"\nfunction = "bench/f%s"\n' "$i" "$i"
        done
    } >"$3/fngate.toml"
}

run_direct() { # variant round
    # shellcheck disable=SC2086
    "${on_gw[@]}" "$tool" direct --count "${N[$1]}" --poll-us "$POLL_US" --gap-ms "$GAP_MS" \
        --pids "$out/direct.pids" -- "$backend" ${ARGS[$1]} >"$out/direct-$1-$2.txt"
}

run_fngate() { # variant round
    local dir="$out/gw-$1-$2" addr="" gw
    mkdir -p "$dir"
    gw_config "$1" "${N[$1]}" "$dir"
    TOKIO_WORKER_THREADS=1 "${on_gw[@]}" "$bin/fngate" serve --config "$dir/fngate.toml" \
        >"$dir/stdout.log" 2>"$dir/stderr.log" &
    gw=$!; pids+=("$gw")
    for _ in $(seq 200); do
        addr=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["plaintext"])' \
            "$dir/data/listeners.json" 2>/dev/null) && break
        kill -0 "$gw" 2>/dev/null || { echo "fngate exited:"; cat "$dir/stderr.log"; exit 1; }
        sleep 0.05
    done
    [ -n "$addr" ] || { echo "fngate not ready:"; cat "$dir/stderr.log"; exit 1; }
    sleep 0.3 # let start-up work (certificate, first upkeep tick) settle
    "${on_client[@]}" "$tool" gateway --addr "$addr" --count "${N[$1]}" --gap-ms "$GAP_MS" \
        >"$out/gateway-$1-$2.txt"
    [ "$1" != fast ] || "${on_client[@]}" "$tool" gateway --addr "$addr" --count "${N[$1]}" \
        --gap-ms "$GAP_MS" >"$out/warm-$1-$2.txt"
    # SIGTERM: fngate stops its instances and exits; bounded wait, then SIGKILL (its instances
    # die with it: they are started with a parent-death signal).
    kill -TERM "$gw"
    for _ in $(seq 300); do kill -0 "$gw" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$gw" 2>/dev/null && { echo "fngate did not stop in 15 s; killing it"; kill -9 "$gw"; }
    wait "$gw" 2>/dev/null || true
}

med() { # file → median of first_byte_us
    awk -F'first_byte_us=' '{split($2, a, " "); print a[1]}' "$1" | sort -g |
        awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
}

echo "== cold start: $ROUNDS rounds; fast: $COUNT instances per batch; --startup-delay-ms $SLOW_DELAY_MS: $SLOW_COUNT each; pinning: $([ "$PIN" = 1 ] && echo "launcher+instances cpu $GW_CPU, client cpu $CLIENT_CPU" || echo off)"
for r in $(seq "$ROUNDS"); do
    for v in "${variants[@]}"; do
        run_direct "$v" "$r"
        run_fngate "$v" "$r"
        echo "round $r $v: median first byte: direct $(med "$out/direct-$v-$r.txt") µs, fngate $(med "$out/gateway-$v-$r.txt") µs"
    done
done

cat >"$out/meta.txt" <<EOF
date=$(date -u '+%Y-%m-%d %H:%M UTC')
nproc=$(nproc)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
kernel=$(uname -r)
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gateway/src examples/demo-backend 2>/dev/null || echo ' + uncommitted changes')
build=cargo build --release --locked -p fngate -p demo-backend && cargo build --release --locked -p fngate --example cold_start
rounds=$ROUNDS
poll_us=$POLL_US
gap_ms=$GAP_MS
pin=$PIN
gw_cpu=$GW_CPU
client_cpu=$CLIENT_CPU
command=$([ "${SKIP_BUILD:-0}" = 1 ] && echo "SKIP_BUILD=1 " || true)ROUNDS=$ROUNDS COUNT=$COUNT SLOW_COUNT=$SLOW_COUNT SLOW_DELAY_MS="$SLOW_DELAY_MS" POLL_US=$POLL_US GAP_MS=$GAP_MS PIN=$PIN GW_CPU=$GW_CPU CLIENT_CPU=$CLIENT_CPU bench/coldstart.sh
EOF
python3 bench/instances_report.py coldstart "$out" bench/RESULTS.md
