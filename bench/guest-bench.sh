# Sourced by the benches that run a guest under strata and under QEMU:
# `guest_bench NAME TOOL…` checks the tools, builds the guest kit and
# strata, and makes the work folder: sets KIT, S (the strata binary) and
# D (BENCH_DIR, or a new folder under /var/tmp removed at the end), with a
# trap that stops the domain, the daemon and QEMU.
guest_bench() {
  local name=$1; shift
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "$t is missing (scripts/peers installs it)" >&2; exit 1; }
  done
  scripts/guest-kit build >/dev/null
  KIT=${STRATA_GUEST_KIT:-$PWD/target/guest-kit}
  cargo build --release -q -p strata-cli
  S=$PWD/target/release/strata
  if [ -n "${BENCH_DIR:-}" ]; then D=$BENCH_DIR; mkdir -p "$D"; else
    D=$(mktemp -d "/var/tmp/strata-$name.XXXXXX"); fi
  trap guest_bench_cleanup EXIT
}

guest_bench_cleanup() {
  STRATA_STATE_DIR=$D/state "$S" domain destroy vm >/dev/null 2>&1 || true
  [ -f "$D/state/strata.sock.lock" ] && kill "$(sed 's/pid //' "$D/state/strata.sock.lock")" 2>/dev/null || true
  [ -f "$D/qemu.pid" ] && kill "$(cat "$D/qemu.pid")" 2>/dev/null || true
  sleep 1
  [ -n "${BENCH_DIR:-}" ] || rm -rf "$D"
}
