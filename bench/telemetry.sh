#!/usr/bin/env bash
# Telemetry overhead, side by side in one run: throughput through fngate with
#   off: per-invocation log lines off, no traces (metrics are always recorded: the Prometheus
#        recorder is the one way fngate counts);
#   on:  log lines on (stdout to /dev/null and a size-rotated file sink), OTLP traces at
#        sample_ratio 0.1 to a real collector (rotel, printing nothing, discarding spans);
#   on_file: the same with the file sink alone.
# wrk closed loop, CONNS connections, plaintext HTTP/1.1 keep-alive, GET /bytes/1024 through one
# static-backend function; ROUNDS interleaved rounds. Pinning as bench/run.sh: fngate on core 0
# with one worker; wrk, the backend and the collector on core 1. Raw output: bench/out/telemetry/.
#
# Besides req/s, each round records fngate's CPU time per request (utime + stime of the process
# over the round / requests served): less sensitive than throughput to a noisy neighbour.
# BASE=DIR (a release dir holding an older fngate) adds a third configuration, "on" run by that
# binary, to compare two builds side by side.
#
#   bench/telemetry.sh               # ROUNDS=5 DUR=8 CONNS=64
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}" DUR="${DUR:-8}" CONNS="${CONNS:-64}"
out=bench/out/telemetry
rm -rf "$out" && mkdir -p "$out"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked -p fngate -p demo-backend
bin="${CARGO_TARGET_DIR:-target}/release"
command -v wrk >/dev/null || { echo "wrk is needed (Debian: apt-get install wrk)"; exit 1; }
rotel="${FNGATE_ROTEL:-$(python3 -c 'import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')}"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

taskset -c 1 "$bin/demo-backend" --listen 127.0.0.1:39101 --threads 1 >/dev/null & pids+=($!)
taskset -c 1 "$rotel" start --otlp-grpc-endpoint 127.0.0.1:39117 --otlp-http-endpoint 127.0.0.1:39118 \
    --exporter blackhole >/dev/null 2>&1 & pids+=($!)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A gwpid
start_gw() { # name telemetry-section [binary dir]
    local dir="$out/$1"; mkdir -p "$dir"
    cat >"$dir/fngate.toml" <<TOML
[server]
listen = "127.0.0.1:0"
plaintext_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "data"
[telemetry]
$2
[[service]]
name = "bench"
[[service.function]]
name = "bytes"
instance_concurrency = 1024
max_queued = 10000
backend = { kind = "static", endpoints = ["http://127.0.0.1:39101"] }
[[trigger]]
name = "bytes"
kind = "http"
function = "bench/bytes"
path = "/b"
TOML
    TOKIO_WORKER_THREADS=1 taskset -c 0 "${3:-$bin}/fngate" serve --config "$dir/fngate.toml" >/dev/null 2>"$dir/stderr.log" &
    pids+=($!); gwpid[$1]=$!
    for _ in $(seq 100); do [ -f "$dir/data/listeners.json" ] && break; sleep 0.05; done
    python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['plaintext'])" "$dir/data/listeners.json"
}
ON=$'log = { stdout = true, file = { path = "logs/fngate.log", max_size = "64MiB", keep = 2 } }\notlp = { endpoint = "http://127.0.0.1:39118" }\ntraces = { sample_ratio = 0.1 }'
# on_file: the same with one log sink, the file (what a deployment that ships files would run).
ON_FILE=${ON/stdout = true/stdout = false}
CFGS="off on on_file ${BASE:+on_base}"
declare -A addr
# Not `$(start_gw …)`: a subshell would lose the PID start_gw records.
for cfg in $CFGS; do
    case $cfg in off) sec='log = { stdout = false }' b= ;; on) sec=$ON b= ;; on_file) sec=$ON_FILE b= ;; on_base) sec=$ON b=$BASE ;; esac
    start_gw "$cfg" "$sec" "$b" >"$out/$cfg.addr"
    addr[$cfg]=$(cat "$out/$cfg.addr")
done

declare -A res cpu
for r in $(seq "$ROUNDS"); do
    for cfg in $CFGS; do
        a=${addr[$cfg]}; p=${gwpid[$cfg]}
        t0=$(cpu_ticks "$p")
        taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" "http://$a/b/bytes/1024" >"$out/wrk-$cfg-$r.txt"
        t1=$(cpu_ticks "$p")
        rps=$(awk '/^Requests\/sec/ {print $2}' "$out/wrk-$cfg-$r.txt")
        n=$(awk '/requests in/ {print $1}' "$out/wrk-$cfg-$r.txt")
        us=$(awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
        echo "round $r $cfg: $rps req/s, $us us CPU/request"
        res[$cfg]+="$rps "; cpu[$cfg]+="$us "
    done
done
for cfg in $CFGS; do
    printf '%s\n' ${res[$cfg]} | sort -n | awk -v c="$cfg" '{a[NR]=$1} END {printf "%s: median %.0f req/s (min %.0f, max %.0f)\n", c, a[int((NR+1)/2)], a[1], a[NR]}'
    printf '%s\n' ${cpu[$cfg]} | sort -n | awk -v c="$cfg" '{a[NR]=$1} END {printf "%s_cpu: median %.1f us/request (min %.1f, max %.1f)\n", c, a[int((NR+1)/2)], a[1], a[NR]}'
done | tee "$out/summary.txt"
python3 - "$out/summary.txt" <<'PY'
import re, sys
m = {k: float(v) for k, v in re.findall(r"^(\w+): median ([\d.]+)", open(sys.argv[1]).read(), re.M)}
off, on = m["off"], m["on"]
print(f"on/off = {on/off:.3f} ({(1 - on/off) * 100:.1f}% lower throughput with telemetry on)")
print(f"CPU per request on/off = {m['on_cpu']/m['off_cpu']:.3f}")
print(f"on_file/off = {m['on_file']/off:.3f} ({(1 - m['on_file']/off) * 100:.1f}% lower throughput), CPU per request {m['on_file_cpu']/m['off_cpu']:.3f}")
if "on_base" in m:
    print(f"on: this build / BASE = {on/m['on_base']:.3f} (throughput), {m['on_cpu']/m['on_base_cpu']:.3f} (CPU per request)")
PY
