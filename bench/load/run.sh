#!/usr/bin/env bash
# Hundreds of native runs on one daemon (issue #29), release build:
#  1. load: LOAD_RUNS (500) runs started together, each making LOAD_REQUESTS
#     (100) HTTPS requests through the daemon to a local upstream with the
#     GitHub grant injected; zero failures, every trace complete, the
#     daemon's descriptors back where they were, nothing left on the host;
#  2. soak: SOAK_BATCHES (40) batches of SOAK_BATCH (50) runs, 2,000 runs
#     started and ended; the daemon's descriptors and memory must not grow.
# Both are the tests in crates/moat/tests/load.rs (CI runs the load at
# 50 x 20); the figures are on their stderr.
#
#   bash bench/load/run.sh            # both
#   bash bench/load/run.sh load       # only the load
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
ulimit -n 65536 2>/dev/null || true
export CARGO_INCREMENTAL=0
if [ "$what" = all ] || [ "$what" = load ]; then
  MOAT_LOAD_RUNS=${LOAD_RUNS:-500} MOAT_LOAD_REQUESTS=${LOAD_REQUESTS:-100} \
    cargo test --release -q -p moat --test load -- --nocapture many_runs 2>&1 \
    | grep -E '^load:|panicked|test result'
fi
if [ "$what" = all ] || [ "$what" = soak ]; then
  MOAT_SOAK_BATCHES=${SOAK_BATCHES:-40} MOAT_SOAK_BATCH=${SOAK_BATCH:-50} \
    cargo test --release -q -p moat --test load -- --nocapture --ignored thousands 2>&1 \
    | grep -E '^soak:|panicked|test result'
fi
