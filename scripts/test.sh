#!/usr/bin/env bash
# The whole test suite: format, lints, unit tests and the black-box tests in tests/.
# Works on a fresh machine of this kind: installs what it needs (curl, nats-server, Chromium,
# playwright-core, Ceph RGW, RabbitMQ, Prometheus, boto3) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
# scripts/deny.sh hands the advisory snapshot to cargo-deny as a git repository.
command -v git >/dev/null || need_apt+=(git)
# The NATS queue's tests start their own nats-server (JetStream on a temp dir, a free port).
command -v nats-server >/dev/null || [ -n "${FNGATE_NATS_SERVER:-}" ] || need_apt+=(nats-server)
# The dashboard's browser test (tests/e2e/dashboard.rs) drives Debian's Chromium headless.
[ -x /usr/bin/chromium ] || [ -n "${FNGATE_CHROMIUM:-}" ] || need_apt+=(chromium)
# Object-storage event tests (tests/e2e/ceph_rgw.rs, event_amqp.rs): a single-node Ceph with
# radosgw (scripts/ceph-rgw.sh, ~2 s) and a private RabbitMQ node, both started by the tests on
# free ports; RGW is driven by boto3. Installed without recommends (Ceph's pull in a lot).
need_apt_lean=()
for bin in radosgw ceph-mon ceph-osd; do command -v "$bin" >/dev/null || need_apt_lean+=("$bin"); done
command -v uuidgen >/dev/null || need_apt_lean+=(uuid-runtime)
# Instance-login tests drive interactive sessions through `script` (util-linux, in bsdutils) and tmux.
command -v script >/dev/null || need_apt_lean+=(bsdutils)
command -v tmux >/dev/null || need_apt_lean+=(tmux)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || [ -n "${FNGATE_RABBITMQ_SERVER:-}" ] || need_apt_lean+=(rabbitmq-server)
# tests/e2e/prometheus.rs starts its own Prometheus (2.42) on a free port; without recommends,
# which would add prometheus-node-exporter and its service.
command -v prometheus >/dev/null || [ -n "${FNGATE_PROMETHEUS:-}" ] || need_apt_lean+=(prometheus)
pip_boto3=0
if ! command -v python3 >/dev/null; then
    need_apt_lean+=(python3 python3-boto3)
elif ! python3 -c 'import boto3' 2>/dev/null; then
    # Debian's package serves Debian's python3; another one on PATH (pyenv, venv) gets pip's.
    if [ "$(command -v python3)" = /usr/bin/python3 ]; then need_apt_lean+=(python3-boto3); else pip_boto3=1; fi
fi
if ((${#need_apt[@]} + ${#need_apt_lean[@]})); then
    echo "installing: ${need_apt[*]} ${need_apt_lean[*]}"
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    if ((${#need_apt[@]})); then $sudo_cmd apt-get install -y -qq "${need_apt[@]}"; fi
    if ((${#need_apt_lean[@]})); then
        $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt_lean[@]}"
    fi
fi
if ((pip_boto3)); then python3 -m pip install --user --quiet boto3; fi
# The OTLP trace test's collector: rotel (PyPI wheel shipping the collector binary).
python3 -c 'import rotel' 2>/dev/null || [ -n "${FNGATE_ROTEL:-}" ] || python3 -m pip install --user --quiet rotel
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# playwright-core for that test, pinned in tests/browser/package-lock.json (needs Node.js >= 20).
[ -d tests/browser/node_modules/playwright-core ] || (cd tests/browser && npm ci --no-audit --no-fund)

echo "== plugins"; ./plugins/build.sh >/dev/null
echo "== fmt";    cargo fmt --all -- --check
(cd plugins && export CARGO_TARGET_DIR="$PWD/target" && cargo fmt --all -- --check && cargo clippy --release --locked -- -D warnings)
echo "== deps";   if cargo tree --workspace --target all -i ring 2>/dev/null | grep -q "^ring"; then
    echo "ring is in the dependency tree; rustls must use aws-lc-rs only"; exit 1
fi
# Licenses, bans (ring), sources and security advisories per deny.toml, offline: advisories
# against the RustSec snapshot in advisory-db/ (its date is printed; an old one does not fail).
./scripts/deny.sh
echo "== clippy"; cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build";  cargo build --workspace --locked
# Cargo.lock lists ring only because rustls-webpki's `alloc` feature names the weak dependency
# `ring?/alloc` (cargo locks optional deps named that way); it must never be compiled.
if ls "${CARGO_TARGET_DIR:-target}"/debug/deps | grep -q '^libring-'; then
    echo "ring was compiled; rustls must use aws-lc-rs only"; exit 1
fi
echo "== test";   cargo test --workspace --locked -- --test-threads="${FNGATE_TEST_THREADS:-4}"
echo "== plugin tests (native)"
(cd plugins && CARGO_TARGET_DIR="$PWD/target" cargo test --locked --target "$(rustc -vV | sed -n 's/^host: //p')" --workspace)
echo "== GPU model function, CPU smoke test (skipped with the reason when torch is missing)"
if command -v python3 >/dev/null; then python3 examples/gpu-model/smoke_test.py
else echo "SKIP: python3 is not installed"; fi
echo "== all tests passed"
