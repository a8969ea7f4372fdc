//! `strata repo mount`: every disk of a backup served read-only over NBD,
//! read in place from the repository. QEMU's tools and libnbd's are the
//! oracle: `qemu-img compare` finds each export equal to the disk at the
//! backup's instant, nbdinfo sees a read-only export whose map shows the
//! disk's zero chunks as holes, a write is refused, SIGTERM ends it and
//! removes the socket; a damaged chunk fails the reads that cover it and
//! never gives wrong bytes.

mod common;
use common::daemon::{signal, wait_until};
use common::*;
use std::path::Path;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// `repo mount r ID --socket m.sock` started in `p`, once it listens.
fn mount(p: &Path, id: &str) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .current_dir(p)
        .args(st(&["repo", "mount", "r", id, "--socket", "m.sock"]))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "the mount to listen", || {
        p.join("m.sock").exists()
    });
    child
}

fn uri(p: &Path, disk: &str) -> String {
    format!("nbd+unix:///{disk}?socket={}", p.join("m.sock").display())
}

#[test]
fn a_mounted_backup_reads_as_its_disks_and_damage_fails_reads() {
    let d = tmp();
    let p = d.path();
    for (t, size) in [("vda", "12M"), ("vdb", "5M")] {
        qemu_img(
            p,
            &["create", "-q", "-f", "qcow2", &format!("{t}.qcow2"), size],
        );
    }
    qemu_io(
        p,
        "qcow2",
        "vda.qcow2",
        &["write -P 7 1M 3M", "write -P 9 9M 100k"],
    );
    qemu_io(p, "qcow2", "vdb.qcow2", &["write -P 5 0 5M"]);
    let disks: String = ["vda", "vdb"]
        .iter()
        .map(|t| format!("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}/{t}.qcow2'/><target dev='{t}' bus='virtio'/></disk>", p.display()))
        .collect();
    std::fs::write(
        p.join("vm.xml"),
        format!("<domain type='kvm'><name>vm</name><memory unit='MiB'>256</memory><devices>{disks}</devices></domain>"),
    )
    .unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
    ok(p, &st(&["repo", "init", "r"]));
    let b = ok(p, &st(&["--output", "json", "repo", "backup", "r", "vm"])).json();
    let id = b["id"].as_str().unwrap().to_string();
    // The disks change after the backup: the mount serves the backup.
    let (vda_then, vdb_then) = (p.join("vda.then.qcow2"), p.join("vdb.then.qcow2"));
    std::fs::copy(p.join("vda.qcow2"), &vda_then).unwrap();
    std::fs::copy(p.join("vdb.qcow2"), &vdb_then).unwrap();
    qemu_io(p, "qcow2", "vda.qcow2", &["write -P 1 0 64k"]);

    let mut child = mount(p, &id);
    for (t, then) in [("vda", &vda_then), ("vdb", &vdb_then)] {
        let r = run_in(
            p,
            "qemu-img",
            &[
                "compare",
                "-f",
                "qcow2",
                "-F",
                "raw",
                then.to_str().unwrap(),
                &uri(p, t),
            ],
        );
        assert_eq!(r.code, 0, "{t}: {}{}", r.stdout, r.stderr);
    }
    let info = run_in(p, "nbdinfo", &["--json", &uri(p, "vda")])
        .expect(0)
        .json();
    let export = &info["exports"][0];
    assert_eq!(export["is_read_only"], true, "{info}");
    assert_eq!(export["export-size"], 12 * MIB, "{info}");
    // The map: data where the chunks hold some, a hole elsewhere.
    let map = run_in(p, "nbdinfo", &["--map", "--totals", &uri(p, "vda")])
        .expect(0)
        .stdout;
    assert!(map.contains("hole,zero"), "{map}");
    assert!(map.contains("data"), "{map}");
    let w = run_in(
        p,
        "qemu-io",
        &["-f", "raw", "-c", "write 0 4k", &uri(p, "vda")],
    );
    assert!(
        w.code != 0 || w.stdout.contains("failed") || w.stderr.contains("failed"),
        "a write to a mounted backup: {}{}",
        w.stdout,
        w.stderr
    );
    signal(child.id(), libc::SIGTERM);
    assert!(child.wait().unwrap().success());
    assert!(!p.join("m.sock").exists());

    // A flipped byte in every chunk: reading a disk fails, it never reads
    // wrong bytes.
    let chunks = run_in(p, "find", &["r/chunks", "-type", "f"])
        .expect(0)
        .stdout;
    let mut damaged = 0;
    for f in chunks.lines() {
        let mut bytes = std::fs::read(p.join(f)).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(p.join(f), bytes).unwrap();
        damaged += 1;
    }
    assert!(damaged > 0);
    let mut child = mount(p, &id);
    let r = run_in(
        p,
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri(p, "vdb"),
            "out.raw",
        ],
    );
    assert_ne!(r.code, 0, "a damaged backup read whole: {}", r.stderr);
    signal(child.id(), libc::SIGTERM);
    assert!(child.wait().unwrap().success());
}
