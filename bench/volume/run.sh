#!/usr/bin/env bash
# Native copy-on-write start (issue #24): `moat run --workspace-mode volume
# -- true` (an overlay over the workspace, its upper layer in the run's
# directory) beside the bind-mode run, daemon up, in an empty project and
# in a copy of this repository's crates/ (a few hundred files: an overlay
# costs nothing per file, so the two should stay together). Goal: volume
# within 5 ms of bind.
#
#   bash bench/volume/run.sh            # builds moat in release mode first
#
# Needs: hyperfine (apt-get install hyperfine). BENCH_RUNS (default 100).
# Prints the tables; RESULTS.md holds the dated figures.
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install hyperfine" >&2; exit 1; }
cargo build --release -p moat >/dev/null
MOAT="$PWD/target/release/moat"
CRATES="$PWD/crates"

work=$(mktemp -d)
trap '"$MOAT" proxy stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
export MOAT_HOME="$work/moat-home" MOAT_PROXY_PORT=0
mkdir -p "$work/empty" "$work/tree"
cp -r "$CRATES" "$work/tree/"
cd "$work/empty"
"$MOAT" proxy start >/dev/null

runs=${BENCH_RUNS:-100}
for project in empty tree; do
  cd "$work/$project"
  echo "## $project ($(find . -type f | wc -l) files)"
  # Alternated by hyperfine's own order, twice, so drift shows.
  for round in 1 2; do
    hyperfine -N --warmup 10 --runs "$runs" \
      -n "bind (round $round)" "$MOAT run --runtime native -- true" \
      -n "volume (round $round)" "$MOAT run --runtime native --workspace-mode volume -- true"
  done
  # Each run leaves its directory (and its upper layer) in MOAT_HOME.
  "$MOAT" clean --force >/dev/null 2>&1 || true
done
