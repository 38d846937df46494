#!/usr/bin/env bash
# A request to a server in a native run through the daemon's routing
# (`ports:`, http://web.<run>.localhost:<port>) against the same server
# reached directly, and through nginx as a reverse proxy, side by side,
# at c=1 and c=32 (issue #25). The server is nginx serving a 13-byte file;
# the direct one is the same configuration on the host's loopback.
# Goal: routing adds at most 0.2 ms at p50 at c=1 and keeps >= 50 % of
# direct throughput at c=32.
#
#   bash bench/ports/run.sh            # builds moat in release mode first
#
# Needs: hey, nginx. BENCH_REQUESTS (default 20000).
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in hey nginx; do
  command -v $tool >/dev/null || { echo "$tool is missing: apt-get install $tool" >&2; exit 1; }
done
cargo build --release -p moat >/dev/null
MOAT="$PWD/target/release/moat"

work=$(mktemp -d)
cleanup() {
  "$MOAT" stop bench-ports >/dev/null 2>&1 || true
  "$MOAT" proxy stop >/dev/null 2>&1 || true
  for pid in "$work"/ng-*/nginx.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
export MOAT_HOME="$work/moat-home" MOAT_PROXY_PORT=0 MOAT_ROUTING_LISTEN=127.0.0.1:0
mkdir -p "$work/project"
chmod 755 "$work" "$work/project"   # nginx workers on the host run as nobody
echo "hello, bench" > "$work/project/index.html"

# nginx serving DIR on 127.0.0.1:PORT (optionally proxying to UPSTREAM),
# with its state under PREFIX.
nginx_conf() {
  local prefix=$1 port=$2 root=$3 upstream=${4:-}
  local location="root $root;" upstream_block=""
  if [ -n "$upstream" ]; then
    upstream_block="upstream up { server $upstream; keepalive 64; }"
    location='proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'
  fi
  cat <<CONF
worker_processes 1;
pid $prefix/nginx.pid;
error_log $prefix/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $prefix; proxy_temp_path $prefix; fastcgi_temp_path $prefix;
  uwsgi_temp_path $prefix; scgi_temp_path $prefix;
  $upstream_block
  server { listen 127.0.0.1:$port; location / { $location } }
}
CONF
}

# The run's server: the same nginx, inside the sandbox (its /tmp).
nginx_conf /tmp/ng 18480 /workspace > "$work/project/nginx-in-run.conf"
cd "$work/project"
"$MOAT" run -d --runtime native --name bench-ports --port web=18480 -- \
  sh -c 'mkdir -p /tmp/ng && exec nginx -c /workspace/nginx-in-run.conf -g "daemon off;"' >/dev/null
port=$("$MOAT" proxy status | sed -n 's|.*Index: *https://localhost:\([0-9]*\)/.*|\1|p')
until curl -sf "http://web.bench-ports.localhost:$port/index.html" >/dev/null; do sleep 0.1; done

# Direct: the same server on the host's loopback; and nginx proxying to it.
mkdir -p "$work/ng-direct" "$work/ng-proxy"
nginx_conf "$work/ng-direct" 18481 "$work/project" > "$work/ng-direct/nginx.conf"
nginx_conf "$work/ng-proxy" 18482 "$work/project" 127.0.0.1:18481 > "$work/ng-proxy/nginx.conf"
nginx -c "$work/ng-direct/nginx.conf" -p "$work/ng-direct"
nginx -c "$work/ng-proxy/nginx.conf" -p "$work/ng-proxy"
until curl -sf http://127.0.0.1:18482/index.html >/dev/null; do sleep 0.1; done

n=${BENCH_REQUESTS:-20000}
row() { # NAME C URL [HOST]
  local out
  if [ -n "${4:-}" ]; then out=$(hey -n "$n" -c "$2" -host "$4" "$3"); else out=$(hey -n "$n" -c "$2" "$3"); fi
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '/ 50% in/ {print $3 * 1000}' <<<"$out")
  p99=$(awk '/ 99% in/ {print $3 * 1000}' <<<"$out")
  ok=$(awk '/\[200\]/ {print $2}' <<<"$out")
  printf '| %-34s | %2s | %9.0f | %8.1f | %8.1f | %6s |\n' "$1" "$2" "$rps" "$p50" "$p99" "${ok:-0}"
}
echo "| path                               |  c |   req/s   | p50 (ms) | p99 (ms) | 200 of $n |"
echo "|------------------------------------|----|-----------|----------|----------|--------|"
for c in 1 32; do
  row "direct (nginx on loopback)" $c "http://127.0.0.1:18481/index.html"
  row "nginx reverse proxy -> direct" $c "http://127.0.0.1:18482/index.html"
  row "moat routing -> run (http)" $c "http://127.0.0.1:$port/index.html" "web.bench-ports.localhost:$port"
  # TLS from moat's CA (hey does not verify it, and sends the Host as
  # the SNI, so without the port), HTTP/1.1.
  row "moat routing -> run (https)" $c "https://127.0.0.1:$port/index.html" "web.bench-ports.localhost"
done
