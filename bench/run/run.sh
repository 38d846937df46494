#!/usr/bin/env bash
# Start-up of `moat run -- true` on the native runtime, daemon already up,
# beside a plain process, `docker run --rm <image> true` (when an engine is
# reachable), bubblewrap `bwrap ... true` (a comparable namespace sandbox:
# read-only /usr, fresh /proc, /dev and /tmp, the project bound, every
# namespace unshared) and Anthropic's sandbox-runtime `srt true` (when
# installed).
#
#   bash bench/run/run.sh            # builds moat in release mode first
#
# Needs: hyperfine (apt-get install hyperfine). Optional peers:
#   bwrap: apt-get install bubblewrap
#   docker with an image (BENCH_DOCKER_IMAGE, default local/debian:bookworm)
#   srt: npm install --prefix /tmp/srt @anthropic-ai/sandbox-runtime
#        (and apt-get install bubblewrap socat ripgrep)
# Prints the tables (BENCH_OUT=file keeps them); RESULTS.md holds the
# dated figures.
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install hyperfine" >&2; exit 1; }
cargo build --release -p moat >/dev/null
MOAT="$PWD/target/release/moat"

work=$(mktemp -d)
trap '"$MOAT" proxy stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
export MOAT_HOME="$work/moat-home" MOAT_PROXY_PORT=0
mkdir -p "$work/project"
cd "$work/project"
"$MOAT" proxy start >/dev/null

runs=${BENCH_RUNS:-200}
cmds=(-n "true (no sandbox)" "true" -n "moat run --runtime native -- true" "$MOAT run --runtime native -- true")
docker_ok=false
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  image=${BENCH_DOCKER_IMAGE:-local/debian:bookworm}
  if docker image inspect "$image" >/dev/null 2>&1; then
    docker_ok=true
    cmds+=(-n "docker run --rm $image true" "docker run --rm $image true")
  fi
fi
if command -v bwrap >/dev/null; then
  bw="bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib"
  bw+=" --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin --proc /proc --dev /dev --tmpfs /tmp"
  bw+=" --bind $work/project /workspace --chdir /workspace true"
  cmds+=(-n "bwrap (namespaces, ro /usr, workspace) true" "$bw")
fi
srt=${BENCH_SRT:-/tmp/srt/node_modules/.bin/srt}
if [ -x "$srt" ]; then
  cmds+=(-n "srt true" "$srt true")
fi

hyperfine -N --warmup 10 --runs "$runs" --export-markdown "$work/table.md" "${cmds[@]}"

# Docker: moat's Docker runtime against plain `docker run` of the very
# image moat runs (found after one warm-up run), under runc and gVisor.
if $docker_ok; then
  export MOAT_IMAGE_MAP="debian:bookworm-slim=$image"
  "$MOAT" run --runtime docker -- true >/dev/null
  moat_image=$(sed -n 's/.*"image": *"\([^"]*\)".*/\1/p' "$MOAT_HOME"/runs/run_*/metadata.json | tail -n1)
  druns=${BENCH_DOCKER_RUNS:-20}
  # Twice: back to back, and with a pause before each run. moat returns
  # once the workload is removed and leaves its network guard's removal to
  # the engine (about 100 ms of its work), so back to back the next run
  # shares the engine with the previous one's clean-up; the pause is what a
  # user starting one run sees. `docker run --rm` removes its one container
  # before it returns: the pause changes nothing for it.
  for pause in 0 0.5; do
    hyperfine -N --warmup 3 --runs "$druns" --prepare "sleep $pause" \
      --export-markdown "$work/docker-pause-$pause.md" \
      -n "docker run --rm (runc)" "docker run --rm $moat_image true" \
      -n "moat run --runtime docker --no-sandbox -- true" "$MOAT run --runtime docker --no-sandbox -- true" \
      -n "docker run --rm --runtime runsc" "docker run --rm --runtime runsc $moat_image true" \
      -n "moat run --runtime docker -- true (gVisor)" "$MOAT run --runtime docker -- true"
  done
fi

# Podman: moat's Podman runtime against plain `podman run --rm` of the
# very image moat runs, both with the rlimits this machine needs and
# slirp4netns (what moat's containers use). Podman's API service is
# started by moat when absent.
podman_ok=false
if command -v podman >/dev/null && podman image exists "localhost/${BENCH_DOCKER_IMAGE:-local/debian:bookworm}" 2>/dev/null; then
  podman_ok=true
  export MOAT_IMAGE_MAP="debian:bookworm-slim=${BENCH_DOCKER_IMAGE:-local/debian:bookworm}"
  "$MOAT" run --runtime podman -- true >/dev/null 2>&1
  podman_image=$(grep -l '"runtime": *"podman"' "$MOAT_HOME"/runs/run_*/metadata.json \
    | xargs sed -n 's/.*"image": *"\([^"]*\)".*/\1/p' | tail -n1)
  nofile=$(( $(ulimit -Hn) < 65536 ? $(ulimit -Hn) : 65536 ))
  nproc=$(( $(ulimit -Hu) < 4096 ? $(ulimit -Hu) : 4096 ))
  pruns=${BENCH_PODMAN_RUNS:-20}
  hyperfine -N --warmup 3 --runs "$pruns" --export-markdown "$work/podman.md" \
    -n "podman run --rm (runc, slirp4netns)" \
    "podman run --rm --network slirp4netns --ulimit nofile=$nofile:$nofile --ulimit nproc=$nproc:$nproc $podman_image true" \
    -n "moat run --runtime podman -- true" "$MOAT run --runtime podman -- true"
fi

# Peak RSS of one `moat run -- true` (the supervising CLI process).
rss=$(/usr/bin/time -f "%M" "$MOAT" run --runtime native -- true 2>&1 >/dev/null | tail -n1)

# Dated sections of RESULTS.md are written by hand from this output.
out=${BENCH_OUT:-$work/results.md}
{
  echo "# moat run start-up"
  echo
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, \`bash bench/run/run.sh\` ($runs runs each)."
  echo
  cat "$work/table.md"
  echo
  echo "Peak RSS of the moat CLI for one \`moat run -- true\`: ${rss} KB."
  for pause in 0 0.5; do
    if [ -f "$work/docker-pause-$pause.md" ]; then
      echo
      echo "## Docker runtime, image cached (\`$moat_image\`, $druns runs each, ${pause} s pause before each)"
      echo
      cat "$work/docker-pause-$pause.md"
    fi
  done
  if $podman_ok; then
    echo
    echo "## Podman runtime, image cached (\`$podman_image\`, $pruns runs each)"
    echo
    cat "$work/podman.md"
  fi
} > "$out"
cat "$out"
