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

#[test]
fn a_managed_save_is_restored_by_the_next_start() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    guest_domain(p, kit, "vm", COUNTER, "");
    let _daemon = DaemonProc::start(p, &[], &[]);
    let err = |args: &[&str], needle: &str| strata(p, &st(args)).one_error(1, needle);
    err(&["domain", "managedsave", "vm"], "domain is not running");
    let r = ok(p, &st(&["domain", "managedsave-remove", "vm"]));
    assert_eq!(
        r.stdout,
        "Domain 'vm' has no managed save image; removal skipped\n"
    );
    // Shut off, the domain has a disk-only snapshot (no memory).
    ok(p, &st(&["snapshot", "create", "vm", "--name", "s0"]));
    ok(p, &st(&["domain", "start", "vm"]));
    wait_counts(p, 5);

    // Saved where strata keeps it (owner-only), then restored by start,
    // which removes it.
    let r = ok(p, &st(&["domain", "managedsave", "vm"]));
    assert_eq!(r.stdout, "Domain 'vm' state saved by strata\n");
    assert_eq!(domstate(p, "vm"), "shut off (saved)");
    let file = p.join("state/save/vm.save");
    let mode = |f: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(f).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&p.join("state/save")), 0o700);
    err(
        &["domain", "undefine", "vm"],
        "while its managed save exists",
    );
    let before = counts(p);
    let r = ok(p, &st(&["domain", "start", "vm"]));
    assert_eq!(r.stdout, "Domain 'vm' started\n");
    assert_eq!(domstate(p, "vm"), "running (restored)");
    goes_on(p, &before);
    assert!(!file.exists(), "the managed save stayed after the restore");

    // --paused at the save: the start leaves it paused.
    ok(p, &st(&["domain", "managedsave", "vm", "--paused"]));
    let before = counts(p);
    ok(p, &st(&["domain", "start", "vm"]));
    assert_eq!(domstate(p, "vm"), "paused (user)");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(counts(p).len(), before.len(), "a paused guest counted");
    ok(p, &st(&["domain", "resume", "vm"]));
    goes_on(p, &before);

    // Damaged: the start refuses it, naming the file, and keeps it;
    // --force-boot discards it and boots afresh (counting from 1).
    ok(p, &st(&["domain", "managedsave", "vm"]));
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let line = err(&["domain", "start", "vm"], "saved memory");
    assert!(line.contains("state/save/vm.save"), "{line}");
    assert_eq!(domstate(p, "vm"), "shut off (saved)");
    assert!(file.exists());
    let before = counts(p);
    ok(p, &st(&["domain", "start", "vm", "--force-boot"]));
    assert!(!file.exists(), "--force-boot kept the managed save");
    let after = wait_counts(p, before.len() + 2);
    assert_eq!(after[before.len()].0, 1, "not a fresh boot: {after:?}");

    // A revert to a snapshot without memory would make the managed save
    // stale: refused without --force; with it, the save goes.
    ok(p, &st(&["domain", "managedsave", "vm"]));
    err(
        &["snapshot", "revert", "vm", "s0"],
        "revert requires force: domain 'vm' has a managed save",
    );
    assert!(file.exists());
    ok(p, &st(&["snapshot", "revert", "vm", "s0", "--force"]));
    assert!(!file.exists(), "the stale managed save stayed");
    // s0 was taken before the guest counted: no count on the disk.
    let r = run_in(
        p,
        "qemu-io",
        &["-f", "qcow2", "-r", "-c", "read -P 0 0 16", "vm.qcow2"],
    );
    assert!(
        r.stdout.contains("read 16/16") && !r.stdout.contains("failed"),
        "{}",
        r.stdout
    );
    assert_clean(p, "vm.qcow2");
}
