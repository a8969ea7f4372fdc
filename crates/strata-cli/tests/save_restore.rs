//! `domain save` and `domain restore` with a real guest (the guest kit
//! under TCG) that counts in memory and on its disk: after a restore it
//! goes on from where it was saved (the next count, the kernel's uptime
//! going on, no reboot), its disk holds what it had written, and a damaged
//! or cut save file is refused, naming what is wrong, with the domain left
//! shut off.

mod common;
use common::daemon::*;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Counts: each count goes to the console with the uptime, then into the
/// disk's first sector (as 16 digits), written through.
const COUNTER: &str = "
n=0
while true; do
  n=$((n+1))
  echo \"COUNT $n $(cut -d' ' -f1 /proc/uptime)\"
  printf '%016d' $n | dd of=/dev/vda bs=16 count=1 conv=fsync,notrunc 2>/dev/null
  sleep 0.2
done
";

/// The counts the console shows, with their uptimes, in order.
fn counts(p: &Path) -> Vec<(u64, f64)> {
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
fn wait_counts(p: &Path, n: usize) -> Vec<(u64, f64)> {
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

/// The count the disk holds.
fn disk_count(p: &Path) -> u64 {
    let r = run_in(
        p,
        "qemu-io",
        &["-f", "qcow2", "-r", "-c", "read -v 0 16", "vm.qcow2"],
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
fn goes_on(p: &Path, before: &[(u64, f64)]) {
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

#[test]
fn a_saved_guest_restores_where_it_was_and_bad_files_are_refused() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    guest_domain(p, kit, "vm", COUNTER, "");
    let _daemon = DaemonProc::start(p, &[], &[]);
    let err = |args: &[&str], needle: &str| strata(p, &st(args)).one_error(1, needle);
    err(
        &["domain", "save", "vm", "vm.save"],
        "domain is not running",
    );
    ok(p, &st(&["domain", "start", "vm"]));
    wait_counts(p, 5);

    // A running guest: saved, shut off, its disk holding its last count.
    std::fs::write(p.join("taken"), b"x").unwrap();
    err(&["domain", "save", "vm", "taken"], "never overwrites");
    let r = ok(p, &st(&["domain", "save", "vm", "vm.save"]));
    assert_eq!(r.stdout, "Domain 'vm' saved to vm.save\n");
    assert_eq!(domstate(p, "vm"), "shut off (saved)");
    assert!(!p.join("vm.save.part").exists());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(p.join("vm.save")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the save file is the owner's alone");
    let before = counts(p);
    let (last, _) = *before.last().unwrap();
    let on_disk = disk_count(p);
    assert!(
        on_disk == last || on_disk + 1 == last,
        "the disk holds {on_disk}, the console's last count is {last}"
    );
    assert_clean(p, "vm.qcow2");

    // Damaged or cut files: refused, naming what is wrong; nothing runs.
    let good = std::fs::read(p.join("vm.save")).unwrap();
    let mut bad = good.clone();
    let mid = good.len() / 2;
    bad[mid] ^= 1;
    std::fs::write(p.join("bad.save"), &bad).unwrap();
    err(&["domain", "restore", "bad.save"], "saved memory");
    std::fs::write(p.join("cut.save"), &good[..good.len() - 4096]).unwrap();
    err(&["domain", "restore", "cut.save"], "cut short");
    std::fs::write(p.join("junk.save"), b"not a saved machine at all, no").unwrap();
    err(&["domain", "restore", "junk.save"], "too short");
    assert_eq!(domstate(p, "vm"), "shut off (saved)");

    // Restored: it runs on from the next count.
    let r = ok(p, &st(&["domain", "restore", "vm.save"]));
    assert_eq!(r.stdout, "Domain restored from vm.save\n");
    assert_eq!(domstate(p, "vm"), "running (restored)");
    goes_on(p, &before);

    // Saved again, restored --paused: nothing counts until resume.
    ok(p, &st(&["domain", "save", "vm", "vm2.save"]));
    let before = counts(p);
    ok(p, &st(&["domain", "restore", "vm2.save", "--paused"]));
    assert_eq!(domstate(p, "vm"), "paused (user)");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(counts(p).len(), before.len(), "a paused guest counted");
    ok(p, &st(&["domain", "resume", "vm"]));
    goes_on(p, &before);

    // Saved paused: restored paused by default.
    ok(p, &st(&["domain", "suspend", "vm"]));
    ok(p, &st(&["domain", "save", "vm", "vm3.save"]));
    ok(p, &st(&["domain", "restore", "vm3.save"]));
    assert_eq!(domstate(p, "vm"), "paused (user)");
    ok(p, &st(&["domain", "destroy", "vm"]));
    assert_clean(p, "vm.qcow2");
}
