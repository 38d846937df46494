#!/usr/bin/env bash
# HTTPS GETs with credential injection through moat-proxy, compared in the
# same run with a direct connection and with mitmproxy. moat-proxy is
# measured twice: the engine alone (examples/bench_server: injection, no
# trace) and the real daemon started by `moat` for a registered run
# (injection, response scrubbing and the network.jsonl trace on, as in
# production). Everything listens on 127.0.0.1; each load run is bounded
# (DUR, default 10s). nginx listens twice: HTTP/1.1 only (the like-for-like
# rows: one upstream connection per client connection) and with HTTP/2
# offered ("h2 up" rows: moat multiplexes every request on one upstream
# connection, as with most API servers; hey always speaks HTTP/1.1).
#
# Needs: apt-get install -y nginx-light hey openssl
#        python3 -m venv /tmp/mv && /tmp/mv/bin/pip install mitmproxy
# Usage: bench/proxy/run.sh            (from the repository root)
#        BIN_DIR=dir bench/proxy/run.sh  (no build: dir holds moat,
#        bench_server and bench_handshake, to compare builds side by side)
set -euo pipefail
ulimit -n 65536 2>/dev/null || true

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DUR=${DUR:-10s}
CONC=${CONC:-32}
MITMDUMP=${MITMDUMP:-/tmp/mv/bin/mitmdump}
NGINX_PORT=18443
NGINX_H2_PORT=$((NGINX_PORT + 1))
MOAT_PORT=18080
MITM_PORT=18081
DAEMON_PORT=18082
MOAT_H2_PORT=18083
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=${BIN_DIR:-}
MOAT_EXE=${BIN_DIR:-$TARGET/release}/moat
W=$(mktemp -d)
PIDS=()
MOAT=(env -i HOME="$W/home" MOAT_HOME="$W/moat-home" PATH=/usr/local/bin:/usr/bin:/bin
    MOAT_KEYRING_BACKEND=file MOAT_RUNTIME=native MOAT_PROXY_PORT=$DAEMON_PORT
    MOAT_CONNECT_TO="bench.test:443:127.0.0.1:$NGINX_PORT,bench2.test:443:127.0.0.1:$NGINX_H2_PORT"
    MOAT_UPSTREAM_CA_FILE="$W/up-ca.pem"
    BENCH_KEY=bench-secret-0123456789abcdef "$MOAT_EXE")
moat() { "${MOAT[@]}" "$@"; }
RUN_PID=
cleanup() {
    if [ -n "$RUN_PID" ]; then kill "$RUN_PID" 2>/dev/null || true; wait "$RUN_PID" 2>/dev/null || true; fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -x "$MOAT_EXE" ] && moat proxy stop >/dev/null 2>&1 || true
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT


. "$ROOT/bench/lib/upstream.sh"
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

if [ -n "$BIN_DIR" ]; then
    BIN=$BIN_DIR
else
    echo "== building (release)"
    (cd "$ROOT" && cargo build -q --release -p moat -p moat-proxy --examples --bins)
    BIN="$TARGET/release/examples"
fi

echo "== certificates and nginx on 127.0.0.1:$NGINX_PORT"
start_upstream "$W" $NGINX_PORT

echo "== moat-proxy (examples/bench_server) on 127.0.0.1:$MOAT_PORT"
"$BIN/bench_server" 127.0.0.1:$MOAT_PORT "$W/moat-ca" "$W/up-ca.pem" "$W/token" bench.test \
    "bench.test:443:127.0.0.1:$NGINX_PORT" &
MOAT_PID=$!
PIDS+=($MOAT_PID)
wait_port $MOAT_PORT
TOKEN=$(cat "$W/token")
sleep 1
RSS_IDLE=$(rss_kb $MOAT_PID)

# The same engine in front of nginx's HTTP/2 listener (bench.test is
# routed there): one upstream connection carries every request.
"$BIN/bench_server" 127.0.0.1:$MOAT_H2_PORT "$W/moat-ca" "$W/up-ca.pem" "$W/token-h2" bench.test \
    "bench.test:443:127.0.0.1:$NGINX_H2_PORT" &
MOAT_H2_PID=$!
PIDS+=($MOAT_H2_PID)
wait_port $MOAT_H2_PORT
TOKEN_H2=$(cat "$W/token-h2")

echo "== mitmproxy on 127.0.0.1:$MITM_PORT"
"$MITMDUMP" -q -p $MITM_PORT -s "$ROOT/bench/proxy/addon.py" \
    --set ssl_verify_upstream_trusted_ca="$W/up-ca.pem" --set confdir="$W/mitm" &
PIDS+=($!)
wait_port $MITM_PORT
for _ in $(seq 1 50); do [ -f "$W/mitm/mitmproxy-ca-cert.pem" ] && break; sleep 0.1; done

echo "== moat daemon (real moat, registered run with a grant) on 127.0.0.1:$DAEMON_PORT"
mkdir -p "$W/home" "$W/moat-home" "$W/proj"
cat > "$W/moat-home/providers.json" <<JSON
[{"name": "bench", "description": "bench upstream", "kind": "api-key",
  "hosts": [{"host": "bench.test", "headers": [{"name": "X-Bench-Key", "scheme": "raw"}]},
            {"host": "bench2.test", "headers": [{"name": "X-Bench-Key", "scheme": "raw"}]}],
  "env": ["BENCH_KEY"]}]
JSON
moat grant bench >/dev/null 2>&1
# exec: the PID recorded is moat's own, so cleanup stops the run.
(cd "$W/proj" && exec "${MOAT[@]}" run --grant bench -- sh -c 'echo "$HTTPS_PROXY" > proxy.url; sleep 3600') &
RUN_PID=$!
for _ in $(seq 1 100); do [ -s "$W/proj/proxy.url" ] && break; sleep 0.1; done
DAEMON_URL=$(cat "$W/proj/proxy.url")
DAEMON_PID=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$W/moat-home/proxy/daemon.lock")
DAEMON_RSS_IDLE=$(rss_kb "$DAEMON_PID")

cat "$W/up-ca.pem" "$W/moat-ca/ca.crt" "$W/mitm/mitmproxy-ca-cert.pem" "$W/moat-home/proxy/ca/ca.crt" > "$W/trust.pem"
URL="https://127.0.0.1:$NGINX_PORT/"
# hey takes its proxy from -x only, and sends the URL's host:port as TLS SNI
# when the URL has a port, which is not a DNS name: rustls (moat) rightly
# rejects that ClientHello, nginx and mitmproxy let it pass. So moat is
# given a portless URL, https://bench.test/, that it routes to the same
# nginx with its connect-to mapping (the production MOAT_CONNECT_TO path).
MOAT_URL="https://bench.test/"
# bench2.test: the daemon's route to nginx's HTTP/2 listener.
MOAT_H2_URL="https://bench2.test/"
export SSL_CERT_FILE="$W/trust.pem"

# Sanity: moat injects, and refuses without the token.
curl -sS --cacert "$W/trust.pem" -o /dev/null -w 'moat daemon check: %{http_code}\n' -x "$DAEMON_URL" "$MOAT_URL"
curl -sS --cacert "$W/trust.pem" -o /dev/null -w 'moat daemon (h2 upstream) check: %{http_code}\n' -x "$DAEMON_URL" "$MOAT_H2_URL"
curl -sS --cacert "$W/trust.pem" -o /dev/null -w 'moat check: %{http_code}\n' \
    -x "http://moat:$TOKEN@127.0.0.1:$MOAT_PORT" "$MOAT_URL"
# A refused CONNECT: curl reports its status as http_connect (http_code is 000).
curl -sS --cacert "$W/trust.pem" -o /dev/null -w 'no token: %{http_connect} (want 407)\n' \
    -x "http://127.0.0.1:$MOAT_PORT" "$URL" 2>/dev/null || true

hey_run() { # name, url, extra args...
    local name=$1 url=$2; shift 2
    local out
    out=$(hey "$@" "$url")
    local rps p50 p99 errs
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '/ 50%% in/ || / 50% in/ {print $3}' <<<"$out")
    p99=$(awk '/ 99% in/ {print $3}' <<<"$out")
    errs=$(grep -c -E '^\s+\[[0-9]+\]' <<<"$out" || true)
    local non200
    non200=$(awk '/Status code distribution/ {f=1; next} f && /\[/ && !/\[200\]/ {print}' <<<"$out" | tr -s ' ' | paste -sd ';' -)
    printf '%-22s %10s req/s   p50 %8.3f ms   p99 %8.3f ms   %s\n' "$name" "$rps" \
        "$(awk -v s="$p50" 'BEGIN{print s*1000}')" "$(awk -v s="$p99" 'BEGIN{print s*1000}')" "${non200:-all 200}"
}

echo "== throughput: hey -z $DUR -c $CONC (keep-alive)"
hey_run "direct" "$URL" -z "$DUR" -c "$CONC"
hey_run "moat-proxy" "$MOAT_URL" -z "$DUR" -c "$CONC" -x "http://moat:$TOKEN@127.0.0.1:$MOAT_PORT"
RSS_LOAD=$(rss_kb $MOAT_PID)
hey_run "moat daemon" "$MOAT_URL" -z "$DUR" -c "$CONC" -x "$DAEMON_URL"
hey_run "mitmproxy" "$URL" -z "$DUR" -c "$CONC" -x "http://127.0.0.1:$MITM_PORT"
hey_run "moat-proxy, h2 up" "$MOAT_URL" -z "$DUR" -c "$CONC" -x "http://moat:$TOKEN_H2@127.0.0.1:$MOAT_H2_PORT"
hey_run "moat daemon, h2 up" "$MOAT_H2_URL" -z "$DUR" -c "$CONC" -x "$DAEMON_URL"

echo "== latency: hey -z 5s -c 1 (keep-alive)"
hey_run "direct c=1" "$URL" -z 5s -c 1
hey_run "moat-proxy c=1" "$MOAT_URL" -z 5s -c 1 -x "http://moat:$TOKEN@127.0.0.1:$MOAT_PORT"
hey_run "moat daemon c=1" "$MOAT_URL" -z 5s -c 1 -x "$DAEMON_URL"
hey_run "mitmproxy c=1" "$URL" -z 5s -c 1 -x "http://127.0.0.1:$MITM_PORT"
hey_run "moat daemon, h2 up c=1" "$MOAT_H2_URL" -z 5s -c 1 -x "$DAEMON_URL"

echo "== new-host handshake (CONNECT + TLS with the proxy; leaf minted vs cached)"
"$BIN/bench_handshake" 127.0.0.1:$MOAT_PORT "$TOKEN" "$W/moat-ca/ca.crt" 300

hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# Upstream (nginx HTTP/1.1 listener) connections the process holds.
up_conns() { ss -Htnp state established "( dport = :$NGINX_PORT )" | grep -c "pid=$1," || true; }
echo "== 1,000 open connections (hey -z 5s -c 1000; VmHWM = peak RSS of the process so far)"
hey_run "moat-proxy c=1000" "$MOAT_URL" -z 5s -c 1000 -x "http://moat:$TOKEN@127.0.0.1:$MOAT_PORT"
echo "   moat-proxy VmHWM $(hwm_kb $MOAT_PID) kB (idle ${RSS_IDLE} kB, after c=32 ~${RSS_LOAD} kB), $(up_conns $MOAT_PID) upstream connections"
hey_run "moat-proxy, h2 up c=1000" "$MOAT_URL" -z 5s -c 1000 -x "http://moat:$TOKEN_H2@127.0.0.1:$MOAT_H2_PORT"
echo "   moat-proxy (h2 upstream) VmHWM $(hwm_kb $MOAT_H2_PID) kB"
# The daemon's HTTP/2 run first: its peak is the lower one, so the
# HTTP/1.1 run's VmHWM after it is that run's own peak.
DAEMON_RSS_LOAD=$(rss_kb "$DAEMON_PID")
hey_run "moat daemon, h2 up c=1000" "$MOAT_H2_URL" -z 5s -c 1000 -x "$DAEMON_URL"
echo "   moat daemon VmHWM $(hwm_kb "$DAEMON_PID") kB (idle ${DAEMON_RSS_IDLE} kB, before this ${DAEMON_RSS_LOAD} kB)"
hey_run "moat daemon c=1000" "$MOAT_URL" -z 5s -c 1000 -x "$DAEMON_URL"
echo "   moat daemon VmHWM $(hwm_kb "$DAEMON_PID") kB, $(up_conns "$DAEMON_PID") upstream connections"
echo "== trace lines: $(cat "$W"/moat-home/runs/*/network.jsonl 2>/dev/null | wc -l)"
