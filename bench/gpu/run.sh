#!/usr/bin/env bash
# GPU benchmark of issue 10: the example model function (examples/gpu-model/server.py) on one
# GPU, measured direct to the backend and through fngate, in one run of a few minutes.
#
# Meant for the GPU machine: run from anywhere in the repository, PyTorch importable by $PYTHON,
# no network, the release fngate binary carried over from the build machine. It builds nothing.
#
#   FNGATE_COMMIT=$(git rev-parse --short HEAD) bench/gpu/run.sh   # full run, base model (~4 min)
#   GPU_BENCH_TINY=1 PYTHON=/path/to/venv/bin/python3 \
#       FNGATE_BIN=target/debug/fngate bench/gpu/run.sh  # harness check on any machine (CPU, ~1 min)
#
# fngate: $FNGATE_BIN, else ./target/release/fngate, else ./bench/gpu/bin/fngate (both ignored
# by git: carry one to the GPU machine). FNGATE_COMMIT names the commit where there is no .git.
# GPU_BENCH_TINY=1: tiny model, --device cpu, 3 s runs, no nvidia-smi (fngate's [[gpu]] pool is
# still declared; the instances get their slice in the environment and ignore it on the CPU).
# Other knobs: see "knobs" below (RUN_SECONDS, CLIENTS, MAX_TOKENS, TOTAL_BUDGET_S, …).
#
# Phases, in this order; each has a time limit, a failed or timed-out phase is recorded (with
# what it measured so far) and the next one runs; the whole run stays within TOTAL_BUDGET_S:
#   env             GPU (nvidia-smi -L, driver, memory), torch, Python, commit, date, fngate version
#   direct          server.py --max-batch 8 started by this script: launch → /health time and the
#                   server's load breakdown (/stats); closed-loop streaming load at 1 and 8 clients
#   direct-nobatch  the same 8-client load on server.py --max-batch 1 (what batching buys)
#   fngate-start    fngate with the function as a process backend (instance_concurrency 8,
#                   max_instances 1, a GPU slice of half the card); no instance running yet
#   fngate-cold     one request that finds no instance: client TTFB / first token, the
#                   x-fngate-cold-start header, the log line's spawn / readiness split and the
#                   instance's own breakdown (its /stats through the gateway)
#   fngate-load     the direct load through fngate's plaintext listener (1 and 8 clients), each
#                   followed by the same load sent straight to the instance fngate started (same
#                   process: the fair direct peer), then 8 clients over TLS (the production path)
#   fngate-shared   max_instances 2 (config reload), PUT provisioned target 2: two instances on
#                   one card, each with half its memory; 16 clients; which instance served what;
#                   nvidia-smi memory per process
#   fngate-stop     SIGTERM: fngate stops its instances and exits
# Then bench/gpu/report.py writes the summary. Output, all under $OUT (default bench/gpu/out):
# gpu-results.md (summary), env.json, phases.txt, NAME.{start,load,stats,instances,…}.json,
# NAME.requests.jsonl (per request), *.log (server output), fngate.stdout.jsonl (fngate's
# invocation log lines and its instances' output), fngate.stderr.log, fngate.toml.
#
# Every process it starts is stopped by PID: at the end of its phase, and on exit (trap).
# Addresses: 127.0.0.1 only; ports picked free (server.py) or given by the kernel (fngate).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
SCRIPT_START=$(date +%s)
# The command line as given (the knobs set in the environment), for the results.
COMMAND=""
for v in GPU_BENCH_TINY PYTHON FNGATE_BIN OUT MODEL_SIZE DEVICE MAX_BATCH CLIENTS RUN_SECONDS \
        MAX_REQUESTS WARMUP_REQUESTS MAX_TOKENS START_TIMEOUT REQUEST_TIMEOUT NO_BATCH_RUN TLS_RUN \
        SHARED_CLIENTS GPU_TYPE TOTAL_BUDGET_S NVIDIA_SMI; do
    [ -n "${!v+x}" ] && COMMAND+="$v=$(printf '%q' "${!v}") "
done
COMMAND+="bench/gpu/run.sh"

# ---- knobs -----------------------------------------------------------------------------------
TINY="${GPU_BENCH_TINY:-0}"          # 1: harness check: tiny model on the CPU, short runs
if [ "$TINY" = 1 ]; then
    MODEL_SIZE="${MODEL_SIZE:-tiny}"
    DEVICE="${DEVICE:-cpu}"
    RUN_SECONDS="${RUN_SECONDS:-3}"
    NVIDIA_SMI="${NVIDIA_SMI:-0}"
fi
OUT="${OUT:-$ROOT/bench/gpu/out}"
PYTHON="${PYTHON:-python3}"
MODEL_SIZE="${MODEL_SIZE:-base}"     # server.py --size: tiny | small | base (~270M params)
DEVICE="${DEVICE:-auto}"             # server.py --device: auto | cuda | cpu
MAX_BATCH="${MAX_BATCH:-8}"          # server.py --max-batch = fngate instance_concurrency
CLIENTS="${CLIENTS:-1 8}"            # concurrent streaming clients, one measured run each
RUN_SECONDS="${RUN_SECONDS:-15}"     # a measured run: clients start requests for this long
MAX_REQUESTS="${MAX_REQUESTS:-200}"  # per client in a measured run (a cap; the time bounds it)
WARMUP_REQUESTS="${WARMUP_REQUESTS:-1}"  # per client, unrecorded, before each measured run
MAX_TOKENS="${MAX_TOKENS:-128}"      # tokens per request
START_TIMEOUT="${START_TIMEOUT:-180}"    # seconds for server.py to answer /health
REQUEST_TIMEOUT="${REQUEST_TIMEOUT:-120}" # seconds per request (load.py)
NO_BATCH_RUN="${NO_BATCH_RUN:-1}"    # 1: the direct-nobatch phase
TLS_RUN="${TLS_RUN:-1}"              # 1: also the largest CLIENTS through fngate's TLS listener
SHARED_CLIENTS="${SHARED_CLIENTS:-16}"   # clients for the two-instance run
GPU_TYPE="${GPU_TYPE:-}"             # the [[gpu]] type name in fngate's pool (a label); default:
                                     # from nvidia-smi's name (H100, H200, …), else H100
TOTAL_BUDGET_S="${TOTAL_BUDGET_S:-420}"  # phases that no longer fit are skipped; with fngate-stop
                                     # and the clean-up the run ends within ~TOTAL_BUDGET_S + 60
NVIDIA_SMI="${NVIDIA_SMI:-auto}"     # auto: use nvidia-smi when it is on PATH; 0: never

if [ -z "${FNGATE_BIN:-}" ]; then
    FNGATE_BIN=./target/release/fngate
    [ -x "$FNGATE_BIN" ] || FNGATE_BIN=./bench/gpu/bin/fngate
fi
case "$FNGATE_BIN" in /*) ;; *) FNGATE_BIN="$ROOT/${FNGATE_BIN#./}" ;; esac
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
# An absolute interpreter path for fngate's command line. Not resolved through symlinks: a
# virtual environment's python is a symlink that finds its environment by its own path.
PYTHON_CMD="$(command -v "$PYTHON" || true)"
[ -n "$PYTHON_CMD" ] || { echo "run.sh: no $PYTHON on PATH (set PYTHON)" >&2; exit 1; }
case "$PYTHON_CMD" in /*) ;; *) PYTHON_CMD="$PWD/$PYTHON_CMD" ;; esac
PYTHON="$PYTHON_CMD"
if [ "$NVIDIA_SMI" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then NVIDIA_SMI=1; else NVIDIA_SMI=0; fi
fi

SERVER="$ROOT/examples/gpu-model/server.py"
LOAD="$ROOT/bench/gpu/load.py"
GW="$ROOT/bench/gpu/gw.py"
FUNCTION=llm/generate
GW_DATA="$OUT/fngate-data"
RESERVE_S=25     # kept back from the budget for fngate-stop, the report and the exit trap

log() { printf '[gpu-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

case "$OUT" in
    / | "$HOME" | "$ROOT" | "$ROOT/") echo "run.sh: refusing OUT=$OUT" >&2; exit 1 ;;
esac
mkdir -p "$OUT"
# OUT is this script's own directory: an earlier run's outputs (these names) are removed.
rm -f "$OUT"/*.json "$OUT"/*.jsonl "$OUT"/*.csv "$OUT"/*.log "$OUT"/*.txt "$OUT"/*.toml \
    "$OUT"/*.tmp "$OUT"/*.pid "$OUT"/gpu-results.md
rm -rf "$GW_DATA"

# ---- process bookkeeping: everything started here is stopped by PID ----------------------------
# $OUT/pids.txt lists "PID TAG" for each live process this script started (phases run in
# subshells, so a file rather than a variable). TAG is the phase, or "fngate" for the gateway,
# which lives across the fngate phases.
PIDFILE="$OUT/pids.txt"
: > "$PIDFILE"
PHASE=main

register() { echo "$1 $2" >> "$PIDFILE"; }

# alive PID: running, and not a zombie (a process whose phase subshell has exited is reparented,
# and a container's PID 1 may be slow to reap it).
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ "$state" != Z ]
}
unregister() {
    local rest
    rest=$(grep -v "^$1 " "$PIDFILE" 2>/dev/null || true)
    printf '%s\n' "$rest" | sed '/^$/d' > "$PIDFILE.tmp" && mv "$PIDFILE.tmp" "$PIDFILE"
}

# stop_pid PID [GRACE_S]: SIGTERM, wait up to GRACE_S (default 15), then SIGKILL; forgets it.
stop_pid() {
    local pid=$1 grace=${2:-15} i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
        log "pid $pid ignored SIGTERM for $grace s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unregister "$pid"
}

# stop_tag TAG: stop every registered process with that tag.
stop_tag() {
    local pid tag
    while read -r pid tag; do
        [ "$tag" = "$1" ] && stop_pid "$pid" 10
    done < <(cat "$PIDFILE" 2>/dev/null)
    return 0
}

PHASE_PID=""     # the running phase's subshell
cleanup() {
    local rc=$? pid tag i
    trap - EXIT INT TERM
    # The phase first, so that it starts nothing more; then what it and the others started.
    [ -n "$PHASE_PID" ] && kill -TERM "$PHASE_PID" 2>/dev/null
    if [ -s "$PIDFILE" ]; then
        while read -r pid tag; do kill -TERM "$pid" 2>/dev/null || true; done < "$PIDFILE"
        # fngate gives its instances their stop grace (10 s) before it exits.
        while read -r pid tag; do
            for ((i = 0; i < 250; i++)); do alive "$pid" || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        done < "$PIDFILE"
        : > "$PIDFILE"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_phase NAME LIMIT_S FUNCTION [MIN_S]: FUNCTION in a subshell with `set -e`, stopped after
# LIMIT_S (or what is left of the budget, whichever is less; skipped when less than MIN_S is
# left). Its outcome goes to $OUT/phases.txt; the processes it registered are stopped after it.
PHASES_FAILED=0
run_phase() {
    local name=$1 limit=$2 fn=$3 min=${4:-20} left p rc=0 status started now
    now=$(date +%s)
    left=$((SCRIPT_START + TOTAL_BUDGET_S - RESERVE_S - now))
    if [ "$left" -lt "$min" ]; then
        log "phase $name: skipped, ${left}s of the budget left"
        echo "$name skipped 0 only ${left}s of TOTAL_BUDGET_S=${TOTAL_BUDGET_S}s left" >> "$OUT/phases.txt"
        PHASES_FAILED=$((PHASES_FAILED + 1))
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "phase $name (limit ${limit}s)"
    started=$(date +%s.%N)
    (
        trap - EXIT INT TERM
        set -e
        PHASE=$name
        "$fn"
    ) &
    p=$!
    PHASE_PID=$p
    local deadline=$(($(date +%s) + limit)) timed_out=0
    while kill -0 "$p" 2>/dev/null; do
        if [ "$(date +%s)" -ge "$deadline" ]; then timed_out=1; break; fi
        sleep 0.2
    done
    if [ "$timed_out" = 1 ]; then
        log "phase $name: over its ${limit}s limit; stopping it"
        kill -TERM "$p" 2>/dev/null || true
    fi
    wait "$p" || rc=$?
    PHASE_PID=""
    stop_tag "$name"
    local secs
    secs=$("$PYTHON" -c 'import sys, time; print(round(time.time() - float(sys.argv[1]), 1))' "$started")
    if [ "$timed_out" = 1 ]; then
        status=timeout
    elif [ "$rc" = 0 ]; then
        status=ok
    else
        status=failed
    fi
    [ "$status" = ok ] || PHASES_FAILED=$((PHASES_FAILED + 1))
    local why=""
    [ "$status" = ok ] || why=$(tail -1 "$OUT/$name.error.txt" 2>/dev/null || echo "exit status $rc")
    echo "$name $status $secs $why" >> "$OUT/phases.txt"
    log "phase $name: $status in ${secs}s${why:+: $why}"
}

# fail MESSAGE: end the current phase with a reason that goes to phases.txt.
fail() {
    local msg
    msg=$(printf '%s' "$*" | tr '\n' ' ' | tr -s ' ')
    log "$PHASE: $msg"
    echo "$msg" >> "$OUT/$PHASE.error.txt"
    return 1
}

# note MESSAGE: something the report should mention, phase going on.
note() {
    local msg
    msg=$(printf '%s' "$*" | tr '\n' ' ' | tr -s ' ')
    log "$PHASE: $msg"
    echo "$PHASE: $msg" >> "$OUT/notes.txt"
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# gpu_snapshot NAME: per-process GPU memory now (nvidia-smi), for the report.
gpu_snapshot() {
    [ "$NVIDIA_SMI" = 1 ] || return 0
    timeout 20 nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader \
        > "$OUT/$1.gpu-mem.csv" 2>/dev/null || true
}

# run_load OUTNAME LIMIT_S LOAD_ARGS…: bench/gpu/load.py, registered and time-limited; its JSON
# summary goes to $OUT/OUTNAME.json.
run_load() {
    local name=$1 limit=$2 p rc=0
    shift 2
    timeout -k 5 "$limit" "$PYTHON" "$LOAD" --timeout "$REQUEST_TIMEOUT" --max-tokens "$MAX_TOKENS" \
        "$@" > "$OUT/$name.json" &
    p=$!
    register "$p" "$PHASE"
    wait "$p" || rc=$?
    unregister "$p"
    return "$rc"
}

# measure NAME CLIENTS URL [load.py args…]: warm-up, then the measured run (RUN_SECONDS);
# NAME goes to runs.txt. Returns 1 (with a note) when no request succeeded.
measure() {
    local name=$1 clients=$2 url=$3 limit
    shift 3
    limit=$((RUN_SECONDS + 2 * REQUEST_TIMEOUT))
    if [ "$WARMUP_REQUESTS" -gt 0 ]; then
        run_load "$name.warmup" "$limit" --url "$url" --clients "$clients" \
            --requests "$WARMUP_REQUESTS" "$@" \
            || note "$name: warm-up had no success: $(head -c 400 "$OUT/$name.warmup.json")"
    fi
    if ! run_load "$name.load" "$limit" --url "$url" --clients "$clients" \
            --requests "$MAX_REQUESTS" --duration "$RUN_SECONDS" --raw "$OUT/$name.requests.jsonl" "$@"; then
        note "$name: no request succeeded: $(head -c 400 "$OUT/$name.load.json")"
        return 1
    fi
    echo "$name" >> "$OUT/runs.txt"
    "$PYTHON" -c 'import json, sys; d = json.load(open(sys.argv[1])); l = d["latency_ms"]; t = d["ttft_ms"]; print("%s: %s req/s, %s tokens/s, latency p50 %s / p99 %s ms, TTFT p50 %s ms, %s requests, errors %s" % (sys.argv[2], d["req_per_s"], d["tokens_per_s"], l["p50"], l["p99"], t["p50"] if t else "-", d["count"], d["errors"]))' \
        "$OUT/$name.load.json" "$name" >&2
}

# get_json URL OUTFILE [CAFILE]
get_json() {
    timeout 20 "$PYTHON" "$GW" get "$1" ${3:+"$3"} > "$2.tmp" && mv "$2.tmp" "$2"
}

# admin OUTFILE METHOD PATH [BODY]: one fngate admin call; the answer goes to $OUT/OUTFILE.
admin() {
    local out=$1
    shift
    timeout 20 "$PYTHON" "$GW" admin "$GW_DATA" "$@" > "$OUT/$out"
}

# ---- environment ---------------------------------------------------------------------------------
# The card's memory for fngate's pool: nvidia-smi's total in GiB, floored, rounded down to even
# so that half of it is a whole number and two slices are exactly 0.5 each; 80 without a GPU.
CARD_GB=80
if [ "$NVIDIA_SMI" = 1 ]; then
    mib=$(timeout 20 nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 2>/dev/null | head -1 | tr -dc '0-9')
    if [ -n "$mib" ] && [ "$mib" -ge 2048 ]; then
        CARD_GB=$((mib / 1024 / 2 * 2))
    fi
fi
SLICE_GB=$((CARD_GB / 2))
if [ -z "$GPU_TYPE" ] && [ "$NVIDIA_SMI" = 1 ]; then
    GPU_TYPE=$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>/dev/null \
        | head -1 | grep -oE '\b[A-Z]+[0-9]+[A-Za-z]?\b' | head -1 || true)
fi
GPU_TYPE="${GPU_TYPE:-H100}"

phase_env() {
    local commit smi_l="" smi_q="" fngate_version=""
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true)
    if [ -n "$commit" ] && ! git -C "$ROOT" diff --quiet HEAD -- examples/gpu-model bench/gpu gateway 2>/dev/null; then
        commit="$commit + uncommitted changes"
    fi
    commit="${commit:-${FNGATE_COMMIT:-unknown (no git here; set FNGATE_COMMIT)}}"
    if [ "$NVIDIA_SMI" = 1 ]; then
        smi_l=$(timeout 20 nvidia-smi -L 2>&1 || true)
        smi_q=$(timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true)
    fi
    [ -x "$FNGATE_BIN" ] && fngate_version=$("$FNGATE_BIN" --version 2>&1 || true)
    SMI_L="$smi_l" SMI_Q="$smi_q" COMMIT="$commit" FNGATE_VERSION="$fngate_version" \
    FNGATE_BIN="$FNGATE_BIN" MODEL_SIZE="$MODEL_SIZE" DEVICE="$DEVICE" MAX_BATCH="$MAX_BATCH" \
    MAX_TOKENS="$MAX_TOKENS" RUN_SECONDS="$RUN_SECONDS" WARMUP_REQUESTS="$WARMUP_REQUESTS" \
    CLIENTS="$CLIENTS" SHARED_CLIENTS="$SHARED_CLIENTS" TINY="$TINY" GPU_TYPE="$GPU_TYPE" \
    CARD_GB="$CARD_GB" SLICE_GB="$SLICE_GB" COMMAND="$COMMAND" \
    timeout 60 "$PYTHON" - "$OUT/env.json" <<'EOF'
import datetime, json, os, platform, sys
import torch
e = os.environ
json.dump({
    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "host": platform.node(), "nproc": os.cpu_count(), "python": platform.python_version(),
    "torch": torch.__version__, "torch_cuda": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(),
    "torch_gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "nvidia_smi_list": e["SMI_L"].strip() or None,
    "nvidia_smi": e["SMI_Q"].strip() or None,
    "commit": e["COMMIT"], "fngate_bin": e["FNGATE_BIN"],
    "fngate_version": e["FNGATE_VERSION"].strip() or None,
    "model_size": e["MODEL_SIZE"], "device": e["DEVICE"], "max_batch": int(e["MAX_BATCH"]),
    "max_tokens": int(e["MAX_TOKENS"]), "run_seconds": float(e["RUN_SECONDS"]),
    "warmup_requests": int(e["WARMUP_REQUESTS"]), "clients": e["CLIENTS"],
    "shared_clients": int(e["SHARED_CLIENTS"]), "tiny": e["TINY"] == "1",
    "gpu_type": e["GPU_TYPE"], "card_gb": int(e["CARD_GB"]), "slice_gb": int(e["SLICE_GB"]),
    "command": e["COMMAND"],
}, open(sys.argv[1], "w"), indent=2)
EOF
    log "environment: $(tr -d '\n' < "$OUT/env.json" | tr -s ' ')"
}

# ---- (a) direct to the backend -------------------------------------------------------------------
# start_direct NAME ARGS…: server.py on a free port, started here; records launch → /health
# time and /stats in NAME.start.json. Sets SERVER_PID and DIRECT_URL.
start_direct() {
    local name=$1 port launched
    shift
    port=$(free_port)
    launched=$("$PYTHON" -c 'import time; print(time.time())')
    PORT=$port "$PYTHON" "$SERVER" --size "$MODEL_SIZE" --device "$DEVICE" "$@" \
        > "$OUT/$name.log" 2>&1 &
    SERVER_PID=$!
    register "$SERVER_PID" "$PHASE"
    DIRECT_URL="http://127.0.0.1:$port"
    timeout $((START_TIMEOUT + 15)) "$PYTHON" - "$DIRECT_URL" "$launched" "$START_TIMEOUT" "$SERVER_PID" \
        "$OUT/$name.start.json" <<'EOF' || { tail -20 "$OUT/$name.log" >&2; fail "$name did not start (see $name.log)"; }
import json, os, sys, time, urllib.request
base, launched, timeout, pid, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
while True:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as r:
            if r.status == 200:
                ready = time.time()
                break
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"server (pid {pid}) exited before it was ready")
    if time.time() - launched > timeout:
        sys.exit(f"no 200 from {base}/health within {timeout:.0f} s")
    time.sleep(0.02)
with urllib.request.urlopen(base + "/stats", timeout=10) as r:
    stats = json.load(r)
with open(out, "w") as f:
    json.dump({"launch_to_ready_s": round(ready - launched, 3), "stats": stats}, f, indent=2)
EOF
    log "$name ready: $(grep -m1 '^model loaded' "$OUT/$name.log")"
    gpu_snapshot "$name"
}

phase_direct() {
    local c
    start_direct direct --max-batch "$MAX_BATCH"
    for c in $CLIENTS; do
        measure "direct-c$c" "$c" "$DIRECT_URL/generate" || true
        get_json "$DIRECT_URL/stats" "$OUT/direct-c$c.stats.json" || true
        gpu_snapshot "direct-c$c"
    done
    stop_pid "$SERVER_PID"
}

phase_direct_nobatch() {
    local c=${CLIENTS##* }
    start_direct direct-nobatch --max-batch 1
    measure "direct-nobatch-c$c" "$c" "$DIRECT_URL/generate" || true
    get_json "$DIRECT_URL/stats" "$OUT/direct-nobatch-c$c.stats.json" || true
    stop_pid "$SERVER_PID"
}

# ---- (b) through fngate --------------------------------------------------------------------------
# Variables a GPU machine's Python may need, passed to instances when fngate has them (an
# instance otherwise gets only PATH HOME USER LANG LC_ALL TZ TMPDIR and fngate's own).
INHERIT_CANDIDATES="NCCL_NVLS_ENABLE TORCH_SYMM_MEM_DISABLE_MULTICAST NVSHMEM_DISABLE_NVLS
LD_LIBRARY_PATH LIBRARY_PATH CUDA_HOME CUDA_PATH CUDA_ROOT CUDA_DEVICE_ORDER
CUDA_MODULE_LOADING CUDA_CACHE_PATH CUDA_LAUNCH_BLOCKING NVIDIA_VISIBLE_DEVICES
NVIDIA_DRIVER_CAPABILITIES PYTHONPATH PYTHONHOME PYTHONNOUSERSITE PYTHONUSERBASE
PYTHONDONTWRITEBYTECODE VIRTUAL_ENV CONDA_PREFIX CONDA_DEFAULT_ENV HF_HOME HF_HUB_OFFLINE
TRANSFORMERS_OFFLINE TORCH_HOME TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR XDG_CACHE_HOME
PYTORCH_CUDA_ALLOC_CONF PYTORCH_NVML_BASED_CUDA_CHECK OMP_NUM_THREADS MKL_NUM_THREADS
GPU_MODEL_DTYPE"
inherit_env_toml() {
    local v list=""
    for v in $INHERIT_CANDIDATES; do
        [ -n "${!v+x}" ] && list+="${list:+, }\"$v\""
    done
    echo "[$list]"
}

# write_fngate_config FILE MAX_INSTANCES: the function behind fngate on one card, the shape of
# examples/gpu-model/README.md. Listeners on kernel-given loopback ports (listeners.json);
# clients reach the backend's /generate at /llm/generate. Written atomically (a reload reads it).
write_fngate_config() {
    cat > "$1.tmp" <<EOF
# Written by bench/gpu/run.sh.
[server]
listen = "127.0.0.1:0"
plaintext_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "$GW_DATA"

[[gpu]]
type = "$GPU_TYPE"
memory_gb = $CARD_GB
count = 1

[[service]]
name = "llm"

[[service.function]]
name = "generate"
instance_concurrency = $MAX_BATCH
max_queued = 100
max_queue_wait = "$((START_TIMEOUT + 60))s"
timeout = "$((START_TIMEOUT + REQUEST_TIMEOUT))s"
gpu = { type = "$GPU_TYPE", memory_gb = $SLICE_GB }
scaling = { max_instances = $2, idle_timeout = "10m" }
backend = { kind = "process", command = ["$PYTHON", "$SERVER", "--size", "$MODEL_SIZE", "--device", "$DEVICE", "--max-batch", "$MAX_BATCH"], port_env = "PORT", readiness = { path = "/health" }, startup_timeout = "${START_TIMEOUT}s", stop_grace = "10s", inherit_env = $(inherit_env_toml) }

[[trigger]]
name = "llm-http"
kind = "http"
function = "$FUNCTION"
path = "/llm"
methods = ["GET", "POST"]
auth = "anonymous"
EOF
    mv "$1.tmp" "$1"
}

fngate_alive() {
    local pid
    pid=$(cat "$OUT/fngate.pid" 2>/dev/null) || fail "fngate was not started"
    alive "$pid" || fail "fngate (pid $pid) is not running"
    GW_PLAIN="http://$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["plaintext"])' "$OUT/fngate-listeners.json")"
    GW_TLS="https://$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["public"])' "$OUT/fngate-listeners.json")"
}

phase_fngate_start() {
    local pid
    [ -x "$FNGATE_BIN" ] || fail "no fngate binary at $FNGATE_BIN (set FNGATE_BIN; this script builds nothing)"
    write_fngate_config "$OUT/fngate.toml" 1
    "$FNGATE_BIN" check --config "$OUT/fngate.toml" > "$OUT/fngate-check.log" 2>&1 \
        || fail "fngate check refuses the config: $(head -3 "$OUT/fngate-check.log" | tr '\n' ' ')"
    "$FNGATE_BIN" serve --config "$OUT/fngate.toml" \
        > "$OUT/fngate.stdout.jsonl" 2> "$OUT/fngate.stderr.log" &
    pid=$!
    register "$pid" fngate
    echo "$pid" > "$OUT/fngate.pid"
    timeout 40 "$PYTHON" "$GW" listeners "$GW_DATA" "$pid" 30 > "$OUT/fngate-listeners.json" \
        || { tail -5 "$OUT/fngate.stderr.log" >&2; fail "fngate did not come up (fngate.stderr.log)"; }
    log "fngate (pid $pid) listening: $(cat "$OUT/fngate-listeners.json")"
    admin fngate-gpus.start.json GET /admin/gpus
    admin fngate-instances.start.json GET "/admin/functions/$FUNCTION/instances"
}

phase_fngate_cold() {
    fngate_alive
    # One request that finds no instance: it waits for the cold start.
    run_load fngate-cold.load $((START_TIMEOUT + 2 * REQUEST_TIMEOUT)) --url "$GW_PLAIN/llm/generate" \
        --clients 1 --requests 1 --timeout $((START_TIMEOUT + REQUEST_TIMEOUT)) \
        --raw "$OUT/fngate-cold.requests.jsonl" \
        || fail "the cold-start request failed: $(head -c 400 "$OUT/fngate-cold.load.json")"
    "$PYTHON" -c 'import json, sys; r = json.loads(open(sys.argv[1]).readline()); print("cold request: TTFB %.0f ms, first token %.0f ms, x-fngate-cold-start %s ms, instance %s" % (r["ttfb_s"] * 1000, r["ttft_s"] * 1000, r["cold_start_ms"], r["instance"]))' \
        "$OUT/fngate-cold.requests.jsonl" >&2 || true
    # The instance's own start-up breakdown, through the gateway (GET /llm/stats → /stats).
    get_json "$GW_PLAIN/llm/stats" "$OUT/fngate-cold.stats.json" || note "no /llm/stats"
    admin fngate-cold.instances.json GET "/admin/functions/$FUNCTION/instances"
    gpu_snapshot fngate-cold
}

phase_fngate_load() {
    local c last=${CLIENTS##* } endpoint
    fngate_alive
    # The instance fngate started listens on a loopback port of its own: the same load sent
    # straight to it, interleaved with the runs through fngate, is the fairest "direct" peer
    # (same process, same warm state, seconds apart).
    admin fngate-load.before.instances.json GET "/admin/functions/$FUNCTION/instances"
    endpoint=$("$PYTHON" -c 'import json, sys; print(next(i["endpoint"] for i in json.load(open(sys.argv[1]))["instances"] if i["state"] == "ready"))' \
        "$OUT/fngate-load.before.instances.json" 2>/dev/null || true)
    [ -n "$endpoint" ] || note "no ready instance endpoint; the same-instance direct runs are skipped"
    for c in $CLIENTS; do
        measure "fngate-c$c" "$c" "$GW_PLAIN/llm/generate" || true
        get_json "$GW_PLAIN/llm/stats" "$OUT/fngate-c$c.stats.json" || true
        if [ -n "$endpoint" ]; then
            measure "instance-c$c" "$c" "$endpoint/generate" || true
            get_json "$endpoint/stats" "$OUT/instance-c$c.stats.json" || true
        fi
    done
    if [ "$TLS_RUN" = 1 ]; then
        measure "fngate-tls-c$last" "$last" "$GW_TLS/llm/generate" --cafile "$GW_DATA/tls/ca.pem" || true
        get_json "$GW_PLAIN/llm/stats" "$OUT/fngate-tls-c$last.stats.json" || true
    fi
    admin fngate-load.instances.json GET "/admin/functions/$FUNCTION/instances"
    gpu_snapshot fngate-load
}

phase_fngate_shared() {
    fngate_alive
    # Allow a second instance (a reload keeps the running one: its recipe is unchanged), then
    # ask for two provisioned: the running one is promoted, one more starts on the same card.
    write_fngate_config "$OUT/fngate.toml" 2
    admin fngate-reload.json POST /admin/reload || fail "config reload refused: $(head -c 400 "$OUT/fngate-reload.json")"
    admin fngate-provisioned.json PUT "/admin/functions/$FUNCTION/provisioned" '{"target": 2}' \
        || fail "PUT provisioned refused: $(head -c 400 "$OUT/fngate-provisioned.json")"
    timeout $((START_TIMEOUT + 20)) "$PYTHON" "$GW" wait-instances "$GW_DATA" "$FUNCTION" 2 "$START_TIMEOUT" \
        > "$OUT/fngate-shared.instances.json" || fail "two instances were not ready within ${START_TIMEOUT}s"
    admin fngate-shared.gpus.json GET /admin/gpus
    gpu_snapshot fngate-shared.start
    measure "fngate-2inst-c$SHARED_CLIENTS" "$SHARED_CLIENTS" "$GW_PLAIN/llm/generate" || true
    admin fngate-shared.after.instances.json GET "/admin/functions/$FUNCTION/instances"
    gpu_snapshot fngate-shared
}

phase_fngate_stop() {
    local pid started
    pid=$(cat "$OUT/fngate.pid" 2>/dev/null) || return 0
    alive "$pid" || fail "fngate (pid $pid) had already exited"
    started=$(date +%s.%N)
    kill -TERM "$pid"
    for ((i = 0; i < 300; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        unregister "$pid"
        fail "fngate did not exit within 30 s of SIGTERM; killed"
    fi
    unregister "$pid"
    # The generated admin token and private keys are of no use past this run: not carried back.
    rm -f "$GW_DATA/admin-token" "$GW_DATA"/tls/*key*
    "$PYTHON" -c 'import sys, time; print("fngate exited %.1f s after SIGTERM" % (time.time() - float(sys.argv[1])))' "$started" \
        > "$OUT/fngate-stop.txt"
    log "$(cat "$OUT/fngate-stop.txt")"
}

# ---- the run -------------------------------------------------------------------------------------
log "out: $OUT; python: $PYTHON; fngate: $FNGATE_BIN; model $MODEL_SIZE on $DEVICE; card ${CARD_GB} GB, slice ${SLICE_GB} GB; budget ${TOTAL_BUDGET_S}s"
run_phase env 90 phase_env 5
if [ ! -s "$OUT/env.json" ]; then
    log "ERROR: $PYTHON cannot import torch (see above); nothing to measure"
    exit 1
fi
run_phase direct $((START_TIMEOUT + 4 * RUN_SECONDS + 120)) phase_direct 60
[ "$NO_BATCH_RUN" = 1 ] && run_phase direct-nobatch $((START_TIMEOUT + 2 * RUN_SECONDS + 120)) phase_direct_nobatch 40
run_phase fngate-start 60 phase_fngate_start 10
if grep -q '^fngate-start ok' "$OUT/phases.txt"; then
    run_phase fngate-cold $((START_TIMEOUT + 60)) phase_fngate_cold 30
    # Without a first instance (see fngate.stdout.jsonl's instance_log lines) the rest would
    # only wait for failing cold starts: GPU time better not spent.
    if grep -q '^fngate-cold ok' "$OUT/phases.txt"; then
        run_phase fngate-load $((10 * RUN_SECONDS + 180)) phase_fngate_load 30
        run_phase fngate-shared $((START_TIMEOUT + 2 * RUN_SECONDS + 90)) phase_fngate_shared 40
    else
        echo "fngate-load skipped 0 the cold-start phase failed" >> "$OUT/phases.txt"
        echo "fngate-shared skipped 0 the cold-start phase failed" >> "$OUT/phases.txt"
        PHASES_FAILED=$((PHASES_FAILED + 2))
    fi
fi
# Not skipped for the budget: fngate must be stopped whatever happened (RESERVE_S is for this).
[ -s "$OUT/fngate.pid" ] && TOTAL_BUDGET_S=$((TOTAL_BUDGET_S + RESERVE_S)) run_phase fngate-stop 40 phase_fngate_stop 0
TOTAL_S=$(($(date +%s) - SCRIPT_START))
echo "$TOTAL_S" > "$OUT/total_seconds.txt"

"$PYTHON" "$ROOT/bench/gpu/report.py" "$OUT" > "$OUT/gpu-results.md" \
    || log "report.py failed; the raw outputs are in $OUT"
log "summary: $OUT/gpu-results.md (${TOTAL_S}s in all, $PHASES_FAILED phase(s) not ok)"
cat "$OUT/gpu-results.md"
[ "$PHASES_FAILED" = 0 ]
