//! `domain save` and `domain restore` with a real guest (the guest kit
//! under TCG) that counts in memory and on its disk: after a restore it
//! goes on from where it was saved (the next count, the kernel's uptime
//! going on, no reboot), its disk holds what it had written, and a damaged
//! or cut save file is refused, naming what is wrong, with the domain left
//! shut off.

mod common;
use common::counter::*;
use common::daemon::*;
use common::*;
use std::time::Duration;

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
