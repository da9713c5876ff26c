#!/usr/bin/env bash
# Telemetry cost in instructions per request (valgrind callgrind): stable run to run and on a
# busy machine, where bench/telemetry.sh's req/s and CPU time are not. Same configurations as
# bench/telemetry.sh (off; on = stdout + file log sinks and OTLP traces at 0.1 to a real
# collector), plus BASE=DIR (an older release build) running "on" as on_base.
#
# Each gateway runs under callgrind (all of its threads: request path, log writers, trace
# exporter); WARM requests first, then the counters are zeroed, N requests are sent over CONNS
# keep-alive connections, the exporters get 1.5 s to send what they hold, and the counters are
# dumped: instructions / N.
#
#   bench/telemetry_instructions.sh     # N=20000 WARM=2000 CONNS=8
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-20000}" WARM="${WARM:-2000}" CONNS="${CONNS:-8}"
out=bench/out/telemetry_instructions
rm -rf "$out" && mkdir -p "$out"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked -p fngate -p demo-backend
bin="${CARGO_TARGET_DIR:-target}/release"
command -v valgrind >/dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)"; exit 1; }
rotel="${FNGATE_ROTEL:-$(python3 -c 'import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')}"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/demo-backend" --listen 127.0.0.1:39201 --threads 1 >/dev/null & pids+=($!)
"$rotel" start --otlp-grpc-endpoint 127.0.0.1:39217 --otlp-http-endpoint 127.0.0.1:39218 \
    --exporter blackhole >/dev/null 2>&1 & pids+=($!)

# N requests over CONNS keep-alive connections; exits non-zero on any non-200.
load() { # addr count
    python3 - "$1" "$2" "$CONNS" <<'PY'
import http.client, sys, threading
host, port = sys.argv[1].rsplit(":", 1)
n, conns = int(sys.argv[2]), int(sys.argv[3])
bad = []
def run(k):
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    for _ in range(k):
        c.request("GET", "/b/bytes/1024")
        r = c.getresponse(); r.read()
        if r.status != 200: bad.append(r.status)
ts = [threading.Thread(target=run, args=(n // conns + (i < n % conns),)) for i in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
sys.exit(f"non-200 answers: {bad[:5]}" if bad else 0)
PY
}

ON=$'log = { stdout = true, file = { path = "logs/fngate.log", max_size = "64MiB", keep = 2 } }\notlp = { endpoint = "http://127.0.0.1:39218" }\ntraces = { sample_ratio = 0.1 }'
for cfg in off on ${BASE:+on_base}; do
    case $cfg in off) sec='log = { stdout = false }' b=$bin ;; on) sec=$ON b=$bin ;; on_base) sec=$ON b=$BASE ;; esac
    dir="$out/$cfg"; mkdir -p "$dir"
    cat >"$dir/fngate.toml" <<TOML
[server]
listen = "127.0.0.1:0"
plaintext_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "data"
[telemetry]
$sec
[[service]]
name = "bench"
[[service.function]]
name = "bytes"
instance_concurrency = 1024
max_queued = 10000
backend = { kind = "static", endpoints = ["http://127.0.0.1:39201"] }
[[trigger]]
name = "bytes"
kind = "http"
function = "bench/bytes"
path = "/b"
TOML
    TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$dir/callgrind.out" \
        "$b/fngate" serve --config "$dir/fngate.toml" >/dev/null 2>"$dir/stderr.log" &
    gw=$!; pids+=($gw)
    for _ in $(seq 600); do [ -f "$dir/data/listeners.json" ] && break; sleep 0.1; done
    addr=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['plaintext'])" "$dir/data/listeners.json")
    load "$addr" "$WARM"
    callgrind_control --zero "$gw" >/dev/null
    load "$addr" "$N"
    sleep 1.5
    callgrind_control --dump="measured" "$gw" >/dev/null
    sleep 0.5
    kill "$gw"; wait "$gw" 2>/dev/null || true
    # The dumps made on request (one file per thread) are those whose description says "measured".
    ir=$(grep -l '^desc: Trigger: .*measured' "$dir"/callgrind.out* | xargs awk '/^summary:/ {s += $2} END {print s}')
    echo "$cfg: $(awk -v i="$ir" -v n="$N" 'BEGIN {printf "%.0f", i / n}') instructions/request ($ir over $N requests)" | tee -a "$out/summary.txt"
done
python3 - "$out/summary.txt" <<'PY'
import re, sys
m = {k: float(v) for k, v in re.findall(r"^(\w+): (\d+) instructions", open(sys.argv[1]).read(), re.M)}
print(f"instructions per request on/off = {m['on'] / m['off']:.3f}")
if "on_base" in m:
    print(f"on: this build / BASE = {m['on'] / m['on_base']:.3f}")
PY
