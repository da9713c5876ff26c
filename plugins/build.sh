#!/usr/bin/env bash
# Builds the policy plugins in this directory into WebAssembly components (wasm32-wasip2) and
# lists them. Extra arguments go to cargo, e.g. `plugins/build.sh -p header-router`.
set -euo pipefail
cd "$(dirname "$0")"
# The components always land in plugins/target, where the gateway's tests and configs look for
# them, even when the caller points CARGO_TARGET_DIR elsewhere (as .ci/run does).
export CARGO_TARGET_DIR="$PWD/target"

target=wasm32-wasip2
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi

cargo build --release --target "$target" "$@"

out="$PWD/target/$target/release"
shopt -s nullglob
wasm=("$out"/*.wasm)
if ((${#wasm[@]} == 0)); then
    echo "no components in $out" >&2
    exit 1
fi
for f in "${wasm[@]}"; do
    bytes=$(stat -c %s "$f")
    printf '%7d bytes  %4d KiB  %s\n' "$bytes" $(((bytes + 1023) / 1024)) "$f"
done
