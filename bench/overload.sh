#!/usr/bin/env bash
# Overload: twice the configured capacity, open loop, for SECS seconds (default 60), through the
# real binary: tests/e2e/reliability.rs::overload_at_twice_capacity_sheds_with_429_quickly with
# FNGATE_OVERLOAD_SECS set. One instance of 8 slots in front of a backend taking 100 ms per
# request (80 requests/s), a queue of 8 waiting at most 200 ms, 160 requests/s offered. Prints the
# FIGURES line: answers by status with latency percentiles, the gateway's RSS at start, peak
# (VmHWM) and end. Debug build by default, as the tests use it; PROFILE=release builds the gateway,
# the test and the demo backend with `--release` (in CARGO_TARGET_DIR, where set) and runs those.
#
#   bench/overload.sh [SECS]
#   PROFILE=release bench/overload.sh [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
profile=()
[ "${PROFILE:-debug}" = release ] && profile=(--release)
# The test starts demo-backend from beside the fngate binary: build it in the same profile.
cargo build "${profile[@]}" --locked -p fngate -p demo-backend
FNGATE_OVERLOAD_SECS="$secs" cargo test "${profile[@]}" --locked -p fngate --test e2e \
    reliability::overload_at_twice_capacity_sheds_with_429_quickly -- --exact --nocapture 2>&1 |
    grep -E '^FIGURES|test result|panicked'
