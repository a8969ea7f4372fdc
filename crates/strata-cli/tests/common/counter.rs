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

/// The counts the console shows, with their uptimes, in order.
pub fn counts(p: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(p.join("vm.console"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("COUNT")).then_some(())?;
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

/// Waits until the console shows at least `n` counts.
pub fn wait_counts(p: &Path, n: usize) -> Vec<(u64, f64)> {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let c = counts(p);
        if c.len() >= n {
            return c;
        }
        assert!(Instant::now() < until, "only {} counts: {c:?}", c.len());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The count the disk holds (read while strata may serve it).
pub fn disk_count(p: &Path) -> u64 {
    let r = run_in(
        p,
        "qemu-io",
        &["-f", "qcow2", "-r", "-U", "-c", "read -v 0 16", "vm.qcow2"],
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
