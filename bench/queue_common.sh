# Shared by bench/async_accepts.sh and bench/events.sh: one round's backend, the optional NATS
# JetStream server, the gateway config's common head and the gateway itself, and cleanup.
# Sourced after `bin`, `QUEUE`, `GW_CORES` and `GW_WORKERS` are set.

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# start_round DATA BACKEND_PORT NATS_PORT BACKEND_ID: a fresh data dir, the backend on core 1
# and, with QUEUE=nats, a nats-server there too. Sets be, ns and queue (the config's [queue]).
start_round() {
    rm -rf "$1" && mkdir -p "$1"
    taskset -c 1 "$bin/demo-backend" --listen "127.0.0.1:$2" --id "$4" >/dev/null 2>&1 &
    be=$!; pids+=("$be")
    queue="" ns=""
    if [ "$QUEUE" = nats ]; then
        taskset -c 1 "${FNGATE_NATS_SERVER:-nats-server}" -a 127.0.0.1 -p "$3" -js -sd "$1/js" >"$1/nats.log" 2>&1 &
        ns=$!; pids+=("$ns")
        for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$3") 2>/dev/null && break; sleep 0.05; done
        queue=$'[queue]\nkind = "nats"\nurl = "nats://127.0.0.1:'"$3"$'"\n'
    fi
}

# config_head: the listeners (any free port), the data dir and the queue; log lines off.
config_head() {
    cat <<TOML
[server]
listen = "127.0.0.1:0"
plaintext_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "."
$queue
[telemetry]
log = { stdout = false }
TOML
}

# start_gateway DATA: fngate on GW_CORES with GW_WORKERS workers, config DATA/fngate.toml (the
# caller's environment goes with it). Sets gw and addr (the plaintext listener).
start_gateway() {
    TOKIO_WORKER_THREADS="$GW_WORKERS" taskset -c "$GW_CORES" "$bin/fngate" serve --config "$1/fngate.toml" >/dev/null 2>"$1/stderr.log" &
    gw=$!; pids+=("$gw")
    for _ in $(seq 100); do [ -f "$1/listeners.json" ] && break; sleep 0.05; done
    addr=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['plaintext'])" "$1/listeners.json")
}

# end_round: stops the round's gateway, backend and nats-server.
end_round() {
    kill "$gw" "$be" ${ns:-} 2>/dev/null || true
    wait "$gw" "$be" ${ns:-} 2>/dev/null || true
}
