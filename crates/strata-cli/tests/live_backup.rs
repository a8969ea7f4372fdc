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
    std::fs::write(p.join("b.xml"), xml).unwrap();
    std::fs::write(
        p.join("c.xml"),
        format!("<domaincheckpoint><name>{cp}</name></domaincheckpoint>"),
    )
    .unwrap();
    let before = acked(p);
    let job = ok(
        p,
        &st(&[
            "--output",
            "json",
            "backup",
            "begin",
            "vm",
            "--backupxml",
            "b.xml",
            "--checkpointxml",
            "c.xml",
        ]),
    )
    .json();
    let after = acked(p);
    assert_eq!(job["state"], "running", "{job}");
    (before, after)
}

/// The records of a copy of both disks, checked against the instant.
fn check_copy(a: &[u8], b: &[u8], before: u64, after: u64, what: &str) {
    let (na, nb) = (
        prefix(a, &format!("{what} vda")),
        prefix(b, &format!("{what} vdb")),
    );
    assert!(
        nb == na || nb + 1 == na,
        "{what}: vda {na} records, vdb {nb}"
    );
    assert!(
        nb >= before,
        "{what}: {nb} records, {before} acknowledged before"
    );
    assert!(
        na <= after + 1,
        "{what}: {na} records, {after} when begin returned"
    );
}

/// Reads the dirty extents of export `disk` (its `backup-DISK` bitmap) over
/// the copy in `file`, with libnbd from Python.
fn read_dirty(p: &Path, disk: &str, file: &str) -> String {
    let script = format!(
        r#"
import nbd
CTX = "qemu:dirty-bitmap:backup-{disk}"
h = nbd.NBD()
h.add_meta_context(CTX)
h.connect_uri("nbd+unix:///{disk}?socket={sock}")
size = h.get_size()
dirty = []
off = 0
while off < size:
    got = []
    def cb(ctx, o, entries, err):
        if ctx == CTX:
            got.extend(zip(entries[0::2], entries[1::2]))
    h.block_status(min(size - off, 1 << 30), off, cb)
    for (l, flags) in got:
        if flags & 1:
            dirty.append((off, l))
        off += l
total = 0
with open("{file}", "r+b") as f:
    for (o, l) in dirty:
        while l > 0:
            n = min(l, 4 << 20)
            f.seek(o)
            f.write(h.pread(n, o))
            total += n
            o += n
            l -= n
print(total)
"#,
        sock = p.join("nbd.sock").display(),
    );
    std::fs::write(p.join("read.py"), script).unwrap();
    run_in(p, "/usr/bin/python3", &["read.py"]).expect(0).stdout
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
    for disk in ["vda", "vdb"] {
        let uri = format!("nbd+unix:///{disk}?socket={}/nbd.sock", p.display());
        run_in(p, "nbdcopy", &[&uri, &format!("{disk}.full")]).expect(0);
    }
    let (a, b) = (
        std::fs::read(p.join("vda.full")).unwrap(),
        std::fs::read(p.join("vdb.full")).unwrap(),
    );
    check_copy(&a, &b, before, after, "full");
    let status = ok(p, &st(&["--output", "json", "backup", "status", "vm"])).json();
    assert_eq!(status["state"], "running", "{status}");
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
fn job_state(p: &Path) -> serde_json::Value {
    ok(p, &st(&["--output", "json", "backup", "status", "vm"])).json()
}

/// The scratch files left in the state folder.
fn scratch_files(p: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(p.join("state/scratch"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

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
    let _daemon = start_records_guest(p, kit);
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
    // An incremental at c1, and the daemon killed while it is served.
    begin(p, &pull_xml(p, Some("c0")), "c1");
    writes_on(p, 20);
    daemon.kill9();
    let _daemon = DaemonProc::start(p, &[], &[]);
    assert_eq!(domstate(p, "vm"), "running (unpaused)");
    let job = job_state(p);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(scratch_files(p).is_empty(), "{:?}", scratch_files(p));
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
