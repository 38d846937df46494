#!/usr/bin/env bash
# CPU time per request of the proxy engine (examples/bench_server:
# injection and response scrubbing, no trace), for builds side by side.
# On a shared machine req/s swings with whatever else runs; the CPU the
# process itself spends per request swings far less, so two builds can be
# compared while others work.
#
# Needs: apt-get install -y nginx-light hey openssl
# Usage: bench/proxy/cpu.sh DIR_A DIR_B   (each holds bench_server)
#        ROUNDS=3 N=100000 CONC=32 bench/proxy/cpu.sh ...
# Prints, per round and build: µs of CPU (user + system) per request.
set -euo pipefail
ulimit -n 65536 2>/dev/null || true

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${ROUNDS:-3}
N=${N:-100000}
CONC=${CONC:-32}
NGINX_PORT=18543
MOAT_PORT=18180
W=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

. "$ROOT/bench/lib/upstream.sh"
start_upstream "$W" $NGINX_PORT
TICKS=$(getconf CLK_TCK)
# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

measure() { # bin_dir
    rm -rf "$W/moat-ca"
    "$1/bench_server" 127.0.0.1:$MOAT_PORT "$W/moat-ca" "$W/up-ca.pem" "$W/token" bench.test \
        "bench.test:443:127.0.0.1:$NGINX_PORT" &
    local pid=$!
    wait_port $MOAT_PORT
    local proxy
    proxy="http://moat:$(cat "$W/token")@127.0.0.1:$MOAT_PORT"
    cat "$W/up-ca.pem" "$W/moat-ca/ca.crt" > "$W/trust.pem"
    SSL_CERT_FILE="$W/trust.pem" hey -n 2000 -c "$CONC" -x "$proxy" https://bench.test/ >/dev/null
    local before after
    before=$(cpu_ticks $pid)
    SSL_CERT_FILE="$W/trust.pem" hey -n "$N" -c "$CONC" -x "$proxy" https://bench.test/ >/dev/null
    after=$(cpu_ticks $pid)
    kill $pid
    wait $pid 2>/dev/null || true
    awk -v t=$((after - before)) -v hz="$TICKS" -v n="$N" 'BEGIN {printf "%.1f", t / hz / n * 1e6}'
}

for round in $(seq 1 "$ROUNDS"); do
    for dir in "$@"; do
        printf 'round %d  %-24s %s µs/request\n' "$round" "$dir" "$(measure "$dir")"
    done
done
