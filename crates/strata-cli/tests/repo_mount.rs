//! `strata repo mount`: every disk of a backup served read-only over NBD,
//! read in place from the repository. QEMU's tools and libnbd's are the
//! oracle: `qemu-img compare` finds each export equal to the disk at the
//! backup's instant, nbdinfo sees a read-only export whose map shows the
//! disk's zero chunks as holes, a write is refused, SIGTERM ends it and
//! removes the socket; a damaged chunk fails the reads that cover it and
//! never gives wrong bytes. Mounted `--writable FOLDER`, clients write
//! into a qcow2 overlay per disk there (sound for `qemu-img check`), kept
//! for the next mount of that backup and refused for another one; the
//! backup itself never changes.

mod common;
use common::daemon::signal;
use common::*;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// `repo mount r ID --socket m.sock` started in `p`, once it listens.
fn mount(p: &Path, id: &str) -> std::process::Child {
    repo_mount(p, id, &[])
}

fn uri(p: &Path, disk: &str) -> String {
    format!("nbd+unix:///{disk}?socket={}", p.join("m.sock").display())
}

/// `qemu-img compare` of qcow2 `file` with the export of `disk`.
fn compare_export(p: &Path, file: &str, disk: &str) -> Run {
    run_in(
        p,
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", file, &uri(p, disk)],
    )
}

/// Domain `vm` of two disks holding data, defined in `p`, and the id of
/// a backup of it in repository `r`; the disks are then changed, copies
/// of them at the backup's instant kept as `DISK.then.qcow2`.
fn backed_up(p: &Path) -> String {
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
    std::fs::copy(p.join("vda.qcow2"), p.join("vda.then.qcow2")).unwrap();
    std::fs::copy(p.join("vdb.qcow2"), p.join("vdb.then.qcow2")).unwrap();
    qemu_io(p, "qcow2", "vda.qcow2", &["write -P 1 0 64k"]);
    id
}

#[test]
fn a_mounted_backup_reads_as_its_disks_and_damage_fails_reads() {
    let d = tmp();
    let p = d.path();
    let id = backed_up(p);
    let (vda_then, vdb_then) = (p.join("vda.then.qcow2"), p.join("vdb.then.qcow2"));

    let mut child = mount(p, &id);
    for (t, then) in [("vda", &vda_then), ("vdb", &vdb_then)] {
        let r = compare_export(p, then.to_str().unwrap(), t);
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

#[test]
fn a_writable_mount_keeps_writes_in_overlays_and_the_backup_unchanged() {
    let d = tmp();
    let p = d.path();
    let id = backed_up(p);
    let mut child = repo_mount(p, &id, &["--writable", "ov"]);
    let info = run_in(p, "nbdinfo", &["--json", &uri(p, "vda")])
        .expect(0)
        .json();
    assert_eq!(info["exports"][0]["is_read_only"], false, "{info}");
    // Writes over data, over a hole, and past the first chunk.
    let cmds = ["write -P 33 0 64k", "write -P 44 5M 1M", "write -z 9M 4k"];
    let mut args = vec!["-f", "raw"];
    for c in &cmds {
        args.extend(["-c", c]);
    }
    let u = uri(p, "vda");
    args.push(&u);
    run_in(p, "qemu-io", &args).expect(0);
    // The same writes on a copy of the disk at the instant: the oracle.
    std::fs::copy(p.join("vda.then.qcow2"), p.join("vda.want.qcow2")).unwrap();
    qemu_io(p, "qcow2", "vda.want.qcow2", &cmds);
    let cmp = |p: &Path| compare_export(p, "vda.want.qcow2", "vda");
    assert_eq!(cmp(p).code, 0, "{}", cmp(p).stdout);
    signal(child.id(), libc::SIGTERM);
    assert!(child.wait().unwrap().success());
    // The overlays are sound qcow2 files, owner-only, holding only what
    // was written.
    for t in ["vda", "vdb"] {
        let f = format!("ov/{t}.qcow2");
        assert_clean(p, &f);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(p.join(&f)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // The backup is as it was.
    ok(p, &st(&["repo", "verify", "r"]));
    ok(
        p,
        &st(&["repo", "restore", "r", &id, "vda", "-O", "raw", "out.raw"]),
    );
    assert_same(p, "vda.then.qcow2", "out.raw");
    // Mounted again over the same folder: the writes are there; with
    // --output json it says so as one object.
    let mut args = vec!["--output", "json"];
    args.extend(st(&[
        "repo",
        "mount",
        "r",
        &id,
        "--socket",
        "m.sock",
        "--writable",
        "ov",
    ]));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .current_dir(p)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // One object, printed over several lines, once it listens.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    let said: serde_json::Value = loop {
        let n = std::io::BufRead::read_line(&mut out, &mut text).unwrap();
        assert!(n > 0, "no JSON object: {text}");
        if let Ok(v) = serde_json::from_str(&text) {
            break v;
        }
    };
    assert_eq!(said["backup"], id.as_str(), "{said}");
    assert_eq!(said["exports"], serde_json::json!(["vda", "vdb"]), "{said}");
    assert_eq!(said["writable"], "ov", "{said}");
    assert!(
        said["endpoint"].as_str().unwrap().contains("m.sock"),
        "{said}"
    );
    assert_eq!(cmp(p).code, 0, "{}", cmp(p).stdout);
    signal(child.id(), libc::SIGTERM);
    assert!(child.wait().unwrap().success());
    // Another backup over those overlays is refused, naming the folder.
    let b = ok(p, &st(&["--output", "json", "repo", "backup", "r", "vm"])).json();
    let other = b["id"].as_str().unwrap();
    strata(
        p,
        &st(&[
            "repo",
            "mount",
            "r",
            other,
            "--socket",
            "m.sock",
            "--writable",
            "ov",
        ]),
    )
    .one_error(1, &format!("ov: its overlays go over backup {id}"));
    assert!(!p.join("m.sock").exists());
}
