#!/usr/bin/env bash
# The dependency policy of deny.toml, checked with no access to GitHub (scripts/test.sh calls it):
# bans, licenses and sources for the gateway's workspace, and security advisories for Cargo.lock
# and plugins/Cargo.lock against advisory-db/, the pruned RustSec snapshot kept in the repository
# (scripts/refresh-advisories.sh makes it). fuzz/Cargo.lock is left out: that nightly-only
# workspace's lock file is refreshed by hand when fuzzing, and its gateway part is Cargo.lock's.
#
#   scripts/deny.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the directory cargo-deny opens under `db-path` is named after the database URL with a
# hash that is the tool's own scheme (below); another version may name it otherwise.
deny_version=0.20.2
if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $deny_version" ]; then
    cargo install --locked cargo-deny --version "$deny_version"
fi

locks=(Cargo.lock plugins/Cargo.lock)

# A crate added to a lock file after the snapshot was cut would have its advisories pruned away:
# advisory-db/CRATES names every crate the full database covers, so such a crate is caught here.
missing="$(sed -n 's/^name = "\(.*\)"$/\1/p' "${locks[@]}" | LC_ALL=C sort -u |
    LC_ALL=C comm -12 - advisory-db/CRATES |
    while read -r name; do [ -d "advisory-db/crates/$name" ] || echo "$name"; done)"
if [ -n "$missing" ]; then
    echo "advisory-db/ lacks the advisories of crates now in a lock file:" $missing
    echo "run scripts/refresh-advisories.sh on a checkout of https://github.com/rustsec/advisory-db"
    exit 1
fi

# cargo-deny opens the database as a git checkout at DB-PATH/advisory-db-3157b0e258782691 (the
# last segment of the URL in deny.toml plus XxHash64 of it, lowercased; cargo-deny 0.20) and
# takes its freshness from the HEAD commit. A repository can't be committed inside ours, so one is
# made here in a temp dir. Its commit is new, which keeps cargo-deny's staleness limit from failing
# the build on an old snapshot; the snapshot's real date is printed instead.
dbs="$(mktemp -d)"
trap 'rm -rf "$dbs"' EXIT
db="$dbs/advisory-db-3157b0e258782691"
cp -r advisory-db "$db"
git -C "$db" init -q
git -C "$db" add -A
git -C "$db" -c user.name="fngate" -c user.email="dev@fngate.invalid" -c commit.gpgsign=false \
    commit -q -m "advisory-db snapshot"
export FNGATE_ADVISORY_DBS="$dbs"
snapshot_date="$(sed -n 's/^source_date = "\(.*\)"$/\1/p' advisory-db/SNAPSHOT)"
age_days=$((($(date +%s) - $(date -d "$snapshot_date" +%s)) / 86400))
echo "advisory-db snapshot of $snapshot_date ($age_days days old), $(sed -n 's/^source_commit = "\(.*\)"$/\1/p' advisory-db/SNAPSHOT)"
if ((age_days > 90)); then
    echo "note: the snapshot is over 90 days old; refresh it with scripts/refresh-advisories.sh"
fi

cargo deny --offline check bans licenses sources advisories
# The plugins' workspace (wasm32-wasip2 guests, Apache-2.0 and built from crates.io alone):
# advisories. cargo-deny reads its graph from the local registry cache, hence the fetch first
# (crates.io, not GitHub; a no-op once plugins/build.sh has run).
cargo fetch --locked --quiet --manifest-path plugins/Cargo.toml
cargo deny --offline --manifest-path plugins/Cargo.toml check advisories
