#!/usr/bin/env bash
# Service sidecars and image builds on the Docker runtime (issue #15):
#
# 1. Start-up of `moat run -- true` with one postgres sidecar (image cached,
#    readiness awaited) against the same two containers started by hand:
#    `docker run -d` of postgres, a `pg_isready` loop through `docker exec`
#    (every 0.25 s, as moat polls), `docker run --rm --network container:pg`
#    of the workload, `docker rm -f`. Both under runc (moat --no-sandbox) so
#    that only the orchestration differs; moat under gVisor as well.
# 2. Building a `[node@22, git]` image: first build (`--rebuild`, Node's
#    tarball already in moat's cache) and a cached run (image present).
#
# No registry is needed: postgres is the Debian stand-in the tests build
# (crates/moat/tests/common: local/moat-test-postgres:*), Debian's base is
# local/debian:bookworm (bash .ci/run makes both).
#
#   bash bench/services/run.sh          # builds moat in release mode first
#
# Needs: hyperfine, a Docker daemon with runsc registered. Results go to
# bench/services/RESULTS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install hyperfine" >&2; exit 1; }
pg=$(docker images --format '{{.Repository}}:{{.Tag}}' local/moat-test-postgres | head -n1)
[ -n "$pg" ] || { echo "no local/moat-test-postgres image: run cargo test -p moat --test services first" >&2; exit 1; }
cargo build --release -p moat >/dev/null
MOAT="$PWD/target/release/moat"

work=$(mktemp -d)
trap '"$MOAT" proxy stop >/dev/null 2>&1 || true; docker rm -f moat-bench-pg >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
export MOAT_HOME="$work/moat-home" MOAT_PROXY_PORT=0 MOAT_RUNTIME=docker
export MOAT_IMAGE_MAP="debian:bookworm-slim=local/debian:bookworm,postgres:17=$pg"
mkdir -p "$work/pg" "$work/node"
printf 'dependencies: [postgres]\n' > "$work/pg/moat.yaml"
printf 'dependencies: [node@22, git]\n' > "$work/node/moat.yaml"
"$MOAT" proxy start >/dev/null

cd "$work/pg"
"$MOAT" run --no-sandbox -- true >/dev/null 2>&1   # builds the workload image once
workload=$(sed -n 's/.*"image": *"\([^"]*\)".*/\1/p' "$MOAT_HOME"/runs/run_*/metadata.json | tail -n1)
cat > "$work/by-hand.sh" <<SH
#!/bin/sh
set -e
docker run -d --name moat-bench-pg -e POSTGRES_PASSWORD=benchpassword $pg >/dev/null
until docker exec moat-bench-pg pg_isready -h localhost -U postgres >/dev/null 2>&1; do sleep 0.25; done
docker run --rm --network container:moat-bench-pg $workload true
docker rm -f moat-bench-pg >/dev/null
SH
chmod +x "$work/by-hand.sh"
runs=${BENCH_RUNS:-10}
hyperfine --warmup 1 --runs "$runs" --export-markdown "$work/services.md" \
  -n "by hand: docker run postgres + pg_isready loop + docker run workload (runc)" "$work/by-hand.sh" \
  -n "moat run --no-sandbox -- true, dependencies: [postgres] (runc)" "$MOAT run --no-sandbox -- true" \
  -n "moat run -- true, dependencies: [postgres] (gVisor)" "$MOAT run -- true"
cat "$work/services.md"

cd "$work/node"
"$MOAT" run --no-sandbox -- node --version   # fills Node's tarball cache
hyperfine --runs 3 --export-markdown "$work/build.md" \
  -n "first build of [node@22, git] (--rebuild)" "$MOAT run --no-sandbox --rebuild -- true" \
  -n "cached: moat run -- true with [node@22, git]" "$MOAT run --no-sandbox -- true"
cat "$work/build.md"
