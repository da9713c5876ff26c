#!/usr/bin/env bash
# fngate proxy benchmark: throughput (wrk, closed loop) and latency at a fixed rate (oha, open loop)
# of fngate side by side with direct-to-backend, nginx and HAProxy, over plaintext and TLS
# (HTTP/1.1 keep-alive, GET /bytes/1024). See bench/README.md and /work/shared/BENCH.md.
#
#   bench/run.sh                      # full run: ROUNDS=5, DUR=10, LAT_DUR=10 (~15 min after builds)
#   ROUNDS=1 DUR=3 LAT_DUR=3 bench/run.sh   # smoke run (RESULTS.md is marked "smoke run — not results")
#
# Everything it starts is stopped by PID on exit. It writes only under bench/out/ (raw outputs,
# configs, logs, TLS material) and bench/RESULTS.md. Ports: 127.0.0.1 only (see PORTS below).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$BENCH_DIR")"
cd "$ROOT"

# ---- knobs -----------------------------------------------------------------------------------
ROUNDS="${ROUNDS:-5}"              # throughput rounds; every configuration runs once per round
DUR="${DUR:-10}"                   # seconds per wrk run
CONNS="${CONNS:-64}"               # connections, wrk and oha alike
WARMUP="${WARMUP:-2}"              # seconds of unrecorded wrk per configuration before round 1 (0: none)
LAT_ROUNDS="${LAT_ROUNDS:-$ROUNDS}" # latency rounds (interleaved like throughput)
LAT_DUR="${LAT_DUR:-10}"           # seconds per oha run
LAT_FRACTION="${LAT_FRACTION:-0.5}" # fixed rate = this x nginx's median req/s, per transport
LAT_RATE_PLAIN="${LAT_RATE_PLAIN:-}" # override the plaintext fixed rate (req/s)
LAT_RATE_TLS="${LAT_RATE_TLS:-}"     # override the TLS fixed rate (req/s)
PROXY_CPU="${PROXY_CPU:-0}"        # core for the proxy under test
LOAD_CPU="${LOAD_CPU:-1}"          # core for the load generator and the backend
FNGATE_LOG_VARIANT="${FNGATE_LOG_VARIANT:-0}" # 1: also measure fngate with its per-request log on
SKIP_INSTALL="${SKIP_INSTALL:-0}"  # 1: do not apt-get / cargo install anything
SKIP_BUILD="${SKIP_BUILD:-0}"      # 1: use the release binaries already in the target dir
SKIP_LATENCY="${SKIP_LATENCY:-0}"  # 1: throughput only
PAYLOAD=1024

OUT="$BENCH_DIR/out"
RESULTS="$BENCH_DIR/RESULTS.md"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN="$TARGET_DIR/release"

# ---- ports (127.0.0.1 only) --------------------------------------------------------------------
P_BACKEND=19001
P_FNGATE_TLS=18443 P_FNGATE_PLAIN=18080 P_FNGATE_ADMIN=19443
P_NGINX_PLAIN=18081 P_NGINX_TLS=18444
P_HAPROXY_PLAIN=18082 P_HAPROXY_TLS=18445
P_FNLOG_TLS=18453 P_FNLOG_PLAIN=18090 P_FNLOG_ADMIN=19453

# The command as it can be re-run, with every knob spelled out.
CMD="ROUNDS=$ROUNDS DUR=$DUR CONNS=$CONNS WARMUP=$WARMUP LAT_ROUNDS=$LAT_ROUNDS LAT_DUR=$LAT_DUR LAT_FRACTION=$LAT_FRACTION"
[ -n "$LAT_RATE_PLAIN" ] && CMD+=" LAT_RATE_PLAIN=$LAT_RATE_PLAIN"
[ -n "$LAT_RATE_TLS" ] && CMD+=" LAT_RATE_TLS=$LAT_RATE_TLS"
[ "$FNGATE_LOG_VARIANT" = 1 ] && CMD+=" FNGATE_LOG_VARIANT=1"
[ "$SKIP_LATENCY" = 1 ] && CMD+=" SKIP_LATENCY=1"
[ "$PROXY_CPU/$LOAD_CPU" != "0/1" ] && CMD+=" PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU"
CMD+=" bench/run.sh"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- process bookkeeping: every process we start is stopped by PID ----------------------------
PIDS=()          # long-lived: backend, proxies
CURRENT_PID=""   # the load generator running now, if any
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$CURRENT_PID" ]; then kill -TERM "$CURRENT_PID" 2>/dev/null || true; fi
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}" $CURRENT_PID; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}" $CURRENT_PID; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "$rc" != 0 ] && log "stopped (exit $rc); raw outputs in $OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run a load generator in the background so the traps can stop it, and wait for it.
run_load() { # run_load OUTFILE ERRFILE cmd...
    local out="$1" err="$2"; shift 2
    "$@" >"$out" 2>"$err" &
    CURRENT_PID=$!
    local rc=0
    wait "$CURRENT_PID" || rc=$?
    CURRENT_PID=""
    return "$rc"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_http() { # wait_http NAME URL [curl args...]: until it answers 200 with PAYLOAD bytes
    local name="$1" url="$2"; shift 2
    local got=""
    for _ in $(seq 100); do
        got="$(curl -sS -o /dev/null -w '%{http_code} %{size_download}' --max-time 2 "$@" "$url" 2>/dev/null || true)"
        [ "$got" = "200 $PAYLOAD" ] && return 0
        sleep 0.1
    done
    die "$name did not answer 200 with $PAYLOAD bytes at $url (last: '${got}'); logs in $OUT"
}

check_alive() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "process $pid ($(cat "$OUT/pids/$pid" 2>/dev/null || echo '?')) died; logs in $OUT"
    done
}

start_bg() { # start_bg NAME STDOUT STDERR cmd...: start a long-lived process, remember its PID
    local name="$1" so="$2" se="$3"; shift 3
    "$@" >"$so" 2>"$se" &
    local pid=$!
    PIDS+=("$pid")
    echo "$name" >"$OUT/pids/$pid"
    log "started $name (pid $pid)"
}

# ---- 1. tools -----------------------------------------------------------------------------------
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH:/usr/sbin:/sbin"
if [ "$SKIP_INSTALL" != 1 ]; then
    missing=()
    for pair in nginx:nginx haproxy:haproxy wrk:wrk openssl:openssl curl:curl taskset:util-linux python3:python3; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [ "$SKIP_LATENCY" != 1 ] && ! command -v oha >/dev/null 2>&1; then
        log "installing oha from crates.io (cargo install oha --locked; several minutes)"
        cargo install oha --locked || log "oha install failed: the latency part will be skipped"
    fi
fi
for c in nginx haproxy wrk openssl curl taskset python3 cargo; do
    command -v "$c" >/dev/null 2>&1 || die "$c not found (run without SKIP_INSTALL=1, or install it)"
done
LATENCY=1
LATENCY_NOTE=""
if [ "$SKIP_LATENCY" = 1 ]; then
    LATENCY=0; LATENCY_NOTE="latency part skipped (SKIP_LATENCY=1)"
elif ! command -v oha >/dev/null 2>&1; then
    LATENCY=0; LATENCY_NOTE="latency part skipped: oha is not installed (cargo install oha --locked failed or was skipped)"
    log "$LATENCY_NOTE"
fi
ncpu="$(nproc)"
{ [ "$PROXY_CPU" -lt "$ncpu" ] && [ "$LOAD_CPU" -lt "$ncpu" ]; } ||
    die "PROXY_CPU=$PROXY_CPU / LOAD_CPU=$LOAD_CPU: this machine has $ncpu CPU(s)"

# ---- 2. build -----------------------------------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
    log "building release binaries (cargo build --release --locked -p fngate -p demo-backend)"
    cargo build --release --locked -p fngate -p demo-backend
fi
[ -x "$BIN/fngate" ] && [ -x "$BIN/demo-backend" ] || die "release binaries missing in $BIN"

# ---- 3. output dir, ports, TLS material -----------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$OUT"/{tls,wrk,oha,pids,nginx/tmp,haproxy,fngate,fngate-log,backend,tlscheck}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ports=("$P_BACKEND" "$P_FNGATE_TLS" "$P_FNGATE_PLAIN" "$P_FNGATE_ADMIN" "$P_NGINX_PLAIN" "$P_NGINX_TLS" "$P_HAPROXY_PLAIN" "$P_HAPROXY_TLS")
[ "$FNGATE_LOG_VARIANT" = 1 ] && ports+=("$P_FNLOG_TLS" "$P_FNLOG_PLAIN" "$P_FNLOG_ADMIN")
for p in "${ports[@]}"; do port_in_use "$p" && die "127.0.0.1:$p is already in use"; done

log "generating an ECDSA P-256 CA and a leaf certificate for localhost / 127.0.0.1"
TLS="$OUT/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj "/CN=fngate bench CA" -keyout "$TLS/ca-key.pem" -out "$TLS/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout "$TLS/key.pem" -out "$TLS/leaf.csr" 2>/dev/null
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$TLS/leaf.ext"
openssl x509 -req -in "$TLS/leaf.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca-key.pem" -CAcreateserial \
    -days 7 -sha256 -extfile "$TLS/leaf.ext" -out "$TLS/cert.pem" 2>/dev/null
cat "$TLS/cert.pem" "$TLS/key.pem" >"$TLS/haproxy.pem"   # HAProxy wants cert + key in one file

# ---- 4. configs -------------------------------------------------------------------------------------
cat >"$OUT/nginx/nginx.conf" <<EOF
# written by bench/run.sh
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $OUT/nginx/tmp/body;
    proxy_temp_path $OUT/nginx/tmp/proxy;
    fastcgi_temp_path $OUT/nginx/tmp/fastcgi;
    uwsgi_temp_path $OUT/nginx/tmp/uwsgi;
    scgi_temp_path $OUT/nginx/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    upstream backend {
        server 127.0.0.1:$P_BACKEND;
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$P_NGINX_PLAIN;
        listen 127.0.0.1:$P_NGINX_TLS ssl http2;
        ssl_certificate $TLS/cert.pem;
        ssl_certificate_key $TLS/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF

cat >"$OUT/haproxy/haproxy.cfg" <<EOF
# written by bench/run.sh
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 75s
frontend plain
    bind 127.0.0.1:$P_HAPROXY_PLAIN
    default_backend backend
frontend tls
    bind 127.0.0.1:$P_HAPROXY_TLS ssl crt $TLS/haproxy.pem alpn h2,http/1.1
    default_backend backend
backend backend
    server b1 127.0.0.1:$P_BACKEND
EOF

fngate_conf() { # fngate_conf DIR TLS_PORT PLAIN_PORT ADMIN_PORT LOG_STDOUT
    cat >"$1/fngate.toml" <<EOF
# written by bench/run.sh
[server]
listen = "127.0.0.1:$2"
plaintext_listen = "127.0.0.1:$3"
admin_listen = "127.0.0.1:$4"
data_dir = "data"
tls = { cert = "$TLS/cert.pem", key = "$TLS/key.pem" }
[server.limits]
max_connections = 20000
[telemetry]
log = { stdout = $5 }
[[service]]
name = "bench"
[[service.function]]
name = "bytes"
instance_concurrency = 1000
max_queued = 10000
backend = { kind = "static", endpoints = ["http://127.0.0.1:$P_BACKEND"] }
[[trigger]]
name = "bytes"
kind = "http"
function = "bench/bytes"
path = "/bytes"
strip_prefix = false
EOF
}
fngate_conf "$OUT/fngate" "$P_FNGATE_TLS" "$P_FNGATE_PLAIN" "$P_FNGATE_ADMIN" false
[ "$FNGATE_LOG_VARIANT" = 1 ] && fngate_conf "$OUT/fngate-log" "$P_FNLOG_TLS" "$P_FNLOG_PLAIN" "$P_FNLOG_ADMIN" true

nginx -t -q -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/error.log" || die "nginx config test failed"
haproxy -c -q -f "$OUT/haproxy/haproxy.cfg" || die "haproxy config check failed"
"$BIN/fngate" check --config "$OUT/fngate/fngate.toml" >"$OUT/fngate/check.txt" 2>&1 ||
    die "fngate check failed: $(cat "$OUT/fngate/check.txt")"

# ---- 5. start everything -------------------------------------------------------------------------
start_bg backend "$OUT/backend/stdout.log" "$OUT/backend/stderr.log" taskset -c "$LOAD_CPU" "$BIN/demo-backend" --listen "127.0.0.1:$P_BACKEND" --threads 1
wait_http backend "http://127.0.0.1:$P_BACKEND/bytes/$PAYLOAD"

start_bg nginx "$OUT/nginx/stdout.log" "$OUT/nginx/stderr.log" taskset -c "$PROXY_CPU" nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/error.log"
start_bg haproxy "$OUT/haproxy/stdout.log" "$OUT/haproxy/stderr.log" taskset -c "$PROXY_CPU" haproxy -db -f "$OUT/haproxy/haproxy.cfg"
start_fngate() { # start_fngate NAME DIR STDOUT (stdout carries the per-request log lines, if on)
    start_bg "$1" "$3" "$2/stderr.log" env TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" "$BIN/fngate" serve --config "$2/fngate.toml"
    for _ in $(seq 100); do [ -f "$2/data/listeners.json" ] && return 0; sleep 0.1; done
    die "$1 did not write $2/data/listeners.json; see $2/stderr.log"
}
start_fngate fngate "$OUT/fngate" "$OUT/fngate/stdout.log"
[ "$FNGATE_LOG_VARIANT" = 1 ] && start_fngate fngate-log "$OUT/fngate-log" /dev/null  # log lines formatted and written, not kept

# Configurations, in the order each round runs them (A B C D … A B C D …).
declare -A URL
URL[direct-plain]="http://127.0.0.1:$P_BACKEND/bytes/$PAYLOAD"
URL[nginx-plain]="http://127.0.0.1:$P_NGINX_PLAIN/bytes/$PAYLOAD"
URL[haproxy-plain]="http://127.0.0.1:$P_HAPROXY_PLAIN/bytes/$PAYLOAD"
URL[fngate-plain]="http://127.0.0.1:$P_FNGATE_PLAIN/bytes/$PAYLOAD"
URL[nginx-tls]="https://localhost:$P_NGINX_TLS/bytes/$PAYLOAD"
URL[haproxy-tls]="https://localhost:$P_HAPROXY_TLS/bytes/$PAYLOAD"
URL[fngate-tls]="https://localhost:$P_FNGATE_TLS/bytes/$PAYLOAD"
CONFIGS=(direct-plain nginx-plain haproxy-plain fngate-plain nginx-tls haproxy-tls fngate-tls)
if [ "$FNGATE_LOG_VARIANT" = 1 ]; then
    URL[fngatelog-plain]="http://127.0.0.1:$P_FNLOG_PLAIN/bytes/$PAYLOAD"
    URL[fngatelog-tls]="https://localhost:$P_FNLOG_TLS/bytes/$PAYLOAD"
    CONFIGS+=(fngatelog-plain fngatelog-tls)
fi
# Latency also runs direct (plaintext: the backend has no TLS) at the TLS rate, as the baseline the
# TLS configurations' added latency is measured against; it runs just before them.
URL[direct-tlsrate]="${URL[direct-plain]}"
LAT_CONFIGS=()
for c in "${CONFIGS[@]}"; do
    [ "$c" = nginx-tls ] && LAT_CONFIGS+=(direct-tlsrate)
    LAT_CONFIGS+=("$c")
done

for c in "${CONFIGS[@]}"; do
    u="${URL[$c]}"
    if [[ "$u" == https://* ]]; then
        port="${u#https://localhost:}"; port="${port%%/*}"
        # Verify the chain and the name, and record what TLS was negotiated.
        wait_http "$c" "$u" --cacert "$TLS/ca.pem" --resolve "localhost:$port:127.0.0.1"
        openssl s_client -brief -connect "127.0.0.1:$port" -servername localhost -verify_hostname localhost \
            -CAfile "$TLS/ca.pem" </dev/null \
            >"$OUT/tlscheck/$c.txt" 2>&1 || true
    else
        wait_http "$c" "$u"
    fi
done
check_alive

# ---- 6. machine facts -------------------------------------------------------------------------------
commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo uncommitted)"
if [ "$commit" != uncommitted ] && [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then
    commit="$commit + uncommitted changes"
fi
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$ncpu"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "kernel=$(uname -r)"
    echo "commit=$commit"
    echo "command=$CMD"
    echo "rounds=$ROUNDS"
    echo "dur=$DUR"
    echo "conns=$CONNS"
    echo "lat_rounds=$LAT_ROUNDS"
    echo "lat_dur=$LAT_DUR"
    echo "lat_fraction=$LAT_FRACTION"
    echo "latency=$LATENCY"
    echo "latency_note=$LATENCY_NOTE"
    echo "proxy_cpu=$PROXY_CPU"
    echo "load_cpu=$LOAD_CPU"
    echo "payload=$PAYLOAD"
    echo "configs=${CONFIGS[*]}"
    echo "lat_configs=${LAT_CONFIGS[*]}"
    echo "fngate_version=$("$BIN/fngate" --version 2>&1 | head -1)"
    echo "nginx_version=$(nginx -v 2>&1 | head -1)"
    echo "haproxy_version=$(haproxy -v 2>&1 | head -1 | sed 's/ - https.*//')"
    echo "wrk_version=$(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//')"
    echo "oha_version=$(command -v oha >/dev/null && oha --version 2>&1 | head -1 || echo none)"
    echo "openssl_version=$(openssl version 2>&1 | head -1)"
} >"$OUT/meta.txt"

# ---- 7. throughput (wrk, closed loop) -----------------------------------------------------------------
n=${#CONFIGS[@]}
est=$(( (WARMUP > 0 ? n * (WARMUP + 1) : 0) + ROUNDS * n * (DUR + 1) ))
[ "$LATENCY" = 1 ] && est=$(( est + LAT_ROUNDS * ${#LAT_CONFIGS[@]} * (LAT_DUR + 1) ))
log "measuring ${CONFIGS[*]}: $ROUNDS x ${DUR}s throughput$([ "$LATENCY" = 1 ] && echo ", $LAT_ROUNDS x ${LAT_DUR}s latency"); about $((est / 60)) min $((est % 60)) s"

if [ "$WARMUP" -gt 0 ]; then
    for c in "${CONFIGS[@]}"; do
        run_load "$OUT/wrk/$c.warmup.txt" "$OUT/wrk/$c.warmup.err" \
            taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${URL[$c]}" || die "wrk warm-up of $c failed"
    done
fi
for r in $(seq 1 "$ROUNDS"); do
    for c in "${CONFIGS[@]}"; do
        f="$OUT/wrk/$c.r$r.txt"
        run_load "$f" "$OUT/wrk/$c.r$r.err" \
            taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "${URL[$c]}" || die "wrk failed for $c (see $f)"
        log "round $r/$ROUNDS $c: $(grep -m1 'Requests/sec' "$f" | tr -s ' ')"
        check_alive
    done
done

# ---- 8. latency at a fixed rate (oha, open loop) ------------------------------------------------------
if [ "$LATENCY" = 1 ]; then
    rate_plain="${LAT_RATE_PLAIN:-$(python3 "$BENCH_DIR/report.py" rate "$OUT" plain "$LAT_FRACTION")}"
    rate_tls="${LAT_RATE_TLS:-$(python3 "$BENCH_DIR/report.py" rate "$OUT" tls "$LAT_FRACTION")}"
    printf 'plain=%s\ntls=%s\n' "$rate_plain" "$rate_tls" >"$OUT/oha/rates.txt"
    log "fixed rates: plaintext $rate_plain req/s, TLS $rate_tls req/s"
    for r in $(seq 1 "$LAT_ROUNDS"); do
        for c in "${LAT_CONFIGS[@]}"; do
            u="${URL[$c]}"
            rate="$rate_plain"; tlsargs=()
            if [[ "$u" == https://* ]]; then tlsargs=(--cacert "$TLS/ca.pem" --ipv4); fi
            if [[ "$c" == *-tls || "$c" == *-tlsrate ]]; then rate="$rate_tls"; fi
            f="$OUT/oha/$c.r$r.json"
            run_load "$f" "$OUT/oha/$c.r$r.err" \
                taskset -c "$LOAD_CPU" oha -z "${LAT_DUR}s" -q "$rate" --latency-correction -c "$CONNS" \
                --no-tui --output-format json --worker-threads 1 "${tlsargs[@]}" "$u" ||
                die "oha failed for $c (see $f and ${f%.json}.err)"
            log "latency round $r/$LAT_ROUNDS $c: $(python3 "$BENCH_DIR/report.py" oha-line "$f")"
            check_alive
        done
    done
fi

# ---- 9. report -------------------------------------------------------------------------------------------
python3 "$BENCH_DIR/report.py" report "$OUT" "$RESULTS"
log "wrote $RESULTS (raw outputs in $OUT)"
