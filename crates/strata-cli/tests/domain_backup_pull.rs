//! `strata backup begin` in pull mode: each disk of a powered-off domain is
//! served over NBD until `backup abort` (or a signal). An incremental
//! disk's exported dirty bitmap maps, under nbdinfo, exactly as qemu-nbd
//! maps the checkpoint's own bitmap in the image; every export reads (by
//! qemu-img compare and nbdcopy) exactly as the disk; the checkpoint asked
//! for marks the exported state; the job's XML validates against libvirt's
//! schema; the domain is locked while it is served; abort ends it cleanly.

mod common;
use common::nbd::*;
use common::*;
use std::path::Path;

const SCHEMA: &str = "/usr/share/libvirt/schemas/domainbackup.rng";

fn pull_xml(p: &Path) -> String {
    let dir = p.display();
    format!(
        "<domainbackup mode='pull'><incremental>c1</incremental>\
         <server transport='unix' socket='{dir}/b.sock'/><disks>\
         <disk name='vda' exportname='vda-inc' exportbitmap='dirty'/>\
         <disk name='vdb' backupmode='full'/>\
         </disks></domainbackup>"
    )
}

/// `nbdinfo --map=CONTEXT URI`.
fn map(p: &Path, ctx: &str, uri: &str) -> String {
    run_in(p, "nbdinfo", &[&format!("--map={ctx}"), uri])
        .expect(0)
        .stdout
}

#[test]
fn pull_backups_export_disks_with_their_changes() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "c1"]));
    qemu_io(
        p,
        "qcow2",
        "vda.qcow2",
        &["write -P 5 2M 64k", "write -z 0 64k", "write -P 6 5M 1M"],
    );
    std::fs::write(p.join("b.xml"), pull_xml(p)).unwrap();
    std::fs::write(
        p.join("c2.xml"),
        "<domaincheckpoint><name>c2</name></domaincheckpoint>",
    )
    .unwrap();
    let args = st(&[
        "backup",
        "begin",
        "vm",
        "--backupxml",
        "b.xml",
        "--checkpointxml",
        "c2.xml",
    ]);
    let ours = Server::start(p, env!("CARGO_BIN_EXE_strata"), &args, "b.sock");

    // The exported bitmap is the checkpoint's own, as qemu-nbd shows it.
    let abs = p.join("q.sock").display().to_string();
    let image = "driver=qcow2,file.driver=file,file.filename=vda.qcow2,file.locking=off";
    let q_args = ["-t", "-r", "--image-opts", "-B", "c1", "-k", &abs, image];
    let theirs = Server::start(p, "qemu-nbd", &q_args, "q.sock");
    let (inc, q) = (ours.uri(p, "vda-inc"), theirs.uri(p, ""));
    let dirty = map(p, "qemu:dirty-bitmap:dirty", &inc);
    assert_eq!(dirty, map(p, "qemu:dirty-bitmap:c1", &q));
    assert!(
        dirty.contains("dirty") && dirty.lines().count() >= 5,
        "{dirty}"
    );
    assert_eq!(
        map(p, "base:allocation", &inc),
        map(p, "base:allocation", &q)
    );
    drop(theirs);
    // Every export reads as its disk.
    let r = qemu_img(p, &["compare", "-U", "-f", "qcow2", "vda.qcow2", &inc]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let full = ours.uri(p, "vdb");
    run_in(p, "nbdcopy", &[&full, "vdb.copy"]).expect(0);
    let r = qemu_img(
        p,
        &[
            "compare",
            "-U",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "vdb.qcow2",
            "vdb.copy",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // A full disk has no bitmap; exports are read-only.
    let json = run_in(p, "nbdinfo", &["--json", &full]).expect(0).json();
    assert_eq!(json["exports"][0]["contexts"].as_array().unwrap().len(), 1);
    assert_eq!(json["exports"][0]["is_read_only"], true);

    // While served: the job runs, its XML is libvirt's, the domain is held.
    let status = ok(p, &st(&["--output", "json", "backup", "status", "vm"])).json();
    assert_eq!(status["state"], "running", "{status}");
    let xml = ok(p, &st(&["backup", "dumpxml", "vm"])).stdout;
    std::fs::write(p.join("job.xml"), &xml).unwrap();
    run_in(p, "xmllint", &["--noout", "--relaxng", SCHEMA, "job.xml"]).expect(0);
    assert!(
        xml.contains("exportbitmap=\"dirty\"") && xml.contains("b.sock"),
        "{xml}"
    );
    // Another change to the domain waits for the backup to end.
    let mut waiting = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(st(&["snapshot", "create", "vm", "--name", "s1"]))
        .current_dir(p)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(waiting.try_wait().unwrap().is_none(), "the domain is held");
    // The checkpoint marks the exported state: nothing changed since.
    let c2 = ok(p, &st(&["--output", "json", "checkpoint", "list", "vm"])).stdout;
    assert!(c2.contains("\"c2\""), "{c2}");

    // Abort ends it: the job completes, the server leaves, nothing is lost.
    let r = ok(p, &st(&["--output", "json", "backup", "abort", "vm"])).json();
    assert_eq!(r["state"], "completed", "{r}");
    assert!(ours.stop().success() || !p.join("b.sock").exists());
    assert!(!p.join("b.sock").exists(), "the socket is removed");
    assert!(
        waiting.wait().unwrap().success(),
        "then the snapshot is taken"
    );
    for f in ["vda.qcow2", "vdb.qcow2"] {
        assert_clean(p, f);
    }
    let info = qemu_img(p, &["info", "--output=json", "vda.qcow2"]).stdout;
    assert!(info.contains("\"c2\"") && info.contains("\"s1\""), "{info}");
}

#[test]
fn bad_pull_requests_change_nothing() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    let dir = p.display();
    for (xml, says) in [
        ("<domainbackup mode='pull'/>", "<server>"),
        (
            "<domainbackup mode='pull'><server transport='fd' fdgroup='x'/></domainbackup>",
            "fd",
        ),
        (
            "<domainbackup mode='pull'><server transport='unix' socket='rel.sock'/></domainbackup>",
            "absolute",
        ),
        (
            &format!(
                "<domainbackup mode='pull'><incremental>nope</incremental>\
                 <server transport='unix' socket='{dir}/b.sock'/></domainbackup>"
            ),
            "nope",
        ),
        (
            &format!(
                "<domainbackup mode='pull'><server tls='yes' transport='unix' socket='{dir}/b.sock'/></domainbackup>"
            ),
            "TLS",
        ),
        (
            "<domainbackup mode='pull'><server name='192.0.2.1' port='10809'/></domainbackup>",
            "TLS",
        ),
    ] {
        std::fs::write(p.join("b.xml"), xml).unwrap();
        let r = strata(p, &st(&["backup", "begin", "vm", "--backupxml", "b.xml"]));
        assert_ne!(r.code, 0, "{xml}");
        assert!(r.stderr.contains(says), "{xml}: {}", r.stderr);
        assert!(!p.join("b.sock").exists());
        let s = ok(p, &st(&["--output", "json", "backup", "status", "vm"])).stdout;
        assert!(!s.contains("running"), "{s}");
    }
    let list = ok(p, &st(&["checkpoint", "list", "vm"])).stdout;
    assert!(!list.contains("c"), "no checkpoint: {list}");
}

/// A domain held by another strata process (here a pull backup being
/// served) is waited for 30 s, then the command gives up naming the
/// holder, as libvirt gives up on a domain's job lock; nothing changes.
#[test]
fn a_held_domain_is_waited_for_30_s_then_the_holder_is_named() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    let dir = p.display();
    std::fs::write(
        p.join("b.xml"),
        format!(
            "<domainbackup mode='pull'><server transport='unix' socket='{dir}/b.sock'/>\
             <disks><disk name='vda'/><disk name='vdb'/></disks></domainbackup>"
        ),
    )
    .unwrap();
    let args = st(&["backup", "begin", "vm", "--backupxml", "b.xml"]);
    let holder = Server::start(p, env!("CARGO_BIN_EXE_strata"), &args, "b.sock");
    let start = std::time::Instant::now();
    let r = strata(p, &st(&["snapshot", "create", "vm", "--name", "s1"]));
    let waited = start.elapsed();
    let line = r.one_error(1, "busy");
    assert!(
        line.contains("domain 'vm'") && line.contains("backup begin vm") && line.contains("30 s"),
        "{line}"
    );
    assert!(
        waited >= std::time::Duration::from_secs(29),
        "gave up after {waited:?}"
    );
    ok(p, &st(&["backup", "abort", "vm"]));
    drop(holder);
    let list = ok(p, &st(&["snapshot", "list", "vm", "--name"])).stdout;
    assert_eq!(list.trim(), "", "nothing was taken");
}
