#!/usr/bin/env bash
# Telemetry cost in instructions per request (valgrind callgrind): stable run to run and on a
# busy machine, where bench/telemetry.sh's req/s and CPU time are not. The configurations of
# bench/telemetry.sh (bench/telemetry_common.sh: off, on, on_file), plus BASE=DIR (an older
# release build) running "on" as on_base.
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
PORT_BASE=39201
. bench/telemetry_common.sh

"$bin/demo-backend" --listen "127.0.0.1:$backend_port" --threads 1 >/dev/null & pids+=($!)
start_collector

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

for cfg in off on on_file ${BASE:+on_base}; do
    b=$bin; [ "$cfg" = on_base ] && b=$BASE
    dir="$out/$cfg"
    gateway_config "$dir" "$cfg"
    TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$dir/callgrind.out" \
        "$b/fngate" serve --config "$dir/fngate.toml" >/dev/null 2>"$dir/stderr.log" &
    gw=$!; pids+=($gw)
    addr=$(plaintext_addr "$dir" 600)
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
print(f"instructions per request on_file/off = {m['on_file'] / m['off']:.3f}")
if "on_base" in m:
    print(f"on: this build / BASE = {m['on'] / m['on_base']:.3f}")
PY
