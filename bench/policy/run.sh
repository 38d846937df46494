#!/usr/bin/env bash
# Live policy (issue #25): how long `moat allow` takes to apply to a
# running run. Goal: under 50 ms from the command's start to the next
# request allowed.
#
#   bash bench/policy/run.sh          # builds moat in release mode first
#
# Three figures, native runtime, a run under `policy: strict`:
# 1. hyperfine on `moat allow RUN api.example.com` (each run prepared by a
#    `moat deny`): the command returns once the daemon has replaced the
#    run's policy in the proxy, so this bounds "applied".
# 2. end to end: the sandboxed command curls http://api.example.com/ in a
#    loop and stamps each answer; the time from just before `moat allow`
#    starts to the first 200 it gets (includes the loop's own period).
# 3. the daemon's own time per change (its log, `policy changed micros=`).
#
# Needs: hyperfine, python3, curl. BENCH_RUNS (default 100).
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install hyperfine" >&2; exit 1; }
cargo build --release -p moat >/dev/null
MOAT="$PWD/target/release/moat"

work=$(mktemp -d)
upstream_pid=
cleanup() {
  "$MOAT" stop bench-policy >/dev/null 2>&1 || true
  "$MOAT" proxy stop >/dev/null 2>&1 || true
  [ -n "$upstream_pid" ] && kill "$upstream_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/www" "$work/project"
(cd "$work/www" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
upstream_pid=$!

export MOAT_HOME="$work/moat-home" MOAT_PROXY_PORT=0 MOAT_RUNTIME=native
export MOAT_CONNECT_TO="api.example.com:80:127.0.0.1:$port"
cd "$work/project"
printf 'network:\n  policy: strict\n' > moat.yaml
MOAT_LOG=moat_daemon=info "$MOAT" proxy start >/dev/null

"$MOAT" run -d --name bench-policy -- bash -c '
  while :; do
    code=$(curl -s -o /dev/null -w "%{http_code}" http://api.example.com/)
    echo "$code $(date +%s%N)" >> probe.log
  done' >/dev/null
until [ -s probe.log ]; do sleep 0.1; done

runs=${BENCH_RUNS:-100}
hyperfine -N --warmup 5 --runs "$runs" \
  --prepare "$MOAT deny bench-policy api.example.com" \
  -n "moat allow (command)" "$MOAT allow bench-policy api.example.com"

echo
echo "End to end: moat allow starts -> the sandbox's next request gets 200"
deltas=()
for _ in $(seq 1 20); do
  "$MOAT" deny bench-policy api.example.com >/dev/null
  sleep 0.2
  t0=$(date +%s%N)
  "$MOAT" allow bench-policy api.example.com >/dev/null
  until t=$(awk -v t0="$t0" '$1 == 200 && $2 > t0 { print $2; exit }' probe.log) && [ -n "$t" ]; do
    sleep 0.005
  done
  deltas+=($(( (t - t0) / 1000 )))
done
printf '%s\n' "${deltas[@]}" | sort -n | awk '{ a[NR] = $1 } END {
  printf "  n=%d  min %.1f ms  median %.1f ms  max %.1f ms\n", NR, a[1]/1000, a[int((NR+1)/2)]/1000, a[NR]/1000 }'
echo "  curl loop period (sandbox, for scale): $(awk 'NR > 1 { d = $2 - p; s += d; n++ } { p = $2 } END { printf "%.1f ms", s / n / 1e6 }' probe.log)"

echo
echo "Daemon side (apply in the proxy + audit append), per change:"
sed 's/\x1b\[[0-9;]*m//g' "$MOAT_HOME/proxy/daemon.log" | grep -o 'micros=[0-9]*' | cut -d= -f2 | sort -n | awk '{ a[NR] = $1 } END {
  printf "  n=%d  median %d us  max %d us\n", NR, a[int((NR+1)/2)], a[NR] }'
