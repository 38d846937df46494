#!/usr/bin/env bash
# What transparent capture costs: the same client (hey) inside one
# `moat run` sandbox, against the same local HTTPS upstream, once through
# the proxy it was told about (HTTPS_PROXY) and once captured (no proxy
# settings: the sandbox's DNS responder and capture relay hand it to the
# proxy). Also `moat run -- true` start-up with the private network.
# Everything listens on 127.0.0.1; each load run is bounded (N requests).
#
# Needs: apt-get install -y nginx-light hey openssl hyperfine
# Usage: bench/capture/run.sh            (from the repository root)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
N=${N:-20000}
CONC=${CONC:-8}
NGINX_PORT=18443
W=$(mktemp -d)
PIDS=()
cleanup() {
    "$MOAT" proxy stop >/dev/null 2>&1 || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
. "$ROOT/bench/lib/upstream.sh"

(cd "$ROOT" && cargo build -q --release -p moat)
MOAT="$ROOT/target/release/moat"

mkdir -p "$W/project"
start_upstream "$W" $NGINX_PORT

export MOAT_HOME="$W/moat-home" MOAT_PROXY_PORT=0 MOAT_RUNTIME=native
export MOAT_UPSTREAM_CA_FILE="$W/up-ca.pem" MOAT_CONNECT_TO="bench.test:443:127.0.0.1:$NGINX_PORT"
cd "$W/project"
"$MOAT" proxy start >/dev/null

# One sandbox runs both loads, so start-up is not part of the figures.
script='
set -e
summary() { grep -E "Requests/sec|50% in|99% in" | tr -s " " | sed "s/^ //"; }
echo "explicit proxy (HTTPS_PROXY):"
hey -n '"$N"' -c '"$CONC"' -x "$HTTPS_PROXY" https://bench.test/ | summary
echo "captured (no proxy settings):"
env -u HTTPS_PROXY -u HTTP_PROXY -u https_proxy -u http_proxy hey -n '"$N"' -c '"$CONC"' https://bench.test/ | summary
'
"$MOAT" run -- sh -c "$script" | tee "$W/load.txt"

hyperfine -N --warmup 10 --runs "${RUNS:-200}" --export-markdown "$W/start.md" \
    -n "moat run -- true (private network, capture)" "$MOAT run -- true"

out="$ROOT/bench/capture/RESULTS.md"
{
    echo "# Transparent capture"
    echo
    echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, \`bash bench/capture/run.sh\`:"
    echo "hey inside one native sandbox, $N HTTPS GETs at c=$CONC to a local nginx"
    echo "through the moat daemon (injection and tracing on)."
    echo
    echo '```'
    cat "$W/load.txt"
    echo '```'
    echo
    cat "$W/start.md"
} > "$out"
cat "$out"
