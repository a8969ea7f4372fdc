//! `strata img write` and `strata img read`: what strata writes passes
//! `qemu-img check` and equals (by `qemu-img compare`) a raw file the test
//! builds; what it reads equals what qemu-io wrote, through backing chains.

mod common;

use common::*;

#[test]
fn writes_match_a_raw_reference_and_pass_qemu_check() {
    let d = tmp();
    let p = d.path();
    let blob = pattern(150_000, 1);
    file_with(p, "blob.bin", &blob);
    for (i, opts) in [
        "cluster_size=64K",
        "cluster_size=4K,refcount_bits=1",
        "extended_l2=on",
        "compat=0.10",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("w{i}.qcow2");
        ok(
            p,
            &["img", "create", "-f", "qcow2", "-o", opts, &name, "4M"],
        );
        ok(
            p,
            &[
                "img", "write", &name, "--offset", "1000", "--from", "blob.bin",
            ],
        );
        ok(
            p,
            &[
                "img",
                "write",
                &name,
                "--offset",
                "2M",
                "--pattern",
                "0xee",
                "--length",
                "300K",
            ],
        );
        ok(
            p,
            &[
                "img", "write", &name, "--offset", "2100K", "--zero", "--length", "10000",
            ],
        );
        ok(
            p,
            &[
                "img",
                "write",
                &name,
                "--offset",
                "3M",
                "--pattern",
                "255",
                "--length",
                "1M",
            ],
        );
        ok(
            p,
            &[
                "img", "write", &name, "--offset", "3M", "--zero", "--unmap", "--length", "64K",
            ],
        );
        let ee = vec![0xee; 300 << 10];
        let zeros = vec![0u8; 10000];
        let ff = vec![0xff; 1 << 20];
        let z64 = vec![0u8; 64 << 10];
        let want = reference(
            p,
            "want.raw",
            4 << 20,
            &[
                (1000, &blob),
                (2 << 20, &ee),
                (2100 << 10, &zeros),
                (3 << 20, &ff),
                (3 << 20, &z64),
            ],
        );
        assert_clean(p, &name);
        assert_same(p, &name, "want.raw");
        // And reading back gives the same bytes as the reference.
        let r = ok(
            p,
            &["img", "read", &name, "--offset", "0", "--length", "4M"],
        );
        assert_eq!(
            r.raw_stdout,
            std::fs::read(&want).expect("read want"),
            "{opts}"
        );
    }
    // Raw images too.
    ok(p, &["img", "create", "-f", "raw", "r.raw", "1M"]);
    ok(
        p,
        &[
            "img",
            "write",
            "r.raw",
            "--offset",
            "512",
            "--pattern",
            "7",
            "--length",
            "4K",
        ],
    );
    let seven = vec![7u8; 4096];
    reference(p, "want.raw", 1 << 20, &[(512, &seven)]);
    assert_same(p, "r.raw", "want.raw");
}

#[test]
fn reads_go_through_the_backing_chain() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-f", "raw", "base.raw", "2M"]);
    qemu_io(p, "raw", "base.raw", &["write -P 0x11 0 1M"]);
    qemu_img(
        p,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "top.qcow2",
        ],
    );
    qemu_io(
        p,
        "qcow2",
        "top.qcow2",
        &["write -P 0x22 64k 4k", "write -z 128k 64k"],
    );
    let r = ok(
        p,
        &[
            "img",
            "read",
            "top.qcow2",
            "--offset",
            "60K",
            "--length",
            "200K",
        ],
    );
    let mut want = vec![0x11u8; 200 << 10];
    want[4 << 10..8 << 10].fill(0x22);
    want[68 << 10..132 << 10].fill(0);
    assert_eq!(r.raw_stdout.len(), want.len());
    assert!(r.raw_stdout == want, "read through the chain differs");
    // -o OUT writes a file instead.
    ok(
        p,
        &[
            "img",
            "read",
            "top.qcow2",
            "--offset",
            "60K",
            "--length",
            "200K",
            "-o",
            "out.bin",
        ],
    );
    assert!(std::fs::read(p.join("out.bin")).expect("out") == want);
    // Writes land in the top image only.
    ok(
        p,
        &[
            "img",
            "write",
            "top.qcow2",
            "--offset",
            "1M",
            "--pattern",
            "0x33",
            "--length",
            "64K",
        ],
    );
    qemu_io(p, "raw", "base.raw", &["read -P 0 1M 64k"]);
    qemu_io(
        p,
        "qcow2",
        "top.qcow2",
        &["read -P 0x33 1M 64k", "read -P 0x11 0 60k"],
    );
    assert_clean(p, "top.qcow2");
}

#[test]
fn write_from_stdin_and_with_a_length_limit() {
    let d = tmp();
    let p = d.path();
    ok(p, &["img", "create", "-f", "qcow2", "a.qcow2", "1M"]);
    let data = pattern(70_000, 2);
    strata_stdin(
        p,
        &["img", "write", "a.qcow2", "--offset", "4096", "--from", "-"],
        &data,
    )
    .expect(0);
    file_with(p, "blob.bin", &pattern(9000, 3));
    ok(
        p,
        &[
            "img", "write", "a.qcow2", "--offset", "512K", "--from", "blob.bin", "--length", "100",
        ],
    );
    let head = pattern(9000, 3)[..100].to_vec();
    reference(p, "want.raw", 1 << 20, &[(4096, &data), (512 << 10, &head)]);
    assert_same(p, "a.qcow2", "want.raw");
    assert_clean(p, "a.qcow2");
}

#[test]
fn out_of_range_and_bad_requests_fail_cleanly() {
    let d = tmp();
    let p = d.path();
    ok(p, &["img", "create", "-f", "qcow2", "a.qcow2", "1M"]);
    let before = std::fs::read(p.join("a.qcow2")).expect("read");
    strata(
        p,
        &[
            "img",
            "write",
            "a.qcow2",
            "--offset",
            "1M",
            "--pattern",
            "1",
            "--length",
            "1",
        ],
    )
    .one_error(1, "a.qcow2");
    strata(
        p,
        &[
            "img",
            "write",
            "a.qcow2",
            "--offset",
            "1020K",
            "--pattern",
            "1",
            "--length",
            "8K",
        ],
    )
    .one_error(1, "a.qcow2");
    file_with(p, "big.bin", &vec![1u8; 70_000]);
    strata(
        p,
        &[
            "img", "write", "a.qcow2", "--offset", "1000K", "--from", "big.bin",
        ],
    )
    .one_error(1, "a.qcow2");
    strata(
        p,
        &[
            "img", "write", "a.qcow2", "--offset", "0", "--from", "big.bin", "--length", "80000",
        ],
    )
    .one_error(1, "big.bin");
    strata(
        p,
        &[
            "img",
            "write",
            "a.qcow2",
            "--offset",
            "0",
            "--from",
            "missing.bin",
        ],
    )
    .one_error(1, "missing.bin");
    strata(
        p,
        &["img", "write", "a.qcow2", "--offset", "0", "--pattern", "1"],
    )
    .one_error(2, "--length");
    strata(
        p,
        &[
            "img",
            "write",
            "a.qcow2",
            "--offset",
            "0",
            "--pattern",
            "300",
            "--length",
            "1",
        ],
    )
    .one_error(2, "300");
    strata(
        p,
        &[
            "img",
            "write",
            "a.qcow2",
            "--offset",
            "0",
            "--pattern",
            "1",
            "--zero",
            "--length",
            "1",
        ],
    )
    .one_error(2, "--zero");
    strata(
        p,
        &["img", "write", "a.qcow2", "--offset", "0", "--length", "1"],
    )
    .one_error(2, "--from");
    strata(
        p,
        &[
            "img", "write", "a.qcow2", "--offset", "x", "--zero", "--length", "1",
        ],
    )
    .one_error(2, "x");
    assert!(
        std::fs::read(p.join("a.qcow2")).expect("read") == before,
        "failed writes changed the image"
    );
    strata(
        p,
        &["img", "read", "a.qcow2", "--offset", "1M", "--length", "1"],
    )
    .one_error(1, "a.qcow2");
    strata(
        p,
        &[
            "img",
            "read",
            "nope.qcow2",
            "--offset",
            "0",
            "--length",
            "1",
        ],
    )
    .one_error(1, "nope.qcow2");
    strata(
        p,
        &[
            "img",
            "write",
            "nope.qcow2",
            "--offset",
            "0",
            "--zero",
            "--length",
            "1",
        ],
    )
    .one_error(1, "nope.qcow2");
    assert!(!p.join("nope.qcow2").exists());
}

/// Write-zeroes on a fresh version-3 image without a backing file marks the
/// clusters zero (present, reading as zero), as QEMU does, rather than
/// leaving them unallocated: rebased onto another image later (an
/// incremental backup), they must still read as zero.
#[test]
fn write_zeroes_without_a_backing_file_marks_clusters_as_qemu_does() {
    let d = tmp();
    let p = d.path();
    for f in ["s.qcow2", "q.qcow2", "base.qcow2"] {
        qemu_img(p, &["create", "-q", "-f", "qcow2", f, "4M"]);
    }
    ok(
        p,
        &[
            "img", "write", "s.qcow2", "--offset", "1M", "--zero", "--length", "1M",
        ],
    );
    qemu_io(p, "qcow2", "q.qcow2", &["write -z 1M 1M"]);
    let map = |f: &str| qemu_img(p, &["map", "--output=json", f]).stdout;
    assert_eq!(map("s.qcow2"), map("q.qcow2"));
    assert!(
        map("s.qcow2").contains("\"present\": true"),
        "{}",
        map("s.qcow2")
    );
    // Over a backing file full of data, the zeros still read as zeros.
    qemu_io(p, "qcow2", "base.qcow2", &["write -P 7 0 4M"]);
    qemu_img(
        p,
        &["rebase", "-u", "-F", "qcow2", "-b", "base.qcow2", "s.qcow2"],
    );
    qemu_io(
        p,
        "qcow2",
        "s.qcow2",
        &["read -P 0 1M 1M", "read -P 7 0 1M"],
    );
}
