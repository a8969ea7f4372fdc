//! Pull backups of a running guest: the records guest writes to two disks
//! while a full pull backup (with a checkpoint) is read by nbdcopy well
//! after the guest has overwritten the disks' tails, and an incremental
//! one is read by a Python libnbd reader through its
//! `qemu:dirty-bitmap:backup-<disk>` context. Each copy holds every record
//! acknowledged before `backup begin` and none written after it returned,
//! both disks at one instant; the guest never sees an error; `backup
//! abort` ends the job and leaves no scratch file; snapshots are refused
//! while the backup runs. Push backups (full, then two incrementals, each
//! with the next checkpoint) restore, chained by qemu-img, to their
//! instants too; their copy is quick beside the guest's appends, so it is
//! the pull test that proves the copy-before-write (it fails without it).
//! A checkpoint bitmap damaged by a crash is reported by the daemon, an
//! incremental backup from it refused, and `--fallback-full` backs that
//! disk up in full.

mod common;
use common::daemon::*;
use common::records::*;
use common::*;
use std::path::Path;
use std::time::Duration;

/// A pull backup of vda and vdb on `p/nbd.sock` (incremental since
/// `since` when given).
fn pull_xml(p: &Path, since: Option<&str>) -> String {
    let inc = since
        .map(|c| format!("<incremental>{c}</incremental>"))
        .unwrap_or_default();
    format!(
        "<domainbackup mode='pull'>{inc}<server transport='unix' socket='{}/nbd.sock'/>\
         <disks><disk name='vda' type='file'/><disk name='vdb' type='file'/></disks></domainbackup>",
        p.display()
    )
}

/// `backup begin` with `xml` and a checkpoint `cp`; the records
/// acknowledged before and after it.
fn begin(p: &Path, xml: &str, cp: &str) -> (u64, u64) {
    let before = acked(p);
    let job = begin_backup(p, xml, cp);
    let after = acked(p);
    assert_eq!(job["state"], "running", "{job}");
    (before, after)
}

#[test]
fn pull_backups_of_a_running_guest_hold_the_instant_they_began() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let _daemon = start_records_guest(p, kit);

    // A full backup with checkpoint c0, read once the guest has written on.
    let (before, after) = begin(p, &pull_xml(p, None), "c0");
    let r = strata(p, &st(&["snapshot", "create", "vm", "--disk-only"]));
    assert!(r.stderr.contains("backup job is running"), "{}", r.stderr);
    writes_on(p, 31);
    // The status says what the guest's writes cost in scratch, and that
    // nothing was read yet.
    wait_until(
        Duration::from_secs(10),
        "the scratch size in the status",
        || job_state(p)["scratch"].as_u64().unwrap_or(0) > 0,
    );
    let status = job_state(p);
    assert_eq!(status["total"], 128u64 << 20, "{status}");
    assert_eq!(status["done"], 0, "{status}");
    for disk in ["vda", "vdb"] {
        let uri = format!("nbd+unix:///{disk}?socket={}/nbd.sock", p.display());
        run_in(p, "nbdcopy", &[&uri, &format!("{disk}.full")]).expect(0);
    }
    let (a, b) = (
        std::fs::read(p.join("vda.full")).unwrap(),
        std::fs::read(p.join("vdb.full")).unwrap(),
    );
    check_copy(&a, &b, before, after, "full");
    // What was read is done (nbdcopy skips what block status says is
    // zero: that is never read, so never done).
    wait_until(Duration::from_secs(10), "the read in the status", || {
        job_state(p)["done"].as_u64().unwrap_or(0) > 0
    });
    let status = job_state(p);
    assert_eq!(status["state"], "running", "{status}");
    let text = ok(p, &st(&["backup", "status", "vm"])).stdout;
    assert!(text.contains("Scratch:"), "{text}");
    ok(p, &st(&["backup", "abort", "vm"]));
    let status = ok(p, &st(&["--output", "json", "backup", "status", "vm"])).json();
    assert_eq!(status["state"], "completed", "{status}");
    let scratch: Vec<_> = std::fs::read_dir(p.join("state/scratch"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(scratch.is_empty(), "scratch left: {scratch:?}");

    // An incremental since c0, read through its dirty bitmaps on top of the
    // full copy.
    writes_on(p, 21);
    let (before, after) = begin(p, &pull_xml(p, Some("c0")), "c1");
    writes_on(p, 21);
    for disk in ["vda", "vdb"] {
        let read = read_dirty(p, disk, &format!("{disk}.full"));
        let bytes: u64 = read.trim().parse().unwrap();
        assert!(bytes > 0 && bytes < 64 << 20, "{disk}: {bytes} dirty bytes");
    }
    let (a, b) = (
        std::fs::read(p.join("vda.full")).unwrap(),
        std::fs::read(p.join("vdb.full")).unwrap(),
    );
    check_copy(&a, &b, before, after, "full + incremental");
    ok(p, &st(&["backup", "abort", "vm"]));
    assert_eq!(
        ok(p, &st(&["checkpoint", "list", "vm", "--name"])).stdout,
        "c0\nc1\n\n"
    );
    // The guest went on without an error, and writes on.
    writes_on(p, 6);
    stop_and_check_console(p);
    for f in ["a.qcow2", "b.qcow2"] {
        assert_clean(p, f);
    }
}

/// A job's state, as `backup status --output json` says.
/// A tmpfs mounted on a folder for a test's life.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let opts = format!("size={size},mode=0700");
        run_in(
            dir,
            "mount",
            &["-t", "tmpfs", "-o", &opts, "tmpfs", dir.to_str().unwrap()],
        )
        .expect(0);
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_scratch_fails_the_backup_and_never_the_guest() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    // Disks full of old data (zeros would need no copy).
    define_records_guest(p, kit, "");
    for f in ["a.qcow2", "b.qcow2"] {
        qemu_io(p, "qcow2", f, &["write -P 0x11 0 56M"]);
    }
    let _daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    wait_for_records(p, 11, 120);
    let _scratch = Tmpfs::mount(&p.join("state/scratch"), "1m");
    std::fs::write(p.join("b.xml"), pull_xml(p, None)).unwrap();
    ok(p, &st(&["backup", "begin", "vm", "--backupxml", "b.xml"]));
    // The guest fills the scratch with the old data of what it overwrites.
    wait_until(Duration::from_secs(120), "the backup to fail", || {
        job_state(p)["state"] == "failed"
    });
    let job = job_state(p);
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("disk 'vd") && error.contains("scratch"),
        "{job}"
    );
    assert!(scratch_files(p).is_empty(), "{:?}", scratch_files(p));
    assert!(!p.join("nbd.sock").exists());
    writes_on(p, 20);
    stop_and_check_console(p);
}

#[test]
fn a_daemon_killed_mid_backup_leaves_nothing_and_the_next_incremental_holds() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let mut daemon = start_records_guest(p, kit);
    // A full backup at c0, read whole.
    begin(p, &pull_xml(p, None), "c0");
    for disk in ["vda", "vdb"] {
        let uri = format!("nbd+unix:///{disk}?socket={}/nbd.sock", p.display());
        run_in(p, "nbdcopy", &[&uri, &format!("{disk}.full")]).expect(0);
    }
    ok(p, &st(&["backup", "abort", "vm"]));
    writes_on(p, 20);
    // An incremental at c1 with vda's scratch where the XML says (a file
    // there already is refused first), and the daemon killed while it is
    // served.
    let scratch = p.join("vda.scratch");
    let xml = pull_xml(p, Some("c0")).replace(
        "<disk name='vda' type='file'/>",
        &format!(
            "<disk name='vda' type='file'><scratch file='{}'/></disk>",
            scratch.display()
        ),
    );
    std::fs::write(&scratch, b"mine").unwrap();
    let args = backup_files(p, &xml, "c1");
    let r = strata(p, &st(&args));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("vda.scratch exists"), "{}", r.stderr);
    assert_eq!(std::fs::read(&scratch).unwrap(), b"mine");
    std::fs::remove_file(&scratch).unwrap();
    begin(p, &xml, "c1");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&scratch).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let dumped = ok(p, &st(&["backup", "dumpxml", "vm"])).stdout;
    assert!(dumped.contains("<scratch file="), "{dumped}");
    writes_on(p, 20);
    daemon.kill9();
    let _daemon = DaemonProc::start(p, &[], &[]);
    assert_eq!(domstate(p, "vm"), "running (unpaused)");
    let job = job_state(p);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(scratch_files(p).is_empty(), "{:?}", scratch_files(p));
    assert!(!scratch.exists(), "the named scratch is left");
    writes_on(p, 20);
    // The next incremental since c0 restores the instant it began.
    let (before, after) = begin(p, &pull_xml(p, Some("c0")), "c2");
    writes_on(p, 20);
    for disk in ["vda", "vdb"] {
        read_dirty(p, disk, &format!("{disk}.full"));
    }
    let (a, b) = (
        std::fs::read(p.join("vda.full")).unwrap(),
        std::fs::read(p.join("vdb.full")).unwrap(),
    );
    check_copy(&a, &b, before, after, "full + incremental after a kill");
    ok(p, &st(&["backup", "abort", "vm"]));
    stop_and_check_console(p);
}

/// A push backup of vda and vdb to `NAME.bROUND` qcow2 files (incremental
/// since `since` when given).
fn push_xml(p: &Path, round: usize, since: Option<&str>) -> String {
    let inc = since
        .map(|c| format!("<incremental>{c}</incremental>"))
        .unwrap_or_default();
    let dir = p.display();
    format!(
        "<domainbackup mode='push'>{inc}<disks>\
         <disk name='vda' type='file'><target file='{dir}/vda.b{round}'/><driver type='qcow2'/></disk>\
         <disk name='vdb' type='file'><target file='{dir}/vdb.b{round}'/><driver type='qcow2'/></disk>\
         </disks></domainbackup>"
    )
}

/// Waits for the job to end; its final state.
fn job_end(p: &Path) -> serde_json::Value {
    wait_until(Duration::from_secs(120), "the backup to end", || {
        job_state(p)["state"] != "running"
    });
    job_state(p)
}

/// Disk `dev` as backup file `file` (and the files below it) restores it.
fn restored(p: &Path, file: &str) -> Vec<u8> {
    let out = p.join("restored.raw");
    qemu_img(p, &["convert", "-O", "raw", file, out.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}

#[test]
fn push_backups_of_a_running_guest_restore_the_instant_they_began() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let _daemon = start_records_guest(p, kit);
    let mut since: Option<String> = None;
    for round in 0..3 {
        let cp = format!("c{round}");
        let (before, after) = begin(p, &push_xml(p, round, since.as_deref()), &cp);
        let job = job_end(p);
        assert_eq!(job["state"], "completed", "{job}");
        // An incremental copies what changed since the last round: well
        // under the 64 MiB disks.
        let total = job["total"].as_u64().unwrap();
        assert!(total > 0 && total < 16 << 20, "{job}");
        if round > 0 {
            for disk in ["vda", "vdb"] {
                let (cur, prev) = (format!("{disk}.b{round}"), format!("{disk}.b{}", round - 1));
                qemu_img(p, &["rebase", "-u", "-F", "qcow2", "-b", &prev, &cur]);
            }
        }
        let (a, b) = (
            restored(p, &format!("vda.b{round}")),
            restored(p, &format!("vdb.b{round}")),
        );
        check_copy(&a, &b, before, after, &format!("round {round}"));
        assert!(scratch_files(p).is_empty(), "{:?}", scratch_files(p));
        since = Some(cp);
        writes_on(p, 30);
    }
    stop_and_check_console(p);
}

#[test]
fn a_damaged_bitmap_is_reported_and_the_backup_falls_back_to_full() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    define_records_guest(p, kit, "");
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "c0"]));
    // QEMU dies with vdb's image open: its bitmap stays "in use".
    let r = run_in(p, "qemu-io", &["-c", "sigraise 9", "b.qcow2"]);
    assert_ne!(r.code, 0, "qemu-io was to die: {}", r.stderr);
    let _daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    wait_for_records(p, 11, 120);
    // The daemon reports it from the images it serves.
    let r = strata(p, &st(&["--output", "json", "checkpoint", "verify", "vm"]));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let entry = |disk: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|e| e["checkpoint"] == "c0" && e["disk"] == disk)
            .cloned()
            .unwrap()
    };
    assert!(entry("vda")["problem"].is_null(), "{v}");
    assert!(entry("vda")["changed"].as_u64().unwrap() > 0, "{v}");
    let why = entry("vdb")["problem"].as_str().unwrap().to_string();
    assert!(
        why.contains("b.qcow2") && why.contains("'c0'") && why.contains("inconsistent"),
        "{why}"
    );
    // An incremental backup is refused before anything is made.
    let args = backup_files(p, &push_xml(p, 1, Some("c0")), "c1");
    let r = strata(p, &st(&args));
    assert_eq!(r.code, 1, "{}", r.stderr);
    for part in ["disk 'vdb'", "'c0'", "--fallback-full"] {
        assert!(r.stderr.contains(part), "{part}: {}", r.stderr);
    }
    assert!(job_state(p).is_null(), "{}", job_state(p));
    assert!(scratch_files(p).is_empty(), "{:?}", scratch_files(p));
    assert!(!p.join("vda.b1").exists());
    // With --fallback-full: vdb in full, vda incremental, status 3, and
    // both restore the instant the backup began.
    let mut fallback = args.to_vec();
    fallback.push("--fallback-full");
    let before = acked(p);
    let r = strata(p, &st(&fallback));
    let after = acked(p);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("disk 'vdb': full backup instead"),
        "{}",
        r.stderr
    );
    let job = job_end(p);
    assert_eq!(job["state"], "completed", "{job}");
    assert!(
        job["fallback"][0].as_str().unwrap().contains("vdb"),
        "{job}"
    );
    let (a, b) = (restored(p, "vda.b1"), restored(p, "vdb.b1"));
    check_copy(&a, &b, before, after, "incremental vda + fallback vdb");
    // The new checkpoint is sound on both disks.
    let r = strata(
        p,
        &st(&["--output", "json", "checkpoint", "verify", "vm", "c1"]),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    stop_and_check_console(p);
}

#[test]
fn a_pull_backup_over_tls_needs_its_credentials_and_holds_the_instant() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    x509_credentials(p, "ca");
    let _daemon = start_records_guest(p, kit);
    let sock = p.join("nbd.sock").display().to_string();
    let xml = format!(
        "<domainbackup mode='pull'><server tls='yes' transport='unix' socket='{sock}'/>\
         <disks><disk name='vda' type='file'/><disk name='vdb' type='file'/></disks></domainbackup>"
    );
    let args = backup_files(p, &xml, "c0");
    // Without credentials, or with a folder that has none: refused, and
    // nothing is made.
    for (extra, says) in [
        (&[][..], "--tls-creds"),
        (&["--tls-creds", "nope"][..], "nope"),
    ] {
        let mut a = args.to_vec();
        a.extend_from_slice(extra);
        let r = strata(p, &st(&a));
        assert_ne!(r.code, 0, "{extra:?}");
        assert!(r.stderr.contains(says), "{extra:?}: {}", r.stderr);
        assert!(job_state(p).is_null(), "{}", job_state(p));
        assert!(scratch_files(p).is_empty() && !p.join("nbd.sock").exists());
    }
    assert_eq!(
        ok(p, &st(&["checkpoint", "list", "vm", "--name"])).stdout,
        "\n"
    );
    let mut a = args.to_vec();
    a.extend_from_slice(&["--tls-creds", "ca/server"]);
    let before = acked(p);
    ok(p, &st(&a));
    let after = acked(p);
    writes_on(p, 20);
    // A client without TLS gets nothing; one with the CA reads the instant.
    let plain = run_in(p, "nbdinfo", &[&format!("nbd+unix:///vda?socket={sock}")]);
    assert_ne!(plain.code, 0, "{}", plain.stdout);
    for disk in ["vda", "vdb"] {
        let uri = format!("nbds+unix:///{disk}?socket={sock}&tls-certificates=ca/client");
        run_in(p, "nbdcopy", &[&uri, &format!("{disk}.full")]).expect(0);
    }
    let (a, b) = (
        std::fs::read(p.join("vda.full")).unwrap(),
        std::fs::read(p.join("vdb.full")).unwrap(),
    );
    check_copy(&a, &b, before, after, "pull over TLS");
    ok(p, &st(&["backup", "abort", "vm"]));
    stop_and_check_console(p);
}

#[test]
fn a_push_backup_of_a_running_guest_reuses_targets_when_told() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let _daemon = start_records_guest(p, kit);
    let args = backup_files(p, &push_xml(p, 0, None), "c0");
    let mut reuse = args.to_vec();
    reuse.push("--reuse-external");
    // Targets that do not exist are refused with --reuse-external.
    let r = strata(p, &st(&reuse));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    assert!(job_state(p).is_null(), "{}", job_state(p));
    // Made beforehand (with old data in them): written over, and kept.
    for disk in ["vda", "vdb"] {
        let t = format!("{disk}.b0");
        qemu_img(p, &["create", "-q", "-f", "qcow2", &t, "64M"]);
        qemu_io(p, "qcow2", &t, &["write -P 0x55 60M 1M"]);
    }
    let before = acked(p);
    ok(p, &st(&reuse));
    let after = acked(p);
    let job = job_end(p);
    assert_eq!(job["state"], "completed", "{job}");
    let (a, b) = (restored(p, "vda.b0"), restored(p, "vdb.b0"));
    check_copy(&a, &b, before, after, "push into reused targets");
    stop_and_check_console(p);
}
