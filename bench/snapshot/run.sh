#!/bin/sh
# Workspace snapshots: 50,000 files / ~1 GB (500 directories of 100
# files, 4-36 KB each, base64 text so that gzip has something to do).
# First snapshot, then 10 edited files and a second snapshot (time, new
# bytes in the store), beside `tar czf` of the same tree.
# Measured twice: through the `moat` binary (the first snapshot is the
# pre-run snapshot of `moat run -- true`, the second `moat snapshot RUN`),
# and through the library alone (examples/snapbench), without the run.
# Usage: bench/snapshot/run.sh [SCALE]   (SCALE 1 = full; 0.2 = a fifth)
set -eu
SCALE=${1:-1}
ROOT=${BENCH_DIR:-/tmp/moat-snapbench}
cd "$(dirname "$0")/../.."
df -h / | tail -1
CARGO_INCREMENTAL=0 cargo build --offline --release -q -p moat -p moat-snapshot --example snapbench
BIN=target/release/examples/snapbench
MOAT_BIN=$PWD/target/release/moat
moat() { env MOAT_HOME="$ROOT/moat-home" MOAT_RUNTIME=native MOAT_NO_PROMPT=1 "$MOAT_BIN" "$@"; }
store() { du -sb "$ROOT/moat-home/snapshots" | cut -f1; }
rm -rf "$ROOT"; mkdir -p "$ROOT"
python3 - "$ROOT/ws" "$SCALE" <<'PY'
import base64, os, random, sys
root, scale = sys.argv[1], float(sys.argv[2])
random.seed(24)
dirs = int(500 * scale)
total = 0
for d in range(dirs):
    p = os.path.join(root, f"pkg{d:03}", "src")
    os.makedirs(p)
    for f in range(100):
        n = random.randint(3000, 27000)
        data = base64.b64encode(os.urandom(n))
        with open(os.path.join(p, f"f{f:03}.txt"), "wb") as fh:
            fh.write(data)
        total += len(data)
print(f"tree: {dirs * 100} files, {total / 1e9:.2f} GB")
PY
sync
du -sh "$ROOT/ws"
# A workspace's files are older than the racy-stat margin (1 s) when a run
# starts; freshly generated ones are not.
sleep 2
echo "through the binary: moat run -- true (its pre-run snapshot is the first):"
(cd "$ROOT/ws" && /usr/bin/time -f "%e s elapsed" "$MOAT_BIN" --version >/dev/null)
(cd "$ROOT/ws" && env MOAT_HOME="$ROOT/moat-home" MOAT_RUNTIME=native MOAT_NO_PROMPT=1 \
    /usr/bin/time -f "%e s elapsed" "$MOAT_BIN" run --name snapbench -- true)
echo "store: $(store) bytes"
before=$(store)
DIRS=$(ls "$ROOT/ws" | wc -l)
for i in 0 1 2 3 4 5 6 7 8 9; do
    echo "bin edit $i" >> "$ROOT/ws/pkg$(printf %03d $((i * 7 % DIRS)))/src/f0$((i + 20)).txt"
done
sleep 2
echo "moat snapshot snapbench (10 files edited):"
/usr/bin/time -f "%e s elapsed" sh -c "env MOAT_HOME=$ROOT/moat-home $MOAT_BIN snapshot snapbench >/dev/null"
echo "new bytes in the store: $(( $(store) - before ))"
moat proxy stop >/dev/null 2>&1 || true
echo "first snapshot (library):"
$BIN "$ROOT/home" "$ROOT/ws" first
du -sh "$ROOT/home"
for i in 0 1 2 3 4 5 6 7 8 9; do
    echo "edit $i" >> "$ROOT/ws/pkg$(printf %03d $((i * 7 % DIRS)))/src/f0$((i + 10)).txt"
done
echo "second snapshot (10 files edited):"
$BIN "$ROOT/home" "$ROOT/ws" second
echo "third snapshot (nothing changed):"
$BIN "$ROOT/home" "$ROOT/ws" third
echo "tar czf of the same tree:"
/usr/bin/time -f "%e s elapsed" tar czf "$ROOT/ws.tgz" -C "$ROOT" ws
ls -l "$ROOT/ws.tgz" | awk '{print $5 " bytes"}'
rm -rf "$ROOT"
