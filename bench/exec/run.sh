#!/usr/bin/env bash
# `moat exec` on the native runtime (issue #24): a command started in a
# running run's sandbox through its exec socket, beside a whole new run
# (`moat run -- true`, daemon up) and, where Docker answers, the same
# `moat exec` into a Docker (gVisor) run, which is the engine's exec.
# Goal: `moat exec RUN -- true` under 30 ms on native.
#
#   bash bench/exec/run.sh            # builds moat in release mode first
#
# Needs: hyperfine. BENCH_RUNS (default 200). RESULTS.md holds the figures.
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install hyperfine" >&2; exit 1; }
cargo build --release -p moat >/dev/null
MOAT="$PWD/target/release/moat"

work=$(mktemp -d)
cleanup() {
  "$MOAT" stop bench-native >/dev/null 2>&1 || true
  "$MOAT" stop bench-docker >/dev/null 2>&1 || true
  "$MOAT" proxy stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export MOAT_HOME="$work/moat-home" MOAT_PROXY_PORT=0
mkdir -p "$work/project"
cd "$work/project"
"$MOAT" proxy start >/dev/null

runs=${BENCH_RUNS:-200}
"$MOAT" run -d --runtime native --name bench-native -- sleep 3600 >/dev/null
until "$MOAT" exec bench-native -- true 2>/dev/null; do sleep 0.1; done
hyperfine -N --warmup 20 --runs "$runs" \
  -n "moat exec (native)" "$MOAT exec bench-native -- true" \
  -n "moat run (native)" "$MOAT run --runtime native -- true"

if docker info >/dev/null 2>&1; then
  export MOAT_IMAGE_MAP=${MOAT_IMAGE_MAP:-debian:bookworm-slim=local/debian:bookworm}
  "$MOAT" run -d --runtime docker --name bench-docker -- sleep 3600 >/dev/null
  until "$MOAT" exec bench-docker -- true 2>/dev/null; do sleep 0.2; done
  hyperfine -N --warmup 3 --runs 20 \
    -n "moat exec (docker, gVisor)" "$MOAT exec bench-docker -- true"
fi
