#!/usr/bin/env bash
# The cost of crash-consistent change tracking, side by side with QEMU.
#
# Workloads overwrite a fully allocated 1 GiB qcow2 in place (the case where
# a bit must be durable before the data): sequential 1 MiB writes (4 in
# flight) over the whole image, and 20,000 random 4 KiB writes. Each runs as
#   strata     no bitmap
#   strata+bm  one enabled 64 KiB bitmap, cleared before every run
#   qemu+bm    the same image and bitmap under qemu-img bench / qemu-io
#              (QEMU keeps the bitmap in memory and writes it at close, so a
#              crash loses it: it is marked in use meanwhile)
# The table gives medians over RUNS runs and two ratios: tracking cost
# (strata+bm / strata) and qemu+bm / strata+bm (above 1: strata is faster).
# Usage: bench/bitmap-tracking.sh   Env: RUNS (default 5), BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
cargo build --release -q -p strata-cli
S=$PWD/target/release/strata
D=${BENCH_DIR:-$(mktemp -d /var/tmp/strata-bm.XXXXXX)}
mkdir -p "$D/json"
trap 'rm -f "$D"/*.qcow2' EXIT
echo "workdir $D, $RUNS runs each"

qemu-img create -q -f qcow2 "$D/plain.qcow2" 1G
qemu-img bench -w -t writeback -s 1M -c 1024 --pattern=0x33 "$D/plain.qcow2" >/dev/null
cp "$D/plain.qcow2" "$D/bm.qcow2"
qemu-img bitmap --add "$D/bm.qcow2" cbt
clear="sh -c 'qemu-img bitmap --clear $D/bm.qcow2 cbt; sync'"

hf() { # name, strata args, qemu command (on bm.qcow2)
  hyperfine -N -r "$RUNS" -w 1 --style none \
    --prepare "sync" --prepare "$clear" --prepare "$clear" \
    -n strata "$S img bench $2 $D/plain.qcow2" \
    -n strata+bm "$S img bench $2 $D/bm.qcow2" \
    -n qemu+bm "$3" \
    --export-json "$D/json/$1.json" >/dev/null
}

hf seq-overwrite "-w -d 4 -s 1M -c 1024 --pattern 0x5a" \
  "qemu-img bench -w -d 4 -t writeback -s 1M -c 1024 --pattern=0x5a $D/bm.qcow2"

N=20000
python3 - "$N" > "$D/rand.cmds" <<'PY'
import sys
n, size = int(sys.argv[1]), 1 << 30
x = 42
for _ in range(n):
    x ^= (x << 13) & (2**64 - 1); x ^= x >> 7; x ^= (x << 17) & (2**64 - 1)
    print(f"write -P 0x5a {(x % (size // 4096)) * 4096} 4k")
PY
hf rand-4k-overwrite "-w -s 4K -c $N --random 42 --pattern 0x5a" \
  "sh -c 'qemu-io -t writeback $D/bm.qcow2 < $D/rand.cmds > /dev/null'"

# How many syncs tracking cost in each workload (one more run, untimed).
qemu-img bitmap --clear "$D/bm.qcow2" cbt
seq_syncs=$("$S" img bench -w -d 4 -s 1M -c 1024 "$D/bm.qcow2" | sed -n 's/^Bitmap syncs.*: //p')
qemu-img bitmap --clear "$D/bm.qcow2" cbt
rand_syncs=$("$S" img bench -w -s 4K -c $N --random 42 "$D/bm.qcow2" | sed -n 's/^Bitmap syncs.*: //p')
echo "bitmap syncs: sequential ${seq_syncs:-0}, random ${rand_syncs:-0}"
qemu-img check -q "$D/bm.qcow2"

python3 - "$D/json" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
print("| workload | strata | strata+bm | qemu+bm | tracking cost | qemu+bm/strata+bm |")
print("|---|---|---|---|---|---|")
for name in ["seq-overwrite", "rand-4k-overwrite"]:
    r = {x["command"]: statistics.median(x["times"])
         for x in json.load(open(os.path.join(d, name + ".json")))["results"]}
    s, b, q = r["strata"], r["strata+bm"], r["qemu+bm"]
    print(f"| {name} | {s:.3f} s | {b:.3f} s | {q:.3f} s | {b / s:.2f}x | {q / b:.2f}x |")
PY
