//! A guest that counts, in memory and on its disk, for tests of memory
//! state (save and restore, snapshots with memory): each count goes to the
//! console with the kernel's uptime, then into the disk's first 16 bytes.

use super::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Counts: each count goes to the console with the uptime, then into the
/// disk's first sector (as 16 digits), written through.
pub const COUNTER: &str = "
n=0
while true; do
  n=$((n+1))
  echo \"COUNT $n $(cut -d' ' -f1 /proc/uptime)\"
  printf '%016d' $n | dd of=/dev/vda bs=16 count=1 conv=fsync,notrunc 2>/dev/null
  sleep 0.2
done
";

/// [`COUNTER`] with a second disk: each count goes into `vda`, then into
/// `vdb`.
pub const COUNTER_TWO_DISKS: &str = "
n=0
while true; do
  n=$((n+1))
  echo \"COUNT $n $(cut -d' ' -f1 /proc/uptime)\"
  printf '%016d' $n | dd of=/dev/vda bs=16 count=1 conv=fsync,notrunc 2>/dev/null
  printf '%016d' $n | dd of=/dev/vdb bs=16 count=1 conv=fsync,notrunc 2>/dev/null
  sleep 0.2
done
";

/// The counts the console of domain `vm` in `p` shows, with their
/// uptimes, in order.
pub fn counts(p: &Path) -> Vec<(u64, f64)> {
    counts_in(&p.join("vm.console"))
}

/// The counts console file `console` shows, with their uptimes, in order.
pub fn counts_in(console: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(console)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("COUNT")).then_some(())?;
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

/// Waits until the console of domain `vm` in `p` shows at least `n`
/// counts.
pub fn wait_counts(p: &Path, n: usize) -> Vec<(u64, f64)> {
    wait_counts_in(&p.join("vm.console"), n)
}

/// Waits until console file `console` shows at least `n` counts.
pub fn wait_counts_in(console: &Path, n: usize) -> Vec<(u64, f64)> {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let c = counts_in(console);
        if c.len() >= n {
            return c;
        }
        assert!(Instant::now() < until, "only {} counts: {c:?}", c.len());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The count the disk holds (read while strata may serve it).
pub fn disk_count(p: &Path) -> u64 {
    count_in(p, "vm.qcow2")
}

/// The count qcow2 image `file` in `p` holds (read while strata may serve
/// it).
pub fn count_in(p: &Path, file: &str) -> u64 {
    let r = run_in(
        p,
        "qemu-io",
        &["-f", "qcow2", "-r", "-U", "-c", "read -v 0 16", file],
    );
    // `00000000:  30 30 … 31 35  0000000000000015`: the text column.
    let text = r.stdout.lines().next().unwrap_or_default();
    let digits = text.rsplit(' ').next().unwrap_or_default();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no count on the disk: {}", r.stdout))
}

/// Checks that the counts after `before` counts go on from the last of
/// them without a reboot: the next count, the uptime going on.
pub fn goes_on(p: &Path, before: &[(u64, f64)]) {
    let (last, up) = *before.last().unwrap();
    let after = wait_counts(p, before.len() + 3);
    let (next, next_up) = after[before.len()];
    assert_eq!(
        next,
        last + 1,
        "the guest did not go on from {last}: {after:?}"
    );
    assert!(
        next_up >= up && next_up < up + 30.0,
        "uptime {up} then {next_up}: not the same boot going on"
    );
}

/// Checks that `first_after`, the first count after a revert, is counted
/// again in the same boot: its uptime is what it was the first time the
/// console (`so_far`) showed it, and it does not go on from the last count
/// `so_far` shows.
pub fn counted_again(so_far: &[(u64, f64)], first_after: (u64, f64)) {
    let (next, up) = first_after;
    let went_to = so_far.last().unwrap().0;
    assert_ne!(
        next,
        went_to + 1,
        "it went on from {went_to}, not the snapshot"
    );
    let then = so_far
        .iter()
        .find(|c| c.0 == next)
        .map(|c| c.1)
        .unwrap_or_else(|| panic!("count {next} was never shown before"));
    assert!(
        (up - then).abs() < 5.0,
        "uptime {up} at count {next} now, {then} the first time: not the same boot"
    );
}
