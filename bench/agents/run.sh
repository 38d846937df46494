#!/usr/bin/env bash
# Time from `moat claude -p` to the answer, against the same Claude Code
# run straight at the same fake Anthropic API (moat_testkit::models, on
# 127.0.0.1): the difference is what moat adds (sandbox, proxy, staging).
# The answer is the whole output, so wall-clock time to exit is time to the
# answer plus the agent's own exit.
#
# Needs: hyperfine, Claude Code (AGENTS=npm prefix dir; .ci/run installs it
# under /var/cache/moat-agents/claude-code).
# Usage: bench/agents/run.sh            (from the repository root)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CLAUDE_PREFIX=${AGENTS:-/var/cache/moat-agents}/claude-code
RUNS=${RUNS:-20}
W=$(mktemp -d)
FAKE_PID=
cleanup() {
  [ -n "$FAKE_PID" ] && kill "$FAKE_PID" 2>/dev/null || true
  env MOAT_HOME="$W/moat-home" "$TARGET/release/moat" proxy stop >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build -q --release -p moat -p moat-testkit --examples --bins)
"$TARGET/release/examples/fake_models" "$W" > "$W/env" &
FAKE_PID=$!
for _ in $(seq 1 50); do [ -s "$W/env" ] && break; sleep 0.1; done
set -a; . "$W/env"; set +a
PORT=${MOAT_CONNECT_TO##*:}
mkdir -p "$W/project" "$W/home"
export HOME="$W/home" MOAT_HOME="$W/moat-home" MOAT_RUNTIME=native MOAT_KEYRING_BACKEND=file MOAT_PROXY_PORT=0 \
  MOAT_DAEMON_IDLE_TIMEOUT=60 PATH="$CLAUDE_PREFIX/bin:$PATH"
ANTHROPIC_API_KEY=sk-ant-api03-benchKey0123456789 "$TARGET/release/moat" grant anthropic >/dev/null 2>&1
cd "$W/project"
# Direct: the same CLI at the same fake, trusting its CA, no sandbox.
mkdir -p "$W/direct-home/.claude"
printf '{"hasCompletedOnboarding":true,"bypassPermissionsModeAccepted":true,"customApiKeyResponses":{"approved":["benchKey0123456789ab"],"rejected":[]},"projects":{"%s":{"hasTrustDialogAccepted":true}}}' "$W/project" \
  > "$W/direct-home/.claude.json"
DIRECT="env HOME=$W/direct-home ANTHROPIC_API_KEY=sk-ant-api03-benchKey0123456789ab ANTHROPIC_BASE_URL=https://localhost:$PORT \
NODE_EXTRA_CA_CERTS=$MOAT_UPSTREAM_CA_FILE IS_SANDBOX=1 DISABLE_AUTOUPDATER=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
claude --dangerously-skip-permissions -p hello"
$DIRECT | grep -q "fake model" || { echo "the direct run did not answer"; exit 1; }
"$TARGET/release/moat" claude -p hello | grep -q "fake model" || { echo "moat claude did not answer"; exit 1; }
rows=(-n "claude -p (direct)" "$DIRECT" -n "moat claude -p (native)" "$TARGET/release/moat claude -p hello")
# Docker, image cached: the agent is built into the image once (npm), then
# each run is a container (gVisor) behind the network guard.
if docker image inspect local/debian:bookworm >/dev/null 2>&1; then
  DOCKER="env MOAT_IMAGE_MAP=debian:bookworm-slim=local/debian:bookworm $TARGET/release/moat claude --runtime docker -p hello"
  $DOCKER | grep -q "fake model" || { echo "moat claude on Docker did not answer"; exit 1; }
  rows+=(-n "moat claude -p (docker, gVisor, image cached)" "$DOCKER")
fi
hyperfine -N --warmup 2 --runs "$RUNS" "${rows[@]}"
