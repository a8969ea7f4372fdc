//! `backup abort` from another connection stops a running push backup at
//! its next batch: the job ends aborted, the target files it made are gone
//! and the checkpoint it was to create is not.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strata_core::backup::push::{self as backup_push, BeginRequest};
use strata_core::store::JobState;
use strata_core::{Domain, Store};

/// Domain `vm` with the one disk `disk` (as vda), in the store at
/// `dir/state`.
fn define_vm(dir: &Path, disk: &str) -> (Store, PathBuf) {
    let xml = format!(
        "<domain><name>vm</name><devices><disk type='file' device='disk'>\
         <driver type='qcow2'/><source file='{disk}'/><target dev='vda'/></disk></devices></domain>"
    );
    let state = dir.join("state");
    let mut store = Store::open(&state).unwrap();
    store
        .define(&Domain::from_xml(&xml, "vm.xml").unwrap())
        .unwrap();
    (store, state)
}

#[test]
fn abort_stops_a_running_backup_and_removes_its_files() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let disk = dir.join("vda.qcow2");
    let disk_s = disk.to_str().unwrap();
    common::qemu_img(&["create", "-q", "-f", "qcow2", disk_s, "400M"]);
    // More than one batch (256 MiB) of data, so there is a next batch.
    let out = Command::new("qemu-io")
        .args(["-c", "write -P 9 0 300M", disk_s])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (mut store, state) = define_vm(dir, disk_s);
    let target = dir.join("vda.bak");
    let req = BeginRequest {
        backup_xml: Some(format!(
            "<domainbackup><disks><disk name='vda' type='file'><target file='{}'/></disk></disks></domainbackup>",
            target.display()
        )),
        checkpoint_xml: Some("<domaincheckpoint><name>c1</name></domaincheckpoint>".into()),
        reuse_external: false,
        fallback_full: false,
        tls: false,
        in_process: false,
    };
    let asked = AtomicBool::new(false);
    let err = backup_push::begin(&mut store, "vm", &req, &|done, _| {
        // Once copying has started, ask (as `backup abort` in another
        // process does) and give the job's poller time to see it.
        if done > 0 && !asked.swap(true, Ordering::SeqCst) {
            Store::open(&state).unwrap().request_abort("vm").unwrap();
            std::thread::sleep(Duration::from_millis(400));
        }
    })
    .unwrap_err();
    assert!(err.to_string().contains("aborted"), "{err}");
    let job = store.job("vm").unwrap().unwrap();
    assert_eq!(job.state, JobState::Aborted, "{job:?}");
    assert!(job.done < job.total, "{job:?}");
    assert!(!target.exists());
    assert!(store.checkpoints("vm").unwrap().is_empty());
    // The disk has no new bitmap either.
    let info = String::from_utf8(common::qemu_img(&["info", disk_s])).unwrap();
    assert!(!info.contains("bitmaps"), "{info}");
}

/// The files a running job made are what abort deletes: a list in the
/// store that cannot be read is an error naming the domain and the store,
/// not an empty list (which made abort delete nothing, silently).
#[test]
fn an_unreadable_job_file_list_is_an_error_not_nothing_to_delete() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let disk = dir.join("vda.qcow2");
    let disk_s = disk.to_str().unwrap();
    common::qemu_img(&["create", "-q", "-f", "qcow2", disk_s, "4M"]);
    let (mut store, state) = define_vm(dir, disk_s);
    let req = BeginRequest {
        backup_xml: None,
        checkpoint_xml: None,
        reuse_external: false,
        fallback_full: false,
        tls: false,
        in_process: false,
    };
    backup_push::begin(&mut store, "vm", &req, &|_, _| {}).unwrap();
    assert!(!store.job("vm").unwrap().unwrap().files.is_empty());
    let db = rusqlite::Connection::open(state.join("strata.db")).unwrap();
    db.execute("UPDATE jobs SET files = 'not json'", [])
        .unwrap();
    // A finished job's files are results nothing deletes: only a warning,
    // so the domain's next backup is not blocked.
    assert!(store.job("vm").unwrap().unwrap().files.is_empty());
    // A running one's are what abort deletes: an error.
    db.execute("UPDATE jobs SET state = 'running'", []).unwrap();
    let err = store.job("vm").unwrap_err().to_string();
    assert!(
        err.contains("domain 'vm'") && err.contains("strata.db") && err.contains("unreadable"),
        "{err}"
    );
}
