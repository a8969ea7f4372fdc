//! Exports of points in time: an internal snapshot served without applying
//! it (`snapshot=`) reads, maps and compares as `qemu-nbd -l` serves it,
//! while the active state has moved on; writes are refused, and a missing
//! snapshot or a raw image is refused by name when the server starts.

mod common;
use common::nbd::*;
use common::*;

#[test]
fn snapshot_exports_match_qemu_nbd_load_snapshot() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "base.qcow2", "64M"]);
    qemu_io(p, "qcow2", "base.qcow2", &["write -P 2 0 8M"]);
    let backing = ["-b", "base.qcow2", "-F", "qcow2"];
    qemu_img(
        p,
        &[
            &["create", "-q", "-f", "qcow2"][..],
            &backing,
            &["d.qcow2", "64M"],
        ]
        .concat(),
    );
    qemu_io(
        p,
        "qcow2",
        "d.qcow2",
        &["write -P 7 1M 2M", "write -z 4M 1M", "write -P 9 20M 64k"],
    );
    qemu_img(p, &["snapshot", "-c", "s1", "d.qcow2"]);
    // The active state moves on.
    qemu_io(
        p,
        "qcow2",
        "d.qcow2",
        &["write -P 1 1M 1M", "discard 20M 64k", "write -P 5 40M 1M"],
    );
    let abs = p.join("q.sock").display().to_string();
    let q_args = [
        "-t", "-r", "-f", "qcow2", "-l", "s1", "-A", "-k", &abs, "d.qcow2",
    ];
    let theirs = Server::start(p, "qemu-nbd", &q_args, "q.sock");
    let ours = strata_nbd(
        p,
        "s.sock",
        &[
            "name=,file=d.qcow2,snapshot=s1,allocation-depth",
            "name=now,file=d.qcow2,readonly",
        ],
    );
    let (s_uri, q_uri) = (ours.uri(p, ""), theirs.uri(p, ""));
    for ctx in ["base:allocation", "qemu:allocation-depth"] {
        let map = |uri: &str| {
            run_in(p, "nbdinfo", &[&format!("--map={ctx}"), uri])
                .expect(0)
                .stdout
        };
        let (a, b) = (map(&s_uri), map(&q_uri));
        assert_eq!(a, b, "{ctx}");
        assert!(a.lines().count() > 3, "{ctx}: {a}");
    }
    let r = qemu_img(p, &["compare", &s_uri, &q_uri]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // The snapshot's bytes, not the active state's: the two exports differ.
    let r = run_in(p, "qemu-img", &["compare", &s_uri, &ours.uri(p, "now")]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let io = run_in(
        p,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 7 1M 2M",
            "-c",
            "read -P 9 20M 64k",
            &s_uri,
        ],
    );
    assert!(!io.stdout.contains("fail"), "{}", io.stdout);
    // Read-only, as qemu-nbd -l is.
    let w = run_in(
        p,
        "qemu-io",
        &["-f", "raw", "-c", "write -P 3 0 4k", &s_uri],
    );
    assert!(
        w.code != 0 || w.stdout.contains("failed") || w.stderr.contains("read-only"),
        "{}{}",
        w.stdout,
        w.stderr
    );
    drop(theirs);
    assert!(ours.stop().success());
    assert_clean(p, "d.qcow2");
    qemu_io(
        p,
        "qcow2",
        "d.qcow2",
        &["read -P 1 1M 1M", "read -P 5 40M 1M"],
    );

    // Refused when the server starts, by name.
    qemu_img(p, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    for (export, named) in [
        ("file=d.qcow2,snapshot=nope", "nope"),
        ("file=r.raw,snapshot=s1", "qcow2"),
    ] {
        let bad = strata(p, &["nbd", "serve", "--socket", "x.sock", export]);
        assert_ne!(bad.code, 0);
        assert!(bad.stderr.contains(named), "{}", bad.stderr);
        assert!(!p.join("x.sock").exists());
    }
}
