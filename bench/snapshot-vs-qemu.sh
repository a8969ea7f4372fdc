#!/usr/bin/env bash
# strata vs qemu-img on internal snapshots, side by side on identical files:
# create, apply and delete on images with 2 GiB and 8 GiB allocated, and
# `snapshot list` of an image with 1,000 snapshots. hyperfine runs each RUNS
# times after a warm-up, with the file put back in the right state before
# every run (untimed); the table gives medians and qemu/strata (above 1:
# strata is faster). Usage: bench/snapshot-vs-qemu.sh
# Env: RUNS (default 5), BENCH_DIR (default a new dir under /var/tmp),
#      SIZES_GIB (default "2 8").
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SIZES=${SIZES_GIB:-2 8}
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
cargo build --release -q -p strata-cli
S=$PWD/target/release/strata
D=${BENCH_DIR:-$(mktemp -d /var/tmp/strata-snapbench.XXXXXX)}
mkdir -p "$D/json"
trap 'rm -f "$D"/*.qcow2' EXIT

hf() { # name, strata prepare, strata command, qemu prepare, qemu command
  hyperfine -N -r "$RUNS" -w 1 --style none \
    --prepare "sh -c '$2; sync'" -n strata "$3" \
    --prepare "sh -c '$4; sync'" -n qemu "$5" \
    --export-json "$D/json/$1.json" >/dev/null
}

echo "workdir $D, $RUNS runs each"
for g in $SIZES; do
  a=$D/a$g.qcow2 b=$D/b$g.qcow2
  qemu-img create -q -f qcow2 "$a" "${g}G"
  qemu-img bench -w -t writeback -s 1M -c $((g * 1024)) --pattern=0x5a "$a" >/dev/null
  cp --sparse=always "$a" "$b"
  sync
  # Each tool's file has no snapshot s1 before create, has one before delete.
  hf "create-${g}g" "qemu-img snapshot -d s1 $a 2>/dev/null || true" "$S img snapshot create $a s1" \
    "qemu-img snapshot -d s1 $b 2>/dev/null || true" "qemu-img snapshot -c s1 $b"
  hf "delete-${g}g" "qemu-img snapshot -c s1 $a 2>/dev/null || true" "$S img snapshot delete $a s1" \
    "qemu-img snapshot -c s1 $b 2>/dev/null || true" "qemu-img snapshot -d s1 $b"
  # Apply: s1 exists; new data after it makes the old active state differ.
  qemu-img snapshot -c s1 "$a"; qemu-img snapshot -c s1 "$b"
  hf "apply-${g}g" "qemu-io -t writeback -c \"write -P 1 0 64M\" $a >/dev/null" "$S img snapshot apply $a s1" \
    "qemu-io -t writeback -c \"write -P 1 0 64M\" $b >/dev/null" "qemu-img snapshot -a s1 $b"
  rm -f "$a" "$b"
done

# snapshot list with 1,000 snapshots (made once, by qemu-img).
l=$D/list.qcow2
qemu-img create -q -f qcow2 "$l" 64M
qemu-io -c "write -P 3 0 8M" "$l" >/dev/null
python3 - "$l" <<'PY'
import subprocess, sys
path = sys.argv[1]
for i in range(1000):
    subprocess.run(["qemu-img", "snapshot", "-c", f"snap{i:04d}", path], check=True)
PY
hf list-1000 "true" "$S img snapshot list $l" "true" "qemu-img snapshot -l $l"

python3 - "$D/json" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
names = sorted(os.listdir(d), key=lambda n: (n.split("-")[0] != "create", n))
print("| workload | strata (median s) | qemu (median s) | qemu/strata |")
print("|---|---|---|---|")
for n in names:
    r = {x["command"]: statistics.median(x["times"]) for x in json.load(open(os.path.join(d, n)))["results"]}
    print(f"| {n[:-5]} | {r['strata']:.4f} | {r['qemu']:.4f} | {r['qemu'] / r['strata']:.2f}x |")
PY
