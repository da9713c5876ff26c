#!/usr/bin/env bash
# The demo: builds fngate, the sample backend and the policy plugins, starts three backend
# instances (two for demo/echo, one for its canary) and the gateway on
# config/demo.toml (TLS on 127.0.0.1:8443, admin on 127.0.0.1:9443), prints commands to try.
# Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
./plugins/build.sh >/dev/null
cargo build --workspace --locked
bin="$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)"
data=target/demo-data
mkdir -p "$data"

# The token object-store notifications must carry (config/demo.toml's event source).
export FNGATE_DEMO_EVENT_TOKEN="${FNGATE_DEMO_EVENT_TOKEN:-demo-event-token-0123456789}"

# demo/model's instances are started by fngate from PATH.
export PATH="$bin:$PATH"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/demo-backend" --listen 127.0.0.1:9001 --id instance-1 >/dev/null & pids+=($!)
"$bin/demo-backend" --listen 127.0.0.1:9002 --id instance-2 >/dev/null & pids+=($!)
"$bin/demo-backend" --listen 127.0.0.1:9003 --id canary-1 >/dev/null & pids+=($!)
rm -f "$data/listeners.json"
"$bin/fngate" serve --config config/demo.toml >"$data/invocations.log" & pids+=($!)
for _ in $(seq 100); do [ -f "$data/listeners.json" ] && break; sleep 0.1; done
[ -f "$data/listeners.json" ] || { echo "fngate did not start"; exit 1; }

cat <<MSG

fngate is running (invocation log: $data/invocations.log). Try:

  curl --cacert $data/tls/ca.pem https://localhost:8443/echo/hello -i
  curl --cacert $data/tls/ca.pem -H 'x-variant: canary' https://localhost:8443/echo/hello   # routed by the plugin
  curl --cacert $data/tls/ca.pem https://localhost:8443/echo/generate -d '{"prompt":"the gateway","max_tokens":12}'
  curl -N --cacert $data/tls/ca.pem 'https://localhost:8443/echo/generate?interval_ms=100' -d '{"prompt":"stream","max_tokens":10,"stream":true}'
  curl --cacert $data/tls/ca.pem -i https://localhost:8443/model/env        # cold start: x-fngate-cold-start, GPU slice env
  curl --cacert $data/tls/ca.pem -i -H 'x-fngate-invocation-type: async' -H 'x-fngate-task-id: job_1' https://localhost:8443/echo/work -d '{"n":1}'   # 202, stored durably
  curl --cacert $data/tls/ca.pem -H "authorization: Bearer \$(cat $data/admin-token)" https://localhost:9443/tasks/job_1   # its state, attempts and result
  curl --cacert $data/tls/ca.pem -H "authorization: Bearer \$(cat $data/admin-token)" https://localhost:9443/admin/functions
  curl --cacert $data/tls/ca.pem -H "authorization: Bearer $FNGATE_DEMO_EVENT_TOKEN" https://localhost:8443/events/uploads \\
       -d @config/demo-upload.json   # an S3 notification of 2 uploads: 1 matches images/*.png, 1 task
  curl --cacert $data/tls/ca.pem -H "authorization: Bearer \$(cat $data/admin-token)" 'https://localhost:9443/tasks?function=demo/echo'
  curl --cacert $data/tls/ca.pem -H "authorization: Bearer \$(cat $data/admin-token)" https://localhost:9443/admin/functions/demo/model/instances

Live dashboard: open https://localhost:9443/ (trust $data/tls/ca.pem or accept the warning)
and paste the admin token from $data/admin-token.

Ctrl-C to stop.
MSG
wait "${pids[3]}"
