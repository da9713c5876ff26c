#!/usr/bin/env bash
# Coverage-guided fuzzing of the gateway's input parsers (fuzz/: cargo-fuzz, libFuzzer), one
# target at a time under `nice -n 19`, SECONDS each (default 600), seeded with the real samples.
#   scripts/fuzz.sh [SECONDS] [TARGET…]
# Needs a nightly toolchain and cargo-fuzz (both installed when missing). The corpus grows in
# fuzz/corpus/TARGET, findings land in fuzz/artifacts/TARGET, each run's log and final stats in
# fuzz/logs/TARGET.log. CI runs the same bodies for seconds as unit tests (gateway/src/fuzzing.rs).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-600}"
shift || true
targets=("$@")
((${#targets[@]})) || targets=(event_notification config http_trigger plugin_decision http1_framing)
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
target_dir="${FUZZ_TARGET_DIR:-target}"
# No sanitizer: the gateway forbids unsafe code outside one audited pre-exec hook, so ASan would
# add cost without coverage; panics, overflow checks (debug assertions stay on) and the targets'
# own properties are the oracles.
cargo +nightly fuzz build -s none --target-dir "$target_dir"
mkdir -p logs
for t in "${targets[@]}"; do
    case "$t" in
        event_notification) seeds=(../gateway/src/events/testdata seeds/event_notification) ;;
        config) seeds=(../config seeds/config) ;;
        *) seeds=("seeds/$t") ;;
    esac
    dict=()
    [ -f "dict/$t.dict" ] && dict=(-dict="dict/$t.dict")
    mkdir -p "corpus/$t"
    echo "== $t: ${secs}s"
    nice -n 19 cargo +nightly fuzz run -s none --target-dir "$target_dir" "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -max_len=32768 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "${dict[@]}" \
        >"logs/$t.log" 2>&1 || { echo "$t: finding, see fuzz/logs/$t.log and fuzz/artifacts/$t"; tail -40 "logs/$t.log"; exit 1; }
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done )' "logs/$t.log" || true
    echo "corpus: $(find "corpus/$t" -type f | wc -l) inputs"
done
