#!/usr/bin/env bash
# The whole test suite: format, lints, unit tests and the black-box tests in tests/.
# Works on a fresh machine of this kind: installs what it needs (curl) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
if ((${#need_apt[@]})); then
    echo "installing: ${need_apt[*]}"
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== plugins"; ./plugins/build.sh >/dev/null
echo "== fmt";    cargo fmt --all -- --check
(cd plugins && export CARGO_TARGET_DIR="$PWD/target" && cargo fmt --all -- --check && cargo clippy --release --locked -- -D warnings)
echo "== deps";   if cargo tree --workspace --target all -i ring 2>/dev/null | grep -q "^ring"; then
    echo "ring is in the dependency tree; rustls must use aws-lc-rs only"; exit 1
fi
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
