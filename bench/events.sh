#!/usr/bin/env bash
# Event ingestion through the webhook: S3 notification records per second, each stored durably
# (an fsync'd group commit of the embedded queue, or a JetStream ack with QUEUE=nats) before the
# webhook answers 200. wrk closed loop, CONNS connections, plaintext HTTP/1.1 keep-alive; every
# request is one `{"Records":[…]}` notification of BATCH Ceph-style ObjectCreated:Put records with
# unique keys and sequencers (no deduplication hits), bearer-authenticated. The dispatcher runs the
# tasks against the backend at the same time. Pinning as bench/run.sh: fngate on core 0 (one
# worker), wrk, the backend (and nats-server) on core 1. ROUNDS runs of DUR seconds; medians.
#
#   bench/events.sh            # ROUNDS=5 DUR=8 CONNS=16 BATCH=100 QUEUE=embedded
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}" DUR="${DUR:-8}" CONNS="${CONNS:-16}" BATCH="${BATCH:-100}" QUEUE="${QUEUE:-embedded}"
GW_CORES="${GW_CORES:-0}" GW_WORKERS="${GW_WORKERS:-1}"  # GW_CORES=0,1 GW_WORKERS=2: fngate on both cores
out=bench/out/events-$QUEUE
rm -rf "$out" && mkdir -p "$out"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked -p fngate -p demo-backend
bin="${CARGO_TARGET_DIR:-target}/release"
command -v wrk >/dev/null || { echo "wrk is needed (Debian: apt-get install wrk)"; exit 1; }

. bench/queue_common.sh

cat >"$out/events.lua" <<LUA
local batch = $BATCH
local n = 0
local thread_tag = tostring(math.random(1, 1e9))
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer bench-event-token-0123456789"
request = function()
    local recs = {}
    for i = 1, batch do
        n = n + 1
        recs[i] = string.format('{"eventVersion":"2.2","eventSource":"ceph:s3","awsRegion":"default","eventTime":"2026-11-24T20:00:00.000Z","eventName":"ObjectCreated:Put","s3":{"s3SchemaVersion":"1.0","configurationId":"bench","bucket":{"name":"photos","arn":"arn:aws:s3:::photos"},"object":{"key":"images/%s/%d.png","size":1024,"eTag":"37b51d194a7513e45b56f6524f2d51f2","versionId":"","sequencer":"%s%012X"}}}', thread_tag, n, thread_tag, n)
    end
    return wrk.format(nil, nil, nil, '{"Records":[' .. table.concat(recs, ",") .. ']}')
end
LUA

results=()
for r in $(seq "$ROUNDS"); do
    data="$out/data-$r"
    port=$((19650 + r))
    start_round "$data" "$port" $((19750 + r)) events
    { config_head; cat <<TOML
[[service]]
name = "media"
[[service.function]]
name = "thumb"
instance_concurrency = 64
async = { max_concurrency = 16 }
backend = { kind = "static", endpoints = ["http://127.0.0.1:$port"] }
[[event_source]]
name = "rgw"
kind = "webhook"
auth = { bearer = { env = "BENCH_EVENT_TOKEN" } }
[[trigger]]
name = "thumbs"
kind = "oss"
function = "media/thumb"
source = "rgw"
events = ["ObjectCreated:*"]
prefix = "images/"
suffix = ".png"
TOML
    } >"$data/fngate.toml"
    BENCH_EVENT_TOKEN=bench-event-token-0123456789 start_gateway "$data"
    taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$out/events.lua" "http://$addr/events/rgw" >"$out/wrk-$r.txt"
    rps=$(awk '/^Requests\/sec/ {print $2}' "$out/wrk-$r.txt")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$out/wrk-$r.txt"); non2xx=${non2xx:-0}
    records=$(python3 -c "print(round($rps * $BATCH))")
    echo "round $r: $rps notifications/s = $records records/s (non-2xx: $non2xx)"
    [ "$non2xx" = 0 ] || { echo "errors: see $data/stderr.log"; tail -5 "$data/stderr.log"; }
    results+=("$records")
    end_round
done
printf '%s\n' "${results[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median %.0f records/s (min %.0f, max %.0f) over %d rounds\n", a[int((NR+1)/2)], a[1], a[NR], NR}' | tee "$out/summary.txt"
