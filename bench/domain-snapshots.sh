#!/usr/bin/env bash
# Machine-level snapshot speed (issue 5): snapshot list, list --tree and
# dumpxml on a domain with 1,000 snapshots (target: under 50 ms each), and
# snapshot create of a domain with 8 disks beside eight single-disk internal
# snapshots by qemu-img (target: within 2x). Medians of RUNS runs (hyperfine).
# Usage: bench/domain-snapshots.sh   Env: RUNS (default 9), BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-9}
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
cargo build --release -q -p strata-cli
S=$PWD/target/release/strata
if [ -n "${BENCH_DIR:-}" ]; then
  D=$BENCH_DIR; mkdir -p "$D"   # the caller's folder: leave it in place
else
  D=$(mktemp -d /var/tmp/strata-dom.XXXXXX)
  trap 'rm -rf "$D"' EXIT
fi
echo "workdir $D, $RUNS runs each"

# 1. A domain with one disk and 1,000 internal snapshots.
qemu-img create -q -f qcow2 "$D/big.qcow2" 1G
qemu-io -c "write -P 1 0 64M" "$D/big.qcow2" >/dev/null
cat > "$D/big.xml" <<XML
<domain><name>big</name><devices><disk type='file' device='disk'><driver type='qcow2'/>
<source file='$D/big.qcow2'/><target dev='vda'/></disk></devices></domain>
XML
st=(--state-dir "$D/state")
"$S" "${st[@]}" domain define "$D/big.xml" >/dev/null
for i in $(seq 1000); do "$S" "${st[@]}" -q snapshot create big --name "s$i"; done
hyperfine -N -r "$RUNS" -w 1 --style none --export-json "$D/list.json" \
  -n list "$S ${st[*]} snapshot list big" \
  -n tree "$S ${st[*]} snapshot list big --tree" \
  -n dumpxml "$S ${st[*]} snapshot dumpxml big s500" >/dev/null

# 2. A domain with 8 disks: one snapshot of all of them, against eight
#    `qemu-img snapshot -c` runs (one per disk) on a copy of the same disks.
xml="<domain><name>eight</name><devices>"
for i in $(seq 0 7); do
  qemu-img create -q -f qcow2 "$D/d$i.qcow2" 1G
  qemu-io -c "write -P $i 0 256M" "$D/d$i.qcow2" >/dev/null
  cp "$D/d$i.qcow2" "$D/q$i.qcow2"
  xml+="<disk type='file' device='disk'><driver type='qcow2'/><source file='$D/d$i.qcow2'/><target dev='vd$i'/></disk>"
done
echo "$xml</devices></domain>" > "$D/eight.xml"
"$S" "${st[@]}" domain define "$D/eight.xml" >/dev/null
# Both sides run under sh, with a fresh name from the clock each time.
qemu_all="sh -c 'for i in 0 1 2 3 4 5 6 7; do qemu-img snapshot -c \"x\$(date +%s%N)\" $D/q\$i.qcow2; done'"
hyperfine -N -r "$RUNS" -w 1 --style none --export-json "$D/create.json" \
  -n strata "sh -c '$S ${st[*]} -q snapshot create eight --name \"x\$(date +%s%N)\"'" \
  -n qemu "$qemu_all" >/dev/null

python3 - "$D" <<'PY'
import json, statistics, sys, os
d = sys.argv[1]
r = {x["command"]: statistics.median(x["times"]) for x in json.load(open(os.path.join(d, "list.json")))["results"]}
print("| 1,000 snapshots | strata (median) | target |")
print("|---|---|---|")
for k in ["list", "tree", "dumpxml"]:
    print(f"| snapshot {k} | {r[k] * 1000:.1f} ms | < 50 ms |")
p = os.path.join(d, "create.json")
if os.path.exists(p):
    c = {x["command"]: statistics.median(x["times"]) for x in json.load(open(p))["results"]}
    print()
    print("| 8-disk snapshot | strata | 8 x qemu-img snapshot -c | strata / qemu |")
    print("|---|---|---|---|")
    print(f"| create | {c['strata'] * 1000:.1f} ms | {c['qemu'] * 1000:.1f} ms | {c['strata'] / c['qemu']:.2f}x |")
PY
