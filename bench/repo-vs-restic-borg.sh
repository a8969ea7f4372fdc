#!/usr/bin/env bash
# Backups of one disk into strata's repository, restic's and borg's, as
# issue 18 asks, on the same bytes in the same run:
#   - the disk: DISK_GIB (default 4) GiB, a qcow2 whose data lives in a raw
#     file beside it (data_file_raw): restic and borg back up the raw file,
#     strata the domain whose disk it is (its dirty bitmaps live in the
#     qcow2). DATA_GIB (default 2) GiB of it hold data, half random, half
#     compressible text;
#   - ROUNDS (default 10) rounds: CHANGE_PCT (default 1) % of the disk
#     rewritten with random data in blocks of CHANGE_KIB (default 1024)
#     KiB at random places (through qemu-nbd, so the bitmaps see it), then
#     a backup by each tool. strata reads every chunk a block touches
#     (1 MiB chunks unless CHUNK_SIZE says otherwise): 1 MiB blocks at
#     random places touch about 2 % of the disk; 64 KiB ones scattered
#     (CHANGE_KIB=64) many more chunks;
#   - all three encrypted (strata --key-file, restic always, borg repokey)
#     and compressed with zstd level 3;
#   - then a restore of the last backup by each, to a file.
# Reported: the first backup, the median incremental, bytes stored after
# the rounds, the restore; strata's time over each peer's.
#
# Usage: bench/repo-vs-restic-borg.sh   Env: DISK_GIB, DATA_GIB, ROUNDS,
# CHANGE_PCT, CHANGE_KIB, CHUNK_SIZE (strata's, default 1M), BENCH_DIR (default a new dir under /var/tmp, removed at the
# end). Needs restic, borg (apt-get install restic borgbackup), qemu-img,
# qemu-nbd and python3-libnbd.
set -euo pipefail
cd "$(dirname "$0")/.."
DISK_GIB=${DISK_GIB:-4}
DATA_GIB=${DATA_GIB:-2}
ROUNDS=${ROUNDS:-10}
CHANGE_PCT=${CHANGE_PCT:-1}
CHANGE_KIB=${CHANGE_KIB:-1024}
for t in restic borg qemu-img qemu-nbd python3; do
  command -v "$t" >/dev/null || { echo "needs $t (apt-get install restic borgbackup qemu-utils python3-libnbd)" >&2; exit 1; }
done
# The Python that has libnbd's module (Debian's, when another is first in PATH).
PYNBD=
for py in python3 /usr/bin/python3; do
  if "$py" -c 'import nbd' 2>/dev/null; then PYNBD=$py; break; fi
done
[ -n "$PYNBD" ] || { echo "needs python3-libnbd" >&2; exit 1; }
cargo build --release -q -p strata-cli
S=$PWD/target/release/strata
D=${BENCH_DIR:-$(mktemp -d /var/tmp/strata-repo-bench.XXXXXX)}
[ -n "${BENCH_DIR:-}" ] || trap 'rm -rf "$D"' EXIT
mkdir -p "$D"
echo "workdir $D: a $DISK_GIB GiB disk, $DATA_GIB GiB of data, $ROUNDS rounds of $CHANGE_PCT % changes in $CHANGE_KIB KiB blocks"

now() { date +%s.%N; }
since() { python3 -c "import sys; print('%.2f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$(now)"; }
median() { python3 -c "import statistics,sys; print('%.2f' % statistics.median(map(float, sys.argv[1:])))" "$@"; }

# The disk, and its data written straight into the raw file (before any
# checkpoint: nothing needs tracking yet).
qemu-img create -q -f qcow2 -o data_file="$D/disk.raw",data_file_raw=on "$D/disk.qcow2" "${DISK_GIB}G"
python3 - "$D/disk.raw" "$DATA_GIB" <<'EOF'
import os, random, sys
path, gib = sys.argv[1], int(sys.argv[2])
rng = random.Random(18)
size = os.path.getsize(path)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(4000)]
with open(path, "r+b") as f:
    mib = 1 << 20
    slots = rng.sample(range(size // mib), gib * 1024)
    for i, slot in enumerate(slots):
        if i % 2:
            data = os.urandom(mib)
        else:
            data = b" ".join(rng.choice(words) for _ in range(mib // 5))[:mib].ljust(mib, b"\n")
        f.seek(slot * mib)
        f.write(data)
EOF
cat >"$D/vm.xml" <<EOF
<domain type='kvm'><name>bench</name><memory unit='MiB'>256</memory><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$D/disk.qcow2'/><target dev='vda' bus='virtio'/></disk>
</devices></domain>
EOF
ST="$D/state"
"$S" --state-dir "$ST" domain define "$D/vm.xml" >/dev/null
printf 'bench key\n' >"$D/key"
export RESTIC_PASSWORD="bench key" BORG_PASSPHRASE="bench key" BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
"$S" repo init "$D/strata" --key-file "$D/key" --chunk-size "${CHUNK_SIZE:-1M}" >/dev/null
restic -q -r "$D/restic" init >/dev/null
borg init -e repokey "$D/borg" >/dev/null 2>&1

backup() { # $1: round
  local t
  t=$(now)
  if [ "$1" = 0 ]; then
    "$S" -q --state-dir "$ST" repo backup "$D/strata" bench --key-file "$D/key" >/dev/null
  else
    "$S" -q --state-dir "$ST" repo backup "$D/strata" bench --incremental --key-file "$D/key" >/dev/null
  fi
  st=$(since "$t")
  t=$(now)
  restic -q -r "$D/restic" backup --compression auto "$D/disk.raw" >/dev/null
  rt=$(since "$t")
  t=$(now)
  borg create --compression zstd,3 "$D/borg::round-$1" "$D/disk.raw"
  bt=$(since "$t")
  echo "round $1: strata ${st}s  restic ${rt}s  borg ${bt}s"
}

change() { # $1: round
  qemu-nbd -f qcow2 -k "$D/nbd.sock" "$D/disk.qcow2" &
  local pid=$!
  for _ in $(seq 50); do [ -S "$D/nbd.sock" ] && break; sleep 0.1; done
  "$PYNBD" - "$D/nbd.sock" "$CHANGE_PCT" "$1" "$CHANGE_KIB" <<'EOF'
import nbd, os, random, sys
h = nbd.NBD()
h.connect_unix(sys.argv[1])
size = h.get_size()
rng = random.Random(int(sys.argv[3]))
block = int(sys.argv[4]) << 10
for _ in range(int(size * float(sys.argv[2]) / 100) // block):
    h.pwrite(os.urandom(block), rng.randrange(size // block) * block)
h.flush()
h.shutdown()
EOF
  # qemu-nbd ends when its one client leaves; else end it.
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

backup 0 | tee "$D/first"
read -r _ _ _ s0 _ r0 _ b0 <"$D/first"
inc_s=() inc_r=() inc_b=()
for r in $(seq 1 $((ROUNDS - 1))); do
  change "$r"
  line=$(backup "$r")
  echo "$line"
  read -r _ _ _ s _ rr _ b <<<"$line"
  inc_s+=("${s%s}") inc_r+=("${rr%s}") inc_b+=("${b%s}")
done
stored() { du -sb "$1" | cut -f1; }
ss=$(stored "$D/strata") rs=$(stored "$D/restic") bs=$(stored "$D/borg")

last=$("$S" --output json repo list "$D/strata" --key-file "$D/key" | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
t=$(now); "$S" -q repo restore "$D/strata" "$last" vda -O raw "$D/s.raw" --key-file "$D/key"; sr=$(since "$t")
t=$(now); restic -q -r "$D/restic" restore latest --target "$D/restic-out" >/dev/null; rr=$(since "$t")
t=$(now); (mkdir -p "$D/borg-out" && cd "$D/borg-out" && borg extract "$D/borg::round-$((ROUNDS - 1))"); br=$(since "$t")
cmp "$D/s.raw" "$D/disk.raw" && cmp "$D/restic-out/$D/disk.raw" "$D/disk.raw" && cmp "$D/borg-out/$D/disk.raw" "$D/disk.raw"

ratio() { python3 -c "import sys; print('%.2fx' % (float(sys.argv[1]) / float(sys.argv[2])))" "$1" "$2"; }
si=$(median "${inc_s[@]}") ri=$(median "${inc_r[@]}") bi=$(median "${inc_b[@]}")
printf '\n%-28s %10s %10s %10s %12s %12s\n' "" strata restic borg "strata/restic" "strata/borg"
printf '%-28s %10s %10s %10s %12s %12s\n' "first backup (s)" "${s0%s}" "${r0%s}" "${b0%s}" "$(ratio "${s0%s}" "${r0%s}")" "$(ratio "${s0%s}" "${b0%s}")"
printf '%-28s %10s %10s %10s %12s %12s\n' "incremental, median (s)" "$si" "$ri" "$bi" "$(ratio "$si" "$ri")" "$(ratio "$si" "$bi")"
printf '%-28s %10s %10s %10s %12s %12s\n' "stored after $ROUNDS rounds (MiB)" $((ss >> 20)) $((rs >> 20)) $((bs >> 20)) "$(ratio "$ss" "$rs")" "$(ratio "$ss" "$bs")"
printf '%-28s %10s %10s %10s %12s %12s\n' "restore (s)" "$sr" "$rr" "$br" "$(ratio "$sr" "$rr")" "$(ratio "$sr" "$br")"
