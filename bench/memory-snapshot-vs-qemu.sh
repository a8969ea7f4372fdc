#!/usr/bin/env bash
# A snapshot of a running machine with its memory (internal, as savevm
# keeps it), by strata and by QEMU on identical machines and images, as
# issue 17 asks:
#   - strata: `snapshot create` without --disk-only (the guest paused,
#     QEMU's migration stream saved, every disk snapshotted at that
#     instant, the stream stored as the first disk's VM state), and
#     `snapshot revert` to it (QEMU started again from the state);
#   - QEMU: its own qcow2 driver, QMP `snapshot-save` (the savevm job:
#     the guest paused while memory and disks are saved), and
#     `snapshot-load`.
#   - and live: strata's --live (a pre-copy migration into a file, the
#     disks snapshotted when QEMU pauses the guest for the last of it)
#     beside QEMU driven as libvirt does it (migrate to a file while the
#     guest runs, QEMU pausing it at the end; an internal disk snapshot;
#     cont).
# The guest (1 GiB of RAM, TCG) fills MEM_MIB of it with random data first,
# so the state is not mostly zero pages. Medians of REPEAT snapshots per
# side and mode: how long the guest was paused, and the whole command; then
# one revert per side.
#
# Usage: bench/memory-snapshot-vs-qemu.sh   Env: MEM_MIB (default 400),
# REPEAT (default 3), BENCH_DIR, STRATA_GUEST_KIT.
set -euo pipefail
cd "$(dirname "$0")/.."
MEM_MIB=${MEM_MIB:-400}
REPEAT=${REPEAT:-3}
. bench/guest-bench.sh
guest_bench memsnap qemu-system-x86_64 qemu-img python3
echo "workdir $D, the guest's RAM holding $MEM_MIB MiB of random data, $REPEAT snapshots per side"

cat >"$D/fill.sh" <<EOF
dd if=/dev/urandom of=/fill bs=1M count=$MEM_MIB 2>/dev/null
echo FILLED
while true; do sleep 1; done
EOF
STRATA_GUEST_KIT=$KIT scripts/guest-kit initrd "$D/fill.sh" "$D/initrd.gz" >/dev/null
qemu-img create -q -f qcow2 "$D/s.qcow2" 256M
cp "$D/s.qcow2" "$D/q.qcow2"
wait_filled() {
  for _ in $(seq 1200); do grep -q FILLED "$1" 2>/dev/null && return; sleep 0.1; done
  echo "the guest never filled its memory" >&2; exit 1
}
now() { date +%s.%N; }

cat >"$D/vm.xml" <<EOF
<domain type='qemu'><name>vm</name><memory unit='MiB'>1024</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>$KIT/vmlinuz</kernel>
<initrd>$D/initrd.gz</initrd><cmdline>console=ttyS0 panic=-1 quiet</cmdline></os>
<features><acpi/></features><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$D/s.qcow2'/><target dev='vda' bus='virtio'/></disk>
<serial type='file'><source path='$D/strata.console'/><target port='0'/></serial></devices></domain>
EOF
export STRATA_STATE_DIR=$D/state
"$S" domain define "$D/vm.xml" >/dev/null
"$S" -q domain start vm >/dev/null
wait_filled "$D/strata.console"
for i in $(seq "$REPEAT"); do
  for mode in paused live; do
    flag=; [ $mode = live ] && flag=--live
    t0=$(now)
    stall=$("$S" --output json snapshot create vm --name "$mode$i" $flag | python3 -c 'import json,sys; print(json.load(sys.stdin)["stall_us"] / 1e6)')
    t1=$(now)
    echo "$stall $(echo "$t1 - $t0" | bc -l)" >>"$D/strata-$mode.times"
  done
done
t0=$(now); "$S" -q snapshot revert vm paused1 >/dev/null; t1=$(now)
echo "$(echo "$t1 - $t0" | bc -l)" >"$D/strata.revert"
"$S" domain destroy vm >/dev/null
qemu-img snapshot -l "$D/s.qcow2" | tail -n +3 | awk '{print $3, $4}' | head -1 >"$D/strata.size"

qemu-system-x86_64 -accel tcg -nographic -no-reboot -nodefaults -no-user-config \
  -m 1024 -smp 1 -M q35 -serial "file:$D/qemu.console" -pidfile "$D/qemu.pid" \
  -qmp "unix:$D/qmp.sock,server=on,wait=off" \
  -kernel "$KIT/vmlinuz" -initrd "$D/initrd.gz" -append "console=ttyS0 panic=-1 quiet" \
  -blockdev "driver=file,node-name=f0,filename=$D/q.qcow2" \
  -blockdev "driver=qcow2,node-name=d0,file=f0" \
  -device "virtio-blk-pci,drive=d0" </dev/null >/dev/null 2>"$D/qemu.stderr" &
wait_filled "$D/qemu.console"
python3 - "$D" "$REPEAT" <<'PY'
import json, socket, sys, time
d, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX); s.connect(f"{d}/qmp.sock")
f = s.makefile("rw")
events = []
def cmd(c, **a):
    f.write(json.dumps({"execute": c, "arguments": a}) + "\n"); f.flush()
    while True:
        m = json.loads(f.readline())
        if "error" in m: sys.exit(f"{c}: {m['error']}")
        if "return" in m: return m["return"]
        events.append((time.time(), m))
def job(c, **a):
    cmd(c, **a)
    while True:
        jobs = [j for j in cmd("query-jobs") if j["id"] == a["job-id"]]
        if jobs and jobs[0]["status"] == "concluded":
            if "error" in jobs[0]: sys.exit(f"{c}: {jobs[0]['error']}")
            cmd("job-dismiss", id=a["job-id"])
            return
        time.sleep(0.01)
json.loads(f.readline()); cmd("qmp_capabilities")
def paused_for(t0, t1):
    # The guest was paused from STOP to RESUME.
    cmd("query-status")
    stops = [t for t, m in events if m.get("event") == "STOP"]
    resumes = [t for t, m in events if m.get("event") == "RESUME"]
    return (resumes[-1] - stops[0]) if stops and resumes else t1 - t0
cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
for i in range(1, n + 1):
    events.clear()
    t0 = time.time()
    job("snapshot-save", **{"job-id": f"save{i}", "tag": f"s{i}", "vmstate": "d0", "devices": ["d0"]})
    t1 = time.time()
    with open(f"{d}/qemu-paused.times", "a") as r:
        r.write(f"{paused_for(t0, t1)} {t1 - t0}\n")
    # libvirt's live way: the memory migrated into a file while the guest
    # runs (QEMU pauses it for the last of it), the disk snapshotted, cont.
    events.clear()
    t0 = time.time()
    cmd("migrate", uri=f"file:{d}/live{i}.mem")
    while True:
        st = cmd("query-migrate").get("status")
        if st == "completed": break
        if st in ("failed", "cancelled"): sys.exit(f"live save: {st}")
        time.sleep(0.01)
    # The migration left the images inactive: active again, as libvirt
    # makes them (QEMU 10's blockdev-set-active), then the snapshot.
    cmd("blockdev-set-active", active=True)
    cmd("blockdev-snapshot-internal-sync", device="d0", name=f"live{i}")
    cmd("cont")
    t1 = time.time()
    with open(f"{d}/qemu-live.times", "a") as r:
        r.write(f"{paused_for(t0, t1)} {t1 - t0}\n")
t0 = time.time()
job("snapshot-load", **{"job-id": "load", "tag": "s1", "vmstate": "d0", "devices": ["d0"]})
with open(f"{d}/qemu.revert", "w") as r:
    r.write(f"{time.time() - t0}\n")
cmd("quit")
PY
sleep 1
qemu-img snapshot -l "$D/q.qcow2" | tail -n +3 | awk '{print $3, $4}' | head -1 >"$D/qemu.size"

python3 - "$D" <<'PY'
import statistics, sys
d = sys.argv[1]
def med(side):
    t = [list(map(float, l.split())) for l in open(f"{d}/{side}.times")]
    return statistics.median(x[0] for x in t), statistics.median(x[1] for x in t)
print("| | guest paused s | snapshot s | revert s | VM SIZE |")
print("|---|---|---|---|---|")
rows = {}
for side, name, rev in (
        ("strata-paused", "strata, paused (its backend; QEMU's stream to a file, one transaction)", "strata"),
        ("qemu-paused", "QEMU, paused (its qcow2 driver; QMP snapshot-save, snapshot-load)", "qemu"),
        ("strata-live", "strata, --live (pre-copy into a file, disks at the switchover)", None),
        ("qemu-live", "QEMU, live as libvirt drives it (migrate to a file, internal disk snapshot, cont)", None)):
    p, t = med(side)
    rows[side] = (p, t)
    r = f"{float(open(f'{d}/{rev}.revert').read()):.2f}" if rev else "-"
    size = open(f"{d}/{rev}.size").read().strip() if rev else "-"
    print(f"| {name} | {p:.2f} | {t:.2f} | {r} | {size} |")
sr, qr = (float(open(f"{d}/{x}.revert").read()) for x in ("strata", "qemu"))
for mode in ("paused", "live"):
    s, q = rows[f"strata-{mode}"], rows[f"qemu-{mode}"]
    print(f"{mode}: strata/QEMU paused {s[0] / q[0]:.2f}x, snapshot {s[1] / q[1]:.2f}x (below 1: strata is faster)")
print(f"revert: strata/QEMU {sr / qr:.2f}x")
PY
