#!/usr/bin/env bash
# strata's vhost-user-blk backend vs QEMU's own qcow2 driver vs
# qemu-storage-daemon's vhost-user-blk export, as issue 14 asks: fio in one
# guest (the guest kit's, under TCG: this machine has no nested KVM) on
# three copies of one allocated qcow2, each attached one way:
#   strata  vhost-user-blk-pci <- crates/strata-vhost/examples/serve
#   qemu    virtio-blk-pci over -blockdev qcow2 (QEMU's defaults: writeback
#           cache, thread-pool AIO, no iothread)
#   qsd     vhost-user-blk-pci <- qemu-storage-daemon --export vhost-user-blk
# All three with two queues (the guest has two vCPUs), 256-entry rings.
# Workloads (fio, libaio, direct): 4 KiB random read and random write at
# iodepth 32 (IOPS), 1 MiB sequential read and write at iodepth 8 (MiB/s). Rounds
# are interleaved (each round runs every workload on every disk, the disk
# order rotated each round) after a warm-up round; the table gives medians
# and the ratios strata/qemu and strata/qsd (above 1: strata is faster).
# The host samples the backends' CPU time (/proc/PID/stat) around each run
# and reports CPU seconds per GiB moved (fio's bytes scaled to its 1 s
# ramp), for strata and qemu-storage-daemon
# (QEMU's own driver runs inside the emulator's process: not separable).
# The guest's vCPUs and the backends share this machine's cores, so a
# backend's CPU cost shows in every column.
#
# Usage: bench/vhost-vs-qemu.sh   Env: RUNS (default 5), FIO_SECS (default
# 5), SIZE_MIB (default 1024, the image), JOBS (fio jobs per run, default 1),
# IO_THREADS (strata's per queue, default 4), BENCH_DIR (default a new dir
# under /var/tmp, removed at the end), STRATA_GUEST_KIT (the kit's dir).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SECS=${FIO_SECS:-5}
MIB=${SIZE_MIB:-1024}
JOBS=${JOBS:-1}
IO_THREADS=${IO_THREADS:-4}
for t in qemu-system-x86_64 qemu-storage-daemon qemu-img python3; do
  command -v $t >/dev/null || { echo "$t is missing (scripts/peers installs it)" >&2; exit 1; }
done
scripts/guest-kit build >/dev/null
KIT=${STRATA_GUEST_KIT:-$PWD/target/guest-kit}
cargo build --release -q -p strata-vhost --example serve
SERVE=$PWD/target/release/examples/serve
if [ -n "${BENCH_DIR:-}" ]; then D=$BENCH_DIR; mkdir -p "$D"; else
  D=$(mktemp -d /var/tmp/strata-vhost.XXXXXX); fi
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  [ -n "${BENCH_DIR:-}" ] || rm -rf "$D"; }
trap cleanup EXIT
echo "workdir $D, $RUNS rounds (+1 warm-up), fio ${SECS} s, ${MIB} MiB images, $JOBS job(s)"

# Three copies of one fully allocated template (files written alike sit
# alike in the page cache).
qemu-img create -q -f qcow2 "$D/t.qcow2" "${MIB}M"
qemu-io -c "write -P 0x33 0 ${MIB}M" "$D/t.qcow2" >/dev/null
for b in strata qemu qsd; do cp "$D/t.qcow2" "$D/$b.qcow2"; done; rm "$D/t.qcow2"

wait_sock() { for _ in $(seq 1000); do [ -S "$1" ] && return; sleep 0.01; done; echo "no $1" >&2; exit 1; }
"$SERVE" "$D/strata.qcow2" "$D/strata.sock" --queues 2 --io-threads "$IO_THREADS" --serial strata >/dev/null &
pids+=($!); echo "$!" > "$D/strata.pid"
qemu-storage-daemon \
  --blockdev "driver=file,node-name=f,filename=$D/qsd.qcow2" \
  --blockdev driver=qcow2,node-name=d,file=f \
  --export "type=vhost-user-blk,id=e,node-name=d,writable=on,num-queues=2,addr.type=unix,addr.path=$D/qsd.sock" &
pids+=($!); echo "$!" > "$D/qsd.pid"
wait_sock "$D/strata.sock"; wait_sock "$D/qsd.sock"

# The guest's workload: every round, every workload, every disk (found by
# its serial), the order rotated; BEGIN/END lines let the host sample CPU.
python3 - "$RUNS" "$SECS" "$JOBS" >"$D/workload" <<'PY'
import sys
runs, secs, jobs = (int(a) for a in sys.argv[1:])
print("""set -e
for d in /sys/block/vd*; do
  case "$(cat $d/serial)" in strata) DEV_strata=/dev/${d##*/};; qemu-blk) DEV_qemu=/dev/${d##*/};; *) DEV_qsd=/dev/${d##*/};; esac
done
echo "disks strata=$DEV_strata qemu=$DEV_qemu qsd=$DEV_qsd"
run() { # round workload backend fio-args...
  r=$1 w=$2 b=$3; shift 3; eval dev=\\$DEV_$b
  echo "BEGIN $r $w $b"
  out=$(fio --name=b --filename=$dev --ioengine=libaio --direct=1 --time_based \
    --runtime=SECS --ramp_time=1 --numjobs=JOBS --group_reporting --output-format=terse --terse-version=3 "$@")
  echo "END $r $w $b"
  echo "RES $r $w $b $out"
}""".replace("SECS", str(secs)).replace("JOBS", str(jobs)))
backends = ["strata", "qemu", "qsd"]
loads = {"randread": "--rw=randread --bs=4k --iodepth=32",
         "randwrite": "--rw=randwrite --bs=4k --iodepth=32",
         "seqread": "--rw=read --bs=1M --iodepth=8",
         "seqwrite": "--rw=write --bs=1M --iodepth=8"}
for r in range(runs + 1):
    for w, args in loads.items():
        order = backends[r % 3:] + backends[:r % 3]
        for b in order:
            print(f"run {r} {w} {b} {args}")
PY

python3 - "$D" "$KIT" "$SECS" <<'PY'
import os, statistics, subprocess, sys, time
D, kit, secs = sys.argv[1:]
# fio counts bytes after its 1 s ramp; CPU is sampled around the whole run.
ramp = (int(secs) + 1) / int(secs)
initrd = f"{D}/initrd.gz"
subprocess.run(["scripts/guest-kit", "initrd", f"{D}/workload", initrd], check=True,
               env=dict(os.environ, STRATA_GUEST_KIT=kit))
pid = {b: int(open(f"{D}/{b}.pid").read()) for b in ("strata", "qsd")}
tick = os.sysconf("SC_CLK_TCK")
def cpu(b):
    if b not in pid: return None
    f = open(f"/proc/{pid[b]}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
console = f"{D}/console.log"
qemu = subprocess.Popen([
    "qemu-system-x86_64", "-accel", "tcg", "-nographic", "-no-reboot", "-nodefaults",
    "-no-user-config", "-monitor", "none", "-serial", f"file:{console}",
    "-m", "512", "-smp", "2",
    "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem",
    "-kernel", f"{kit}/vmlinuz", "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet",
    "-chardev", f"socket,id=c0,path={D}/strata.sock",
    "-device", "vhost-user-blk-pci,chardev=c0,num-queues=2,queue-size=256",
    "-blockdev", f"driver=file,node-name=f1,filename={D}/qemu.qcow2",
    "-blockdev", "driver=qcow2,file=f1,node-name=d1",
    "-device", "virtio-blk-pci,drive=d1,num-queues=2,serial=qemu-blk",
    "-chardev", f"socket,id=c2,path={D}/qsd.sock",
    "-device", "vhost-user-blk-pci,chardev=c2,num-queues=2,queue-size=256",
], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(f"{D}/qemu.stderr", "w"))
seen, begun, results = 0, {}, []
deadline = time.time() + 3600
while True:
    text = open(console, errors="replace").read() if os.path.exists(console) else ""
    lines = text.replace("\r", "").split("\n")
    done = qemu.poll() is not None
    for line in lines[seen:len(lines) - (0 if done else 1)]:
        f = line.split()
        if f[:1] == ["BEGIN"]:
            begun[tuple(f[1:4])] = cpu(f[3])
        elif f[:1] == ["END"]:
            k = tuple(f[1:4]); c = cpu(f[3])
            begun[k] = None if c is None else c - begun[k]
        elif f[:1] == ["RES"] and len(f) > 4:
            t = f[4].split(";")
            r, w, b = f[1:4]
            kib = int(t[5]) + int(t[46])
            iops = float(t[7]) + float(t[48])
            mibs = (int(t[6]) + int(t[47])) / 1024
            results.append((int(r), w, b, iops, mibs, kib, begun.get((r, w, b))))
        elif "disks " in line or "STRATA-GUEST-EXIT" in line or "rror" in line:
            print(line.strip(), flush=True)
    seen = len(lines) - (0 if done else 1)
    if done: break
    if time.time() > deadline: qemu.kill(); sys.exit("guest timed out")
    time.sleep(0.02)
if "STRATA-GUEST-EXIT=0" not in text: sys.exit("the guest workload failed; see " + console)
rows = [x for x in results if x[0] > 0]  # round 0 is the warm-up
def med(w, b, k): return statistics.median(x[k] for x in rows if x[1] == w and x[2] == b)
names = {"randread": ("fio 4 KiB randread qd32 (IOPS)", 3), "randwrite": ("fio 4 KiB randwrite qd32 (IOPS)", 3),
         "seqread": ("fio 1 MiB seq read qd8 (MiB/s)", 4), "seqwrite": ("fio 1 MiB seq write qd8 (MiB/s)", 4)}
print(f"\nmedians of {len(rows) // (3 * len(names))} rounds")
print("| workload | strata vhost-user-blk | QEMU qcow2 virtio-blk | qemu-storage-daemon vhost-user-blk | strata/qemu | strata/qsd |")
print("|---|---|---|---|---|---|")
for w, (name, k) in names.items():
    s, q, d = med(w, "strata", k), med(w, "qemu", k), med(w, "qsd", k)
    print(f"| {name} | {s:,.0f} | {q:,.0f} | {d:,.0f} | {s/q:.2f}x | {s/d:.2f}x |")
print("\nbackend CPU seconds per GiB moved (median over rounds)")
print("| workload | strata | qemu-storage-daemon |")
print("|---|---|---|")
for w, (name, _) in names.items():
    per = {b: statistics.median(x[6] / (x[5] * ramp / 2**20) for x in rows if x[1] == w and x[2] == b and x[5])
           for b in ("strata", "qsd")}
    print(f"| {name.split(' (')[0]} | {per['strata']:.3f} | {per['qsd']:.3f} |")
PY
