#!/usr/bin/env bash
# Telemetry overhead, side by side in one run: throughput through fngate with telemetry off,
# on (stdout to a pipe and a size-rotated file, OTLP traces at 0.1) and on_file (the file
# sink alone); the configurations are in bench/telemetry_common.sh.
# wrk closed loop, CONNS connections, plaintext HTTP/1.1 keep-alive (TLS=1: over TLS to the public
# listener, TLS 1.3 with its self-signed certificate), GET /bytes/1024 through one
# static-backend function; ROUNDS interleaved rounds. Pinning as bench/run.sh: fngate on core 0
# with one worker; wrk, the backend and the collector on core 1. Raw output: bench/out/telemetry/.
#
# Besides req/s, each round records fngate's CPU time per request (utime + stime of the process
# over the round / requests served): less sensitive than throughput to a noisy neighbour.
# BASE=DIR (a release dir holding an older fngate) adds off_base and on_base, "off" and "on" run
# by that binary, to compare two builds side by side. PIECES=1 adds traces_only, logs_only and
# stdout_only (bench/telemetry_common.sh), each reported over "off" round by round.
#
#   bench/telemetry.sh               # ROUNDS=5 DUR=8 CONNS=64
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}" DUR="${DUR:-8}" CONNS="${CONNS:-64}"
scheme=http listener=plaintext
if [ "${TLS:-0}" = 1 ]; then scheme=https listener=public; fi
out=bench/out/telemetry
rm -rf "$out" && mkdir -p "$out"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked -p fngate -p demo-backend
bin="${CARGO_TARGET_DIR:-target}/release"
command -v wrk >/dev/null || { echo "wrk is needed (Debian: apt-get install wrk)"; exit 1; }
PORT_BASE=39101
. bench/telemetry_common.sh

taskset -c 1 "$bin/demo-backend" --listen "127.0.0.1:$backend_port" --threads 1 >/dev/null & pids+=($!)
start_collector taskset -c 1

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A gwpid addr
CFGS="off on on_file ${BASE:+off_base on_base}"
# PIECES=1: also traces alone, the log sinks alone, stdout with traces (what each piece costs).
if [ "${PIECES:-0}" = 1 ]; then CFGS="$CFGS traces_only logs_only stdout_only"; fi
for cfg in $CFGS; do
    dir="$out/$cfg"
    gateway_config "$dir" "$cfg"
    b=$bin; [ "${cfg%_base}" != "$cfg" ] && b=$BASE
    # stdout is a pipe, read on core 1, as a container runtime or a log agent reads it: the
    # kernel's copy into the pipe is part of the stdout sink's cost (/dev/null would hide it).
    mkfifo "$dir/stdout.pipe"
    taskset -c 1 cat "$dir/stdout.pipe" >/dev/null & pids+=($!)
    TOKIO_WORKER_THREADS=1 taskset -c 0 "$b/fngate" serve --config "$dir/fngate.toml" >"$dir/stdout.pipe" 2>"$dir/stderr.log" &
    pids+=($!); gwpid[$cfg]=$!
    addr[$cfg]=$(listener_addr "$dir" "$listener")
    echo "${addr[$cfg]}" >"$out/$cfg.addr"
done

declare -A res cpu
for r in $(seq "$ROUNDS"); do
    for cfg in $CFGS; do
        a=${addr[$cfg]}; p=${gwpid[$cfg]}
        t0=$(cpu_ticks "$p")
        taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" "$scheme://$a/b/bytes/1024" >"$out/wrk-$cfg-$r.txt"
        t1=$(cpu_ticks "$p")
        rps=$(awk '/^Requests\/sec/ {print $2}' "$out/wrk-$cfg-$r.txt")
        # A figure made of errors is no figure: say so next to it.
        if grep -qE "Non-2xx|Socket errors" "$out/wrk-$cfg-$r.txt"; then
            echo "round $r $cfg: wrk saw errors: $(grep -E 'Non-2xx|Socket errors' "$out/wrk-$cfg-$r.txt" | tr '\n' ' ')"
        fi
        n=$(awk '/requests in/ {print $1}' "$out/wrk-$cfg-$r.txt")
        us=$(awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
        echo "round $r $cfg: $rps req/s, $us us CPU/request" | tee -a "$out/rounds.txt"
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
    print(f"off: this build / BASE = {off/m['off_base']:.3f} (throughput), {m['off_cpu']/m['off_base_cpu']:.3f} (CPU per request)")
    print(f"BASE on/off = {m['on_base']/m['off_base']:.3f}")
PY
# The same ratios round by round (each round runs the configurations minutes apart at most, so
# a drift of the machine's speed between rounds cancels out): median, min and max.
python3 - "$out" "$ROUNDS" $CFGS <<'PY'
import re, statistics, sys
out, rounds, cfgs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rps = {c: [float(re.search(r"^Requests/sec:\s+([\d.]+)", open(f"{out}/wrk-{c}-{r}.txt").read(), re.M).group(1))
           for r in range(1, rounds + 1)] for c in cfgs}
cpu = {c: [float(re.search(r"([\d.]+) us CPU/request", l).group(1)) for l in open(f"{out}/rounds.txt") if f" {c}: " in l]
       for c in cfgs}
pairs = [("on", "off"), ("on_file", "off"), ("on_base", "off_base"), ("on", "on_base"), ("off", "off_base"),
         ("traces_only", "off"), ("logs_only", "off"), ("stdout_only", "off")]
for num, den in pairs:
    if num in rps and den in rps:
        q = [a / b for a, b in zip(rps[num], rps[den])]
        d = [a - b for a, b in zip(cpu[num], cpu[den])]
        print(f"{num}/{den} round by round: median {statistics.median(q):.3f} (min {min(q):.3f}, max {max(q):.3f}),"
              f" CPU per request {statistics.median(d):+.2f} us")
PY
