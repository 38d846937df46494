#!/bin/sh
# Start-up time of a native sandbox: the harness running `true`, measured
# with hyperfine (apt-get install hyperfine). Reports the median.
#   crates/moat-runtime-native/bench/native/run.sh [extra hyperfine args]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
crate=$(cd "$here/../.." && pwd)
command -v hyperfine >/dev/null 2>&1 || {
    echo "hyperfine is not installed: apt-get install hyperfine" >&2
    exit 1
}
cargo build --release -q -p moat-runtime-native --bin moat-native-harness \
    --manifest-path "$crate/Cargo.toml"
target=$(cargo metadata --format-version 1 --no-deps --manifest-path "$crate/Cargo.toml" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
harness="$target/release/moat-native-harness"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/ws"
mkdir "$work/sock"
sock="$work/sock/proxy.sock"
cat >"$work/host.json" <<JSON
{"hostname":"bench","user":"dev","workspace":"$work/ws","mounts":[],"files":[],
 "env":[],"command":["true"],"network":"Host","stdio":"Inherit"}
JSON
# Isolated mode needs an existing socket to bind; nothing connects to it.
python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])" "$sock"
cat >"$work/isolated.json" <<JSON
{"hostname":"bench","user":"dev","workspace":"$work/ws","mounts":[],"files":[],
 "env":[],"command":["true"],
 "network":{"Isolated":{"relay_port":18080,"proxy_socket":"$sock"}},"stdio":"Inherit"}
JSON
cat >"$work/captured.json" <<JSON
{"hostname":"bench","user":"dev","workspace":"$work/ws","mounts":[],"files":[],
 "env":[],"command":["true"],
 "network":{"Isolated":{"relay_port":18080,"proxy_socket":"$sock",
   "capture":{"proxy_authorization":"Basic eDp5","ports":[80,443]}}},"stdio":"Inherit"}
JSON

hyperfine -N --warmup 20 --runs 300 --export-json "$work/result.json" "$@" \
    -n baseline-true "true" \
    -n sandbox-host-net "$harness $work/host.json" \
    -n sandbox-isolated-net "$harness $work/isolated.json" \
    -n sandbox-isolated-captured "$harness $work/captured.json"
python3 - "$work/result.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(f"{r['command']:>22}: median {r['median'] * 1000:.2f} ms")
PY
