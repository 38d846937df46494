#!/usr/bin/env bash
# Start-up cost of moat's Docker runtime against the docker CLI:
#   docker run --rm IMAGE true            (runc and runsc)
#   docker-run example (this crate) IMAGE true   (runc and runsc)
# Needs a running dockerd with runsc registered, hyperfine, and IMAGE
# present locally (default local/debian:bookworm, see the crate's tests).
# Writes bench/docker/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-local/debian:bookworm}
RUNS=${RUNS:-20}
cargo build -q --release -p moat-runtime-docker --example docker-run
BIN=target/release/examples/docker-run
OUT=bench/docker/RESULTS.md
JSON=$(mktemp)
hyperfine -N --warmup 3 --runs "$RUNS" --export-markdown "$JSON" \
  -n "docker run --rm (runc)" "docker run --rm --runtime runc $IMAGE true" \
  -n "moat-runtime-docker (runc)" "$BIN runc $IMAGE true" \
  -n "docker run --rm (runsc)" "docker run --rm --runtime runsc $IMAGE true" \
  -n "moat-runtime-docker (runsc)" "$BIN runsc $IMAGE true"
{
  echo "# Docker runtime start-up: \`true\` in $IMAGE"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(docker version -f 'Engine {{.Server.Version}}'), hyperfine $RUNS runs, 3 warm-up."
  echo "moat-runtime-docker = the \`docker-run\` example: create, start, follow logs, wait, remove through the Engine API."
  echo
  cat "$JSON"
} > "$OUT"
rm -f "$JSON"
cat "$OUT"
