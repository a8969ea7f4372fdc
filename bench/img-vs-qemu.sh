#!/usr/bin/env bash
# strata vs qemu-img/qemu-io, side by side on the same files, as issue 2 asks:
# sequential write and read of 1 GiB, 4 KiB random writes into a fresh image,
# convert qcow2->raw and raw->qcow2 of 2 GiB, commit of a 1 GiB overlay.
#
# Each workload runs RUNS rounds after one warm-up round, each round timing strata once and
# qemu once (hyperfine; fresh files prepared before every run and not timed), so noise on
# this shared machine falls on both alike; the table gives medians and the ratio
# qemu/strata (above 1: strata is faster). Usage: bench/img-vs-qemu.sh
# Env: RUNS (default 5), BENCH_DIR (default a new dir under /var/tmp),
#      SIZE_GIB (default 1; the convert/commit sources are twice that).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
GIB=${SIZE_GIB:-1}
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
cargo build --release -q -p strata-cli
S=$PWD/target/release/strata
D=${BENCH_DIR:-$(mktemp -d /var/tmp/strata-bench.XXXXXX)}
mkdir -p "$D/json"
trap 'rm -rf "$D"/*.qcow2 "$D"/*.raw' EXIT
SZ=$((GIB << 30))
MB=$((GIB * 1024))

hf() { # name, prepare, strata command, qemu command
  # Interleaved: each round times strata once and qemu once, so a noisy
  # phase of this shared machine hits both tools, not a block of one.
  hyperfine -N -r 1 -w 1 --style none --prepare "sh -c '$2; sync'" \
    -n strata "$3" -n qemu "$4" >/dev/null 2>&1
  for i in $(seq "$RUNS"); do
    hyperfine -N -r 1 --style none --prepare "sh -c '$2; sync'" \
      -n strata "$3" -n qemu "$4" --export-json "$D/json/$1.$i.json" >/dev/null 2>&1
  done
}

echo "workdir $D, $RUNS runs each"

# 1. Sequential write of SZ into a fresh qcow2 (1 MiB requests, 4 in flight,
#    flushed at the end), then sequential read of it.
fresh="rm -f $D/w.qcow2; qemu-img create -q -f qcow2 $D/w.qcow2 $SZ"
hf seq-write "$fresh" \
  "$S img bench -w -d 4 -s 1M -c $MB --pattern 0x5a $D/w.qcow2" \
  "qemu-img bench -w -d 4 -t writeback -s 1M -c $MB --pattern=0x5a $D/w.qcow2"
hf seq-read "true" \
  "$S img bench -d 4 -s 1M -c $MB $D/w.qcow2" \
  "qemu-img bench -d 4 -t writeback -s 1M -c $MB $D/w.qcow2"

# 2. 4 KiB random writes into a fresh image (the same offsets for both).
N=20000
python3 - "$N" "$SZ" > "$D/rand.cmds" <<'PY'
import sys
n, size = int(sys.argv[1]), int(sys.argv[2])
x = 42
for _ in range(n):
    x ^= (x << 13) & (2**64 - 1); x ^= x >> 7; x ^= (x << 17) & (2**64 - 1)
    print(f"write -P 0x5a {(x % (size // 4096)) * 4096} 4k")
PY
hf rand-4k-write "$fresh" \
  "$S img bench -w -s 4K -c $N --random 42 --pattern 0x5a $D/w.qcow2" \
  "sh -c 'qemu-io -t writeback $D/w.qcow2 < $D/rand.cmds > /dev/null'"

# 3. convert of a fully written 2*SZ qcow2 to raw, and of that raw back to qcow2.
#    qemu-img convert's default cache mode (unsafe) never syncs the target;
#    strata makes its result durable, so qemu-img gets -t writeback (same work).
qemu-img create -q -f qcow2 "$D/src.qcow2" $((2 * SZ))
qemu-img bench -w -t writeback -s 1M -c $((2 * MB)) --pattern=0x33 "$D/src.qcow2" >/dev/null
hf convert-qcow2-raw "rm -f $D/dst.raw" \
  "$S img convert -f qcow2 -O raw $D/src.qcow2 $D/dst.raw" \
  "qemu-img convert -t writeback -f qcow2 -O raw $D/src.qcow2 $D/dst.raw"
hf convert-raw-qcow2 "rm -f $D/dst.qcow2" \
  "$S img convert -f raw -O qcow2 $D/dst.raw $D/dst.qcow2" \
  "qemu-img convert -t writeback -f raw -O qcow2 $D/dst.raw $D/dst.qcow2"

# 4. commit of an overlay holding SZ of new data into a 2*SZ base.
prep="cp --sparse=always $D/src.qcow2 $D/base.qcow2 && rm -f $D/ovl.qcow2 && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 $D/ovl.qcow2 && qemu-img bench -w -t writeback -s 1M -c $MB --pattern=0x77 $D/ovl.qcow2"
hf commit "$prep" "$S img commit $D/ovl.qcow2" "qemu-img commit -q $D/ovl.qcow2"

python3 - "$D/json" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
order = ["seq-write", "seq-read", "rand-4k-write", "convert-qcow2-raw", "convert-raw-qcow2", "commit"]
print("| workload | strata (median s) | qemu (median s) | qemu/strata |")
print("|---|---|---|---|")
for name in order:
    times = {}
    for f in sorted(os.listdir(d)):
        if f.startswith(name + ".") and f[len(name) + 1:-5].isdigit():
            for x in json.load(open(os.path.join(d, f)))["results"]:
                times.setdefault(x["command"], []).extend(x["times"])
    if not times:
        continue
    r = {c: statistics.median(t) for c, t in times.items()}
    print(f"| {name} | {r['strata']:.3f} | {r['qemu']:.3f} | {r['qemu'] / r['strata']:.2f}x |")
PY
