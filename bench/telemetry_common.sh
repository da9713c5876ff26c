# Shared by bench/telemetry.sh (throughput, CPU time) and bench/telemetry_instructions.sh
# (callgrind): the configurations compared, the gateway's config, the collector and cleanup.
# Sourced with PORT_BASE set (each script its own ports, so both may run at once).
#
#   off:     per-invocation log lines off, no traces (metrics are always recorded: the
#            Prometheus recorder is the one way fngate counts);
#   on:      log lines to stdout and a size-rotated file, OTLP traces at sample_ratio 0.1 to a
#            real collector (rotel, discarding what it receives);
#   on_file: the same with one log sink, the file (what a deployment that ships files runs);
#   and, to tell the pieces apart (bench/telemetry.sh with PIECES=1):
#   traces_only: no log sink, OTLP traces at 0.1;
#   logs_only:   the two log sinks of "on", no traces;
#   stdout_only: stdout and traces at 0.1, no file (the default sink with traces).
# bench/telemetry.sh gives each gateway's stdout to a pipe read on core 1.

rotel="${FNGATE_ROTEL:-$(python3 -c 'import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')}"
backend_port=$PORT_BASE
otlp_http="127.0.0.1:$((PORT_BASE + 18))"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# start_collector [taskset prefix…]
start_collector() {
    "$@" "$rotel" start --otlp-grpc-endpoint "127.0.0.1:$((PORT_BASE + 17))" \
        --otlp-http-endpoint "$otlp_http" --exporter blackhole >/dev/null 2>&1 &
    pids+=($!)
}

OTLP="otlp = { endpoint = \"http://$otlp_http\" }"
TRACES="traces = { sample_ratio = 0.1 }"
FILE='file = { path = "logs/fngate.log", max_size = "64MiB", keep = 2 }'
ON="log = { stdout = true, $FILE }
$OTLP
$TRACES"
ON_FILE="log = { stdout = false, $FILE }
$OTLP
$TRACES"
TRACES_ONLY="log = { stdout = false }
$OTLP
$TRACES"
LOGS_ONLY="log = { stdout = true, $FILE }
$OTLP"
STDOUT_ONLY="log = { stdout = true }
$OTLP
$TRACES"

# The telemetry section of a configuration by name (*_base: the same, run by the BASE build).
telemetry_section() {
    case $1 in
        off | off_base) echo 'log = { stdout = false }' ;;
        on | on_base) echo "$ON" ;;
        on_file) echo "$ON_FILE" ;;
        traces_only) echo "$TRACES_ONLY" ;;
        logs_only) echo "$LOGS_ONLY" ;;
        stdout_only) echo "$STDOUT_ONLY" ;;
        *) echo "unknown configuration $1" >&2; return 1 ;;
    esac
}

# gateway_config DIR CONFIGURATION: one static-backend function behind GET /b/bytes/1024.
gateway_config() {
    mkdir -p "$1"
    cat >"$1/fngate.toml" <<TOML
[server]
listen = "127.0.0.1:0"
plaintext_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "data"
[telemetry]
$(telemetry_section "$2")
[[service]]
name = "bench"
[[service.function]]
name = "bytes"
instance_concurrency = 1024
max_queued = 10000
backend = { kind = "static", endpoints = ["http://127.0.0.1:$backend_port"] }
[[trigger]]
name = "bytes"
kind = "http"
function = "bench/bytes"
path = "/b"
TOML
}

# listener_addr DIR KEY [TRIES]: waits for the gateway started in DIR to list its listeners and
# prints one of them (KEY: plaintext, or public for the TLS listener with its self-signed
# certificate).
listener_addr() {
    for _ in $(seq "${3:-100}"); do [ -f "$1/data/listeners.json" ] && break; sleep 0.1; done
    python3 -c "import json,sys;print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1/data/listeners.json" "$2"
}
# plaintext_addr DIR [TRIES]
plaintext_addr() { listener_addr "$1" plaintext "${2:-100}"; }
