#!/usr/bin/env bash
# Regenerates advisory-db/, the pruned snapshot of the RustSec advisory database that
# scripts/deny.sh (run by scripts/test.sh) checks our lock files against offline.
#
#   scripts/refresh-advisories.sh PATH-TO-ADVISORY-DB-CHECKOUT
#
# PATH is a full copy of https://github.com/rustsec/advisory-db: a git checkout, or a plain
# export with a SNAPSHOT-COMMIT file holding "COMMIT DATE". Kept: the advisories (crates/NAME/)
# of every crate named in Cargo.lock and plugins/Cargo.lock, the database's license (CC0-1.0),
# and two small files: SNAPSHOT (source commit and date) and CRATES (the name of every crate the
# full database has advisories for, so that scripts/deny.sh notices a crate added to a lock file
# after this snapshot was cut and asks for a refresh instead of missing its advisories).
# Rerun it after adding a dependency, and now and then for new advisories.
set -euo pipefail
cd "$(dirname "$0")/.."

src="${1:?usage: scripts/refresh-advisories.sh PATH-TO-ADVISORY-DB-CHECKOUT}"
[ -d "$src/crates" ] || { echo "$src has no crates/ directory: not an advisory-db checkout" >&2; exit 1; }

if git -C "$src" rev-parse --verify -q HEAD >/dev/null 2>&1 &&
    [ "$(git -C "$src" rev-parse --show-toplevel)" = "$(cd "$src" && pwd -P)" ]; then
    commit="$(git -C "$src" log -1 --format=%H)"
    date="$(git -C "$src" log -1 --format=%cI)"
elif [ -f "$src/SNAPSHOT-COMMIT" ]; then
    read -r commit date <"$src/SNAPSHOT-COMMIT"
else
    echo "$src is neither a git checkout nor has a SNAPSHOT-COMMIT file: its commit is unknown" >&2
    exit 1
fi
[[ "$commit" =~ ^[0-9a-f]{40}$ && -n "${date:-}" ]] || { echo "bad source commit/date: '$commit' '${date:-}'" >&2; exit 1; }

locks=(Cargo.lock plugins/Cargo.lock)
mapfile -t names < <(sed -n 's/^name = "\(.*\)"$/\1/p' "${locks[@]}" | sort -u)

out=advisory-db
tmp="$(mktemp -d "$out.new.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/crates"
cp "$src/LICENSE.txt" "$tmp/"
kept=0
for name in "${names[@]}"; do
    if [ -d "$src/crates/$name" ]; then
        cp -r "$src/crates/$name" "$tmp/crates/"
        kept=$((kept + $(find "$tmp/crates/$name" -name '*.md' | wc -l)))
    fi
done
(cd "$src/crates" && find . -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | LC_ALL=C sort) >"$tmp/CRATES"
cat >"$tmp/SNAPSHOT" <<EOF
# Pruned snapshot of https://github.com/rustsec/advisory-db, made by scripts/refresh-advisories.sh.
source_commit = "$commit"
source_date = "$date"
lock_files = "${locks[*]}"
crates_in_lock_files = ${#names[@]}
advisories_kept = $kept
EOF
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "advisory-db: $kept advisories for ${#names[@]} crates from $commit ($date)"
