#!/usr/bin/env bash
# A full pull backup of a running guest's disk, as issue 16 asks, by strata
# and by QEMU on an identical machine, on identical images:
#   - strata: `backup begin` in pull mode (a copy-before-write view served
#     over NBD by the daemon that serves the disk);
#   - QEMU: its own qcow2 driver, the fleecing libvirt sets up for a pull
#     backup, driven over QMP: a scratch qcow2 over the disk node,
#     `blockdev-backup sync=none` into it, the scratch exported by QEMU's
#     NBD server (`block-export-add`).
# The guest runs fio all along (4 KiB random writes, iodepth 8, 2 s rounds
# that each print their IOPS). Each side takes REPEAT (default 2) pairs of
# backups, medians reported:
#   - a fast one: nbdcopy reads the whole disk from the export to null:
#     (the pull throughput; `backup begin`'s round trip, and QEMU's QMP
#     set-up, are timed apart);
#   - a slow one: a libnbd reader takes the disk at RATE MiB/s (default 64,
#     a backup target slower than the disk, as most are), during which the
#     guest's IOPS against before it is the copy-before-write cost the guest
#     sees, and the scratch's allocated size when the read ends is what a
#     steady guest write load costs in scratch.
#
# Usage: bench/live-backup-vs-qemu.sh   Env: DISK_MIB (default 1024),
# REPEAT, RATE, BENCH_DIR (default a new dir under /var/tmp, removed at the
# end), STRATA_GUEST_KIT.
set -euo pipefail
cd "$(dirname "$0")/.."
DISK_MIB=${DISK_MIB:-1024}
REPEAT=${REPEAT:-2}
RATE=${RATE:-64}
. bench/guest-bench.sh
guest_bench backup qemu-system-x86_64 qemu-img nbdcopy python3
echo "workdir $D, a $DISK_MIB MiB disk full of data, $REPEAT backups per side"

cat >"$D/fio.sh" <<'EOF'
echo FIO-STARTING
while true; do
  fio --name=w --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=8 \
    --time_based --runtime=2 --size=100% --filename=/dev/vda 2>/dev/null |
    grep -o 'IOPS=[0-9.k]*' | head -1
done
EOF
STRATA_GUEST_KIT=$KIT scripts/guest-kit initrd "$D/fio.sh" "$D/initrd.gz" >/dev/null
head -c $((DISK_MIB << 20)) /dev/urandom >"$D/data.raw"
qemu-img convert -f raw -O qcow2 "$D/data.raw" "$D/s.qcow2"
cp "$D/s.qcow2" "$D/q.qcow2"
rm "$D/data.raw"

# The slow reader: the whole export at RATE MiB/s, 4 MiB at a time.
cat >"$D/reader.py" <<'EOF'
import nbd, sys, time
uri, rate = sys.argv[1], float(sys.argv[2])
h = nbd.NBD()
h.connect_uri(uri)
size, chunk, t0 = h.get_size(), 4 << 20, time.time()
for off in range(0, size, chunk):
    h.pread(min(chunk, size - off), off)
    ahead = (off + chunk) / (rate * 2**20) - (time.time() - t0)
    if ahead > 0:
        time.sleep(ahead)
EOF

# Waits for the guest's fio to run, then a few rounds more.
wait_fio() {
  for _ in $(seq 900); do grep -q FIO-STARTING "$1" 2>/dev/null && break; sleep 0.1; done
  sleep 8
}
# Appends "MARK begin|end" to the result file with the console's line count.
mark() { echo "$1 $(wc -l <"$2")" >>"$3"; }

# strata: a domain; each backup a pull backup read by nbdcopy, then aborted.
cat >"$D/vm.xml" <<EOF
<domain type='qemu'><name>vm</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>$KIT/vmlinuz</kernel>
<initrd>$D/initrd.gz</initrd><cmdline>console=ttyS0 panic=-1 quiet</cmdline></os>
<features><acpi/></features><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$D/s.qcow2'/><target dev='vda' bus='virtio'/></disk>
<serial type='file'><source path='$D/strata.console'/><target port='0'/></serial></devices></domain>
EOF
cat >"$D/b.xml" <<EOF
<domainbackup mode='pull'><server transport='unix' socket='$D/s.sock'/>
<disks><disk name='vda' type='file'/></disks></domainbackup>
EOF
export STRATA_STATE_DIR=$D/state
"$S" domain define "$D/vm.xml" >/dev/null
"$S" -q domain start vm >/dev/null
wait_fio "$D/strata.console"
now() { date +%s.%N; }
for i in $(seq "$REPEAT"); do
  t0=$(now); "$S" -q backup begin vm --backupxml "$D/b.xml" >/dev/null; t1=$(now)
  nbdcopy "nbd+unix:///vda?socket=$D/s.sock" null:; t2=$(now)
  echo "$t0 $t1 $t2" >>"$D/strata.fast"
  "$S" -q backup abort vm >/dev/null
  sleep 4
  "$S" -q backup begin vm --backupxml "$D/b.xml" >/dev/null
  mark begin "$D/strata.console" "$D/strata.marks"
  /usr/bin/python3 "$D/reader.py" "nbd+unix:///vda?socket=$D/s.sock" "$RATE"
  mark end "$D/strata.console" "$D/strata.marks"
  stat -c %b "$D/state/scratch/vm.vda.qcow2" | awk '{print $1 * 512}' >>"$D/strata.scratch"
  "$S" -q backup abort vm >/dev/null
  sleep 6
done
"$S" domain destroy vm >/dev/null

# QEMU: its own qcow2 driver and its fleecing, over QMP.
qemu-system-x86_64 -accel tcg -nographic -no-reboot -nodefaults -no-user-config \
  -m 512 -smp 1 -serial "file:$D/qemu.console" -pidfile "$D/qemu.pid" \
  -qmp "unix:$D/qmp.sock,server=on,wait=off" \
  -kernel "$KIT/vmlinuz" -initrd "$D/initrd.gz" -append "console=ttyS0 panic=-1 quiet" \
  -blockdev "driver=file,node-name=f0,filename=$D/q.qcow2" \
  -blockdev "driver=qcow2,node-name=d0,file=f0" \
  -device "virtio-blk-pci,drive=d0" </dev/null >/dev/null 2>"$D/qemu.stderr" &
wait_fio "$D/qemu.console"
python3 - "$D" "$REPEAT" "$DISK_MIB" "$RATE" <<'PY'
import json, os, socket, subprocess, sys, time
d, n, mib, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_UNIX); s.connect(f"{d}/qmp.sock")
f = s.makefile("rw")
def cmd(c, **a):
    f.write(json.dumps({"execute": c, "arguments": a}) + "\n"); f.flush()
    while True:
        m = json.loads(f.readline())
        if "error" in m: sys.exit(f"{c}: {m['error']}")
        if "return" in m: return m["return"]
def lines():
    return sum(1 for _ in open(f"{d}/qemu.console", errors="replace"))
json.loads(f.readline()); cmd("qmp_capabilities")
cmd("nbd-server-start", addr={"type": "unix", "data": {"path": f"{d}/q.sock"}})
scratch = f"{d}/q.scratch.qcow2"
uri = f"nbd+unix:///vda?socket={d}/q.sock"
def begin():
    # As libvirt: a scratch over the disk, the backup job filling it, the
    # scratch exported.
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", scratch, f"{mib}M"], check=True)
    cmd("blockdev-add", driver="qcow2", **{"node-name": "fleece"},
        file={"driver": "file", "filename": scratch}, backing="d0")
    cmd("transaction", actions=[{"type": "blockdev-backup", "data": {
        "device": "d0", "target": "fleece", "sync": "none", "job-id": "fleecing"}}])
    cmd("block-export-add", type="nbd", id="e0", **{"node-name": "fleece"}, name="vda",
        writable=False)
def end():
    cmd("block-export-del", id="e0")
    cmd("block-job-cancel", device="fleecing")
    while cmd("query-block-jobs"):
        time.sleep(0.1)
    while any(e.get("id") == "e0" for e in cmd("query-block-exports")):
        time.sleep(0.1)
    cmd("blockdev-del", **{"node-name": "fleece"})
    os.unlink(scratch)
for i in range(n):
    t0 = time.time(); begin(); t1 = time.time()
    subprocess.run(["nbdcopy", uri, "null:"], check=True)
    t2 = time.time()
    with open(f"{d}/qemu.fast", "a") as r:
        r.write(f"{t0} {t1} {t2}\n")
    end()
    time.sleep(4)
    begin()
    with open(f"{d}/qemu.marks", "a") as m:
        m.write(f"begin {lines()}\n")
    subprocess.run(["/usr/bin/python3", f"{d}/reader.py", uri, rate], check=True)
    with open(f"{d}/qemu.marks", "a") as m:
        m.write(f"end {lines()}\n")
    with open(f"{d}/qemu.scratch", "a") as r:
        r.write(f"{os.stat(scratch).st_blocks * 512}\n")
    end()
    time.sleep(6)
cmd("quit")
PY

python3 - "$D" "$DISK_MIB" <<'PY'
import statistics, sys
d, mib = sys.argv[1], int(sys.argv[2])
def iops(side):
    lines = open(f"{d}/{side}.console", errors="replace").read().splitlines()
    def val(l):
        v = l.strip().removeprefix("IOPS=")
        return float(v[:-1]) * 1000 if v.endswith("k") else float(v)
    marks = [l.split() for l in open(f"{d}/{side}.marks")]
    before, during = [], []
    for (b, nb), (e, ne) in zip(marks[0::2], marks[1::2]):
        nb, ne = int(nb), int(ne)
        # Rounds wholly before the backup, and wholly inside it (the first
        # one after the begin may straddle it).
        before += [val(l) for l in lines[max(0, nb - 3):nb] if l.startswith("IOPS=")]
        during += [val(l) for l in lines[nb + 1:ne] if l.startswith("IOPS=")]
    return statistics.median(before), (statistics.median(during) if during else float("nan"))
rows = []
for side, name in (("strata", "strata (CBW view, its NBD server)"),
                   ("qemu", "QEMU (blockdev-backup sync=none fleecing, its NBD server)")):
    fast = [list(map(float, l.split())) for l in open(f"{d}/{side}.fast")]
    setup = statistics.median(t1 - t0 for t0, t1, _ in fast) * 1000
    tput = mib / statistics.median(t2 - t1 for _, t1, t2 in fast)
    scratch = statistics.median(float(l) for l in open(f"{d}/{side}.scratch")) / 2**20
    b, du = iops(side)
    rows.append((name, tput, setup, b, du, scratch))
print("| | nbdcopy read MiB/s | begin ms | guest IOPS before | during a slow read | ratio | scratch MiB after it |")
print("|---|---|---|---|---|---|---|")
for name, tput, setup, b, du, sc in rows:
    print(f"| {name} | {tput:,.0f} | {setup:,.0f} | {b:,.0f} | {du:,.0f} | {du / b:.2f} | {sc:,.1f} |")
s, q = rows
print(f"\nstrata/QEMU: read throughput {s[1] / q[1]:.2f}x, guest IOPS during the read {s[4] / q[4]:.2f}x "
      f"(of their own before: {s[4] / s[3]:.2f} vs {q[4] / q[3]:.2f}), scratch {s[5] / max(q[5], 0.01):.2f}x")
PY
