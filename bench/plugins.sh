#!/usr/bin/env bash
# Policy plugin cost, side by side in one run:
#  1. micro-benchmark of one host call (gateway/examples/plugin_cost.rs): reused instance vs a
#     fresh instance per call, p50/p90/p99 over CALLS calls, three interleaved rounds each;
#  2. end-to-end throughput through fngate with 0, 1 and 3 plugins in the trigger's chain
#     (header_router, each configured to pass), wrk closed loop, ROUNDS interleaved rounds.
# Pinning as in bench/run.sh: fngate on core 0 with one worker; wrk and the backend on core 1.
# Writes bench/out/plugins/ (raw) and replaces the "Policy plugins" section of bench/RESULTS.md.
#
#   bench/plugins.sh                 # ROUNDS=5 DUR=8 CALLS=20000
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"
DUR="${DUR:-8}"
CALLS="${CALLS:-20000}"
CONNS="${CONNS:-64}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
out=bench/out/plugins
rm -rf "$out" && mkdir -p "$out"

[ "${SKIP_BUILD:-0}" = 1 ] || {
    ./plugins/build.sh >/dev/null
    cargo build --release --locked -p fngate -p demo-backend --example plugin_cost
}
command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)"; exit 1; }
bin=target/release
wasm="$PWD/plugins/target/wasm32-wasip2/release/header_router.wasm"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

echo "== micro-benchmark: $CALLS calls per round"
CALLS=$CALLS taskset -c "$PROXY_CPU" "$bin/examples/plugin_cost" "$wasm" | tee "$out/micro.txt"

taskset -c "$LOAD_CPU" "$bin/demo-backend" --listen 127.0.0.1:39001 --threads 1 >/dev/null & pids+=($!)

# One gateway per chain length, each on its own port.
for n in 0 1 3; do
    dir="$out/gw$n"; mkdir -p "$dir"
    chain=""; plugin_defs=""
    for i in $(seq 1 "$n"); do
        plugin_defs+=$'[[plugin]]\n'"name = \"p$i\""$'\n'"path = \"$wasm\""$'\n'$'config = { canary_percent = "0" }\n\n'
        chain+="\"p$i\","
    done
    cat >"$dir/fngate.toml" <<EOF
[server]
listen = "127.0.0.1:3844$n"
plaintext_listen = "127.0.0.1:3808$n"
admin_listen = "127.0.0.1:3944$n"
data_dir = "data"
[server.limits]
max_connections = 20000
[telemetry]
log = { stdout = false }

$plugin_defs
[[service]]
name = "bench"
[[service.function]]
name = "bytes"
instance_concurrency = 1000
max_queued = 10000
backend = { kind = "static", endpoints = ["http://127.0.0.1:39001"] }

[[trigger]]
name = "bytes"
kind = "http"
function = "bench/bytes"
path = "/bytes"
strip_prefix = false
plugins = [${chain%,}]
EOF
    TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" "$bin/fngate" serve --config "$dir/fngate.toml" >/dev/null 2>"$dir/stderr.log" & pids+=($!)
done
for n in 0 1 3; do
    for _ in $(seq 100); do [ -f "$out/gw$n/data/listeners.json" ] && break; sleep 0.1; done
    curl -sf -o /dev/null "http://127.0.0.1:3808$n/bytes/1024" || { echo "gateway with $n plugins did not answer"; cat "$out/gw$n/stderr.log"; exit 1; }
done

echo "== end to end: $ROUNDS rounds x ${DUR}s, chains of 0, 1, 3 plugins, interleaved"
for r in $(seq "$ROUNDS"); do
    for n in 0 1 3; do
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:3808$n/bytes/1024" >"$out/wrk-$n-$r.txt"
        echo "round $r, $n plugin(s): $(grep Requests/sec "$out/wrk-$n-$r.txt")"
    done
done

python3 - "$out" "$ROUNDS" "$DUR" "$CALLS" <<'PY'
import re, statistics, sys, pathlib, datetime, subprocess
out, rounds, dur, calls = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
rps = {n: [] for n in (0, 1, 3)}
for n in rps:
    for r in range(1, rounds + 1):
        t = (out / f"wrk-{n}-{r}.txt").read_text()
        rps[n].append(float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)))
micro = (out / "micro.txt").read_text()
m = re.search(r"reuse_p50_us=([\d.]+) fresh_p50_us=([\d.]+)", micro)
med = {n: statistics.median(v) for n, v in rps.items()}
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
lines = [
    "## Policy plugins",
    "",
    f"Measured {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC at commit {commit} by `bench/plugins.sh` "
    f"(ROUNDS={rounds} DUR={dur} CALLS={calls}); fngate pinned to core 0 with one worker, wrk and the backend on core 1; "
    "plaintext HTTP/1.1, 64 connections, GET /bytes/1024; each plugin is `header_router` configured to pass.",
    "",
    "Per call through the host (`gateway/examples/plugin_cost.rs`, a request with 10 headers), median of three interleaved rounds:",
    "",
    "| mode | p50 per call |",
    "|---|---|",
    f"| reused instance (what fngate does) | {m.group(1)} µs |",
    f"| fresh instance per call | {m.group(2)} µs |",
    "",
    "Raw rounds:",
    "",
    "```",
    *[l for l in micro.splitlines() if l.strip()],
    "```",
    "",
    "End to end (req/s, wrk):",
    "",
    "| plugins in chain | min | median | max | ratio to 0 plugins |",
    "|---|---|---|---|---|",
]
for n in (0, 1, 3):
    v = rps[n]
    lines.append(f"| {n} | {min(v):,.0f} | {med[n]:,.0f} | {max(v):,.0f} | {med[n] / med[0]:.2f}× |")
cost1 = 1 - med[1] / med[0]
lines += [
    "",
    f"Targets: ≤ 3 µs median per call — **{'met' if float(m.group(1)) <= 3 else 'not met'}** ({m.group(1)} µs); "
    f"one plugin costs ≤ 10% of throughput — **{'met' if cost1 <= 0.10 else 'not met'}** ({cost1 * 100:.1f}%).",
    "",
]
res = pathlib.Path("bench/RESULTS.md")
text = res.read_text() if res.exists() else "# fngate benchmarks\n\n"
text = re.sub(r"\n## Policy plugins\n.*?(?=\n## |\Z)", "\n", text, flags=re.S).rstrip() + "\n\n" + "\n".join(lines)
res.write_text(text)
print("\n".join(lines))
PY
