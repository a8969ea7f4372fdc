#!/usr/bin/env bash
# The stall of a live snapshot, as issue 15 asks: N (default 50) disk-only
# external snapshots of a running 4-disk domain whose guest runs fio (4 KiB
# random writes, iodepth 8, on all four disks), taken by strata and, on an
# identical machine whose disks QEMU's own qcow2 driver holds, by QEMU's
# QMP `transaction` of four `blockdev-snapshot-sync` (what libvirt sends;
# QEMU does not stop the guest, it drains every disk for the transaction).
#
# strata reports its stall itself: from the moment every disk stopped
# taking requests to the moment they took them again (`stall_us`). QEMU
# reports nothing: its figure is the QMP round trip of the transaction,
# which contains its drain-to-undrain stall plus the parsing and the
# answer, so it is an upper bound. For a like-for-like pair the table also
# gives strata's API round trip (the daemon's `answered ms=` of the POST,
# which contains its stall plus the metadata write). Median and maximum.
#
# Usage: bench/live-snapshot-stall.sh   Env: N (default 50), BENCH_DIR
# (default a new dir under /var/tmp, removed at the end), STRATA_GUEST_KIT.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-50}
. bench/guest-bench.sh
guest_bench stall qemu-system-x86_64 qemu-img python3
echo "workdir $D, $N snapshots each, 4 disks under fio"

cat >"$D/fio.sh" <<'EOF'
echo FIO-STARTING
fio --name=load --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=8 \
  --time_based --runtime=100000 --size=200M \
  --filename=/dev/vda:/dev/vdb:/dev/vdc:/dev/vdd >/dev/null 2>&1
EOF
STRATA_GUEST_KIT=$KIT scripts/guest-kit initrd "$D/fio.sh" "$D/initrd.gz" >/dev/null
for side in s q; do
  for d in a b c d; do qemu-img create -q -f qcow2 "$D/$side$d.qcow2" 256M; done
done

# strata: a domain, live snapshots through the CLI.
disks=""
for d in a b c d; do
  disks+="<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$D/s$d.qcow2'/><target dev='vd$d' bus='virtio'/></disk>"
done
cat >"$D/vm.xml" <<EOF
<domain type='qemu'><name>vm</name><memory unit='MiB'>512</memory><vcpu>2</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>$KIT/vmlinuz</kernel>
<initrd>$D/initrd.gz</initrd><cmdline>console=ttyS0 panic=-1 quiet</cmdline></os>
<features><acpi/></features><devices>$disks
<serial type='file'><source path='$D/strata.console'/><target port='0'/></serial></devices></domain>
EOF
export STRATA_STATE_DIR=$D/state
"$S" domain define "$D/vm.xml" >/dev/null
"$S" -q domain start vm >/dev/null
for _ in $(seq 600); do grep -q FIO-STARTING "$D/strata.console" 2>/dev/null && break; sleep 0.1; done
sleep 3
for i in $(seq "$N"); do
  "$S" --output json snapshot create vm --disk-only --name "s$i" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["stall_us"])' >>"$D/strata.stall"
  sleep 0.2
done
grep 'path=/v1/domains/vm/snapshots}: answered status=200' "$D/state/daemon.log" |
  sed 's/.* ms=//' >"$D/strata.api"
"$S" domain destroy vm >/dev/null

# QEMU: its own qcow2 driver, a QMP transaction per snapshot.
args=()
for d in a b c d; do
  args+=(-blockdev "driver=file,node-name=f$d,filename=$D/q$d.qcow2"
         -blockdev "driver=qcow2,node-name=d$d,file=f$d"
         -device "virtio-blk-pci,drive=d$d")
done
qemu-system-x86_64 -accel tcg -nographic -no-reboot -nodefaults -no-user-config \
  -m 512 -smp 2 -serial "file:$D/qemu.console" -pidfile "$D/qemu.pid" \
  -qmp "unix:$D/qmp.sock,server=on,wait=off" \
  -kernel "$KIT/vmlinuz" -initrd "$D/initrd.gz" -append "console=ttyS0 panic=-1 quiet" \
  "${args[@]}" </dev/null >/dev/null 2>"$D/qemu.stderr" &
for _ in $(seq 600); do grep -q FIO-STARTING "$D/qemu.console" 2>/dev/null && break; sleep 0.1; done
sleep 3
python3 - "$D" "$N" >"$D/qemu.rtt" <<'PY'
import json, socket, sys, time
d, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX); s.connect(f"{d}/qmp.sock")
f = s.makefile("rw")
def cmd(c, **a):
    f.write(json.dumps({"execute": c, "arguments": a}) + "\n"); f.flush()
    while True:
        m = json.loads(f.readline())
        if "return" in m or "error" in m: return m
json.loads(f.readline()); cmd("qmp_capabilities")
for i in range(1, n + 1):
    acts = [{"type": "blockdev-snapshot-sync",
             "data": {"node-name": f"d{x}" if i == 1 else f"o{x}{i-1}",
                      "snapshot-file": f"{d}/q{x}.s{i}", "snapshot-node-name": f"o{x}{i}",
                      "format": "qcow2"}} for x in "abcd"]
    t = time.perf_counter(); r = cmd("transaction", actions=acts); us = (time.perf_counter() - t) * 1e6
    if "error" in r: sys.exit(f"transaction {i}: {r['error']}")
    print(int(us)); time.sleep(0.2)
cmd("quit")
PY

python3 - "$D" <<'PY'
import statistics, sys
d = sys.argv[1]
def load(name, scale=1.0):
    return [float(x) * scale for x in open(f"{d}/{name}").read().split()]
rows = [("strata: guest stall (µs)", load("strata.stall")),
        ("strata: API round trip (µs)", load("strata.api", 1000.0)),
        ("QEMU: QMP transaction round trip (µs)", load("qemu.rtt"))]
print("| | median | max | n |")
print("|---|---|---|---|")
for name, v in rows:
    print(f"| {name} | {statistics.median(v):,.0f} | {max(v):,.0f} | {len(v)} |")
PY
