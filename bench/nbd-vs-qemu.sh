#!/usr/bin/env bash
# strata nbd serve vs qemu-nbd serving the same qcow2 files, the same
# clients and settings, as issue 6 asks: nbdcopy of an allocated image to
# null; fio (ioengine=nbd) 4 KiB random reads and writes at iodepth 32;
# 1 MiB sequential writes. Both servers run with --shared 8 (multi-conn for
# nbdcopy; SHARED=1 gives both their default of one client at a time, with
# no multi-conn), writeback caching (qemu-nbd --cache=writeback), persistent.
#
# Rounds are interleaved (each round runs strata then qemu-nbd, the order
# swapped every other round) so noise on this shared machine hits both; the
# table gives medians over RUNS rounds after a warm-up round, and the ratio
# strata/qemu of throughput (above 1: strata is faster).
# Usage: bench/nbd-vs-qemu.sh   Env: RUNS (default 5), SIZE_GIB (default 8,
# the nbdcopy image; fio uses a 1 GiB image), FIO_SECS (default 5),
# BENCH_DIR (default a new dir under /var/tmp, removed at the end),
# WORKLOADS (default "copy randread randwrite seqwrite"), SHARED (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
GIB=${SIZE_GIB:-8}
SECS=${FIO_SECS:-5}
SHARED=${SHARED:-8}
for t in fio nbdcopy qemu-nbd python3; do
  command -v $t >/dev/null || { apt-get update -qq && apt-get install -y -qq fio libnbd-bin qemu-utils python3 >/dev/null; }
done
cargo build --release -q -p strata-cli
S=$PWD/target/release/strata
if [ -n "${BENCH_DIR:-}" ]; then D=$BENCH_DIR; mkdir -p "$D"; else
  D=$(mktemp -d /var/tmp/strata-nbd.XXXXXX); fi
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  [ -n "${BENCH_DIR:-}" ] || rm -rf "$D"; }
trap cleanup EXIT
echo "workdir $D, $RUNS rounds, nbdcopy image ${GIB} GiB, fio ${SECS} s"

# Images: a fully allocated one for nbdcopy (read-only, both servers share
# it), and two identical 1 GiB allocated ones for fio (one per server).
qemu-img create -q -f qcow2 "$D/big.qcow2" "${GIB}G"
w=(); for g in $(seq 0 $((GIB - 1))); do w+=(-c "write -P 0x5a ${g}G 1G"); done
qemu-io "${w[@]}" "$D/big.qcow2" >/dev/null
# Both fio images are copies of one template: files written differently
# sit differently in the page cache (a file written in large writes gets
# large folios, which make 4 KiB overwrites several times slower on ext4),
# and that difference must not fall on one server only.
qemu-img create -q -f qcow2 "$D/t.qcow2" 1G
qemu-io -c "write -P 0x33 0 1G" "$D/t.qcow2" >/dev/null
cp "$D/t.qcow2" "$D/s.qcow2"; cp "$D/t.qcow2" "$D/q.qcow2"; rm "$D/t.qcow2"

serve() { # socket, then server command
  local sock=$1; shift; rm -f "$sock"; "$@" & pids+=($!)
  for _ in $(seq 500); do [ -S "$sock" ] && return; sleep 0.01; done; echo "no $sock" >&2; exit 1
}
serve "$D/sb.sock" "$S" nbd serve --socket "$D/sb.sock" --persistent --shared $SHARED name=x,file=$D/big.qcow2,readonly
serve "$D/qb.sock" qemu-nbd -t -r -e $SHARED --cache=writeback -f qcow2 -x x -k "$D/qb.sock" "$D/big.qcow2"
serve "$D/sw.sock" "$S" nbd serve --socket "$D/sw.sock" --persistent --shared $SHARED name=x,file=$D/s.qcow2
serve "$D/qw.sock" qemu-nbd -t -e $SHARED --cache=writeback -f qcow2 -x x -k "$D/qw.sock" "$D/q.qcow2"
uri() { echo "nbd+unix:///x?socket=$D/$1.sock"; }

# One measurement: prints a throughput (MiB/s) for server $1 (s|q).
copy() { local t0 t1; t0=$(date +%s.%N); nbdcopy "$(uri ${1}b)" null:; t1=$(date +%s.%N)
  python3 -c "print($GIB*1024/($t1-$t0))"; }
fiorun() { # server, rw, bs, iodepth -> MiB/s and IOPS
  fio --name=b --ioengine=nbd --uri="$(uri ${1}w)" --rw="$2" --bs="$3" --iodepth="$4" \
    --size=1G --runtime="$SECS" --time_based --ramp_time=1 --output-format=json 2>/dev/null |
  sed -n '/^{/,$p' | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; k="read" if j["read"]["io_bytes"] else "write"; print(j[k]["bw"]/1024, j[k]["iops"])'
}
measure() { # workload, server
  case $1 in
    copy) copy "$2" ;;
    randread) fiorun "$2" randread 4k 32 ;;
    randwrite) fiorun "$2" randwrite 4k 32 ;;
    seqwrite) fiorun "$2" write 1M 8 ;;
  esac
}
R="$D/results"; : > "$R"
WORKLOADS=${WORKLOADS:-copy randread randwrite seqwrite}
for w in $WORKLOADS; do
  measure $w s >/dev/null; measure $w q >/dev/null   # warm-up
  for i in $(seq "$RUNS"); do
    order="s q"; [ $((i % 2)) -eq 0 ] && order="q s"
    for srv in $order; do echo "$w $srv $(measure $w $srv)" >> "$R"; done
  done
done
python3 - "$R" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(w, s, k): return statistics.median(float(r[2 + k]) for r in rows if r[0] == w and r[1] == s)
print("| workload | strata | qemu-nbd | strata/qemu |")
print("|---|---|---|---|")
names = {"copy": "nbdcopy to null (MiB/s)", "randread": "fio 4 KiB randread qd32 (IOPS)",
         "randwrite": "fio 4 KiB randwrite qd32 (IOPS)", "seqwrite": "fio 1 MiB seq write qd8 (MiB/s)"}
for w in [w for w in ["copy", "randread", "randwrite", "seqwrite"] if any(r[0] == w for r in rows)]:
    k = 1 if w in ("randread", "randwrite") else 0
    a, b = med(w, "s", k), med(w, "q", k)
    print(f"| {names[w]} | {a:,.0f} | {b:,.0f} | {a/b:.2f}x |")
PY
