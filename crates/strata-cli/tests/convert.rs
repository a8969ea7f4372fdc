//! `strata img convert`, checked with `qemu-img compare` and
//! `qemu-img check`: qcow2 to raw, raw to qcow2, compressed (zlib and
//! zstd), and over a backing file with -B.

mod common;

use common::*;
use std::path::Path;

/// A qcow2 with data, a zero run and holes, made by qemu-io.
fn source(p: &Path, name: &str) {
    qemu_img(p, &["create", "-f", "qcow2", name, "3M"]);
    qemu_io(
        p,
        "qcow2",
        name,
        &[
            "write -P 1 0 100k",
            "write -P 2 1M 64k",
            "write -z 2M 128k",
            "write -P 3 2600k 1k",
        ],
    );
}

#[test]
fn qcow2_to_raw_and_back() {
    let d = tmp();
    let p = d.path();
    source(p, "src.qcow2");
    let r = ok(p, &["img", "convert", "-O", "raw", "src.qcow2", "out.raw"]);
    assert_eq!(
        r.stderr, "",
        "no progress bar when stderr is not a terminal"
    );
    assert_same(p, "src.qcow2", "out.raw");
    assert_eq!(
        qemu_img(p, &["info", "--output=json", "out.raw"]).json()["format"],
        "raw"
    );
    ok(
        p,
        &[
            "img",
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "out.raw",
            "back.qcow2",
        ],
    );
    assert_same(p, "src.qcow2", "back.qcow2");
    assert_clean(p, "back.qcow2");
    // Zeros are not stored: the qcow2 holds about as much as the data.
    let map = qemu_img(p, &["map", "--output=json", "back.qcow2"]).json();
    let data: u64 = map
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap_or(0))
        .sum();
    assert!(data <= 256 << 10, "{data} bytes of data for ~165K written");
    // With options.
    ok(
        p,
        &[
            "img",
            "convert",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4K,compat=0.10",
            "src.qcow2",
            "opt.qcow2",
        ],
    );
    assert_same(p, "src.qcow2", "opt.qcow2");
    assert_clean(p, "opt.qcow2");
    let info = qemu_img(p, &["info", "--output=json", "opt.qcow2"]).json();
    assert_eq!(info["cluster-size"], 4096);
    assert_eq!(info["format-specific"]["data"]["compat"], "0.10");
}

#[test]
fn compressed_with_zlib_and_zstd() {
    let d = tmp();
    let p = d.path();
    source(p, "src.qcow2");
    for ct in ["zlib", "zstd"] {
        let out = format!("c-{ct}.qcow2");
        let opt = format!("compression_type={ct}");
        ok(
            p,
            &[
                "img",
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &opt,
                "src.qcow2",
                &out,
            ],
        );
        assert_same(p, "src.qcow2", &out);
        assert_clean(p, &out);
        let info = qemu_img(p, &["info", "--output=json", &out]).json();
        assert_eq!(info["format-specific"]["data"]["compression-type"], ct);
        let map = qemu_img(p, &["map", "--output=json", &out]).json();
        assert!(
            map.as_array()
                .expect("array")
                .iter()
                .any(|e| e["compressed"] == true),
            "{ct}: nothing compressed"
        );
        // qemu-img reads strata's compressed clusters back byte for byte.
        ok(
            p,
            &["img", "convert", "-O", "raw", &out, &format!("{ct}.raw")],
        );
        qemu_img(p, &["convert", "-O", "raw", &out, &format!("{ct}-q.raw")]);
        assert!(
            std::fs::read(p.join(format!("{ct}.raw"))).expect("r")
                == std::fs::read(p.join(format!("{ct}-q.raw"))).expect("r")
        );
    }
    // A chain source is flattened.
    qemu_img(
        p,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "src.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(p, "qcow2", "top.qcow2", &["write -P 9 1M 4k"]);
    ok(
        p,
        &[
            "img",
            "convert",
            "-c",
            "-O",
            "qcow2",
            "top.qcow2",
            "flat.qcow2",
        ],
    );
    assert_same(p, "top.qcow2", "flat.qcow2");
    assert!(qemu_img(p, &["info", "--output=json", "flat.qcow2"])
        .json()
        .get("backing-filename")
        .is_none());
}

#[test]
fn over_a_backing_file_copies_only_the_top() {
    let d = tmp();
    let p = d.path();
    source(p, "base.qcow2");
    qemu_img(
        p,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(
        p,
        "qcow2",
        "top.qcow2",
        &["write -P 7 64k 64k", "write -z 1M 4k"],
    );
    qemu_img(p, &["convert", "-O", "raw", "base.qcow2", "base-copy.raw"]);
    ok(
        p,
        &[
            "img",
            "convert",
            "-O",
            "qcow2",
            "-B",
            "base-copy.raw",
            "-F",
            "raw",
            "top.qcow2",
            "new.qcow2",
        ],
    );
    assert_clean(p, "new.qcow2");
    assert_same(p, "top.qcow2", "new.qcow2");
    let info = qemu_img(p, &["info", "--output=json", "new.qcow2"]).json();
    assert_eq!(info["backing-filename"], "base-copy.raw");
    assert_eq!(info["backing-filename-format"], "raw");
    // Only what the top image held was copied.
    let map = qemu_img(p, &["map", "--output=json", "new.qcow2"]).json();
    let own: u64 = map
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["depth"] == 0 && e["present"] == true)
        .map(|e| e["length"].as_u64().unwrap_or(0))
        .sum();
    assert!(own <= 128 << 10, "the new top holds {own} bytes");
    // Without -F the backing format is probed and recorded.
    ok(
        p,
        &[
            "img",
            "convert",
            "-O",
            "qcow2",
            "-B",
            "base.qcow2",
            "top.qcow2",
            "new2.qcow2",
        ],
    );
    assert_same(p, "top.qcow2", "new2.qcow2");
    assert_eq!(
        qemu_img(p, &["info", "--output=json", "new2.qcow2"]).json()["backing-filename-format"],
        "qcow2"
    );
}

#[test]
fn refused_requests_leave_no_target() {
    let d = tmp();
    let p = d.path();
    source(p, "src.qcow2");
    let cases: &[(&[&str], i32, &str)] = &[
        (&["-c", "-O", "raw"], 2, "-c"),
        (&["-O", "raw", "-B", "b.qcow2"], 2, "-B"),
        (
            &["-O", "qcow2", "-o", "cluster_size=1K,extended_l2=on"],
            2,
            "extended_l2",
        ),
        (&["-O", "raw", "-o", "compat=1.1"], 2, "compat"),
        (&["-O", "qcow2", "-s", "snap1"], 1, "'snap1' not found"),
        (&["-O", "qcow2", "--bitmap", "b0"], 2, "--bitmap needs -B"),
        (&["-O", "vdi"], 2, "vdi"),
        (&["-O", "qcow2", "-B", "missing.qcow2"], 1, "missing.qcow2"),
    ];
    for (extra, code, needle) in cases {
        let mut args = vec!["img", "convert"];
        args.extend_from_slice(extra);
        args.extend(["src.qcow2", "dst.img"]);
        strata(p, &args).one_error(*code, needle);
        assert!(!p.join("dst.img").exists(), "{extra:?} left a target");
    }
    strata(p, &["img", "convert", "-O", "raw", "nope.qcow2", "dst.img"]).one_error(1, "nope.qcow2");
    assert!(!p.join("dst.img").exists());
    // An existing target is not overwritten.
    std::fs::write(p.join("dst.img"), b"keep").expect("write");
    strata(p, &["img", "convert", "-O", "raw", "src.qcow2", "dst.img"]).one_error(1, "dst.img");
    assert_eq!(std::fs::read(p.join("dst.img")).expect("read"), b"keep");
}

/// An incremental backup chain from a bitmap: a full backup when the bitmap
/// is made, then three rounds of random writes (by QEMU and by strata, both
/// tracking), each followed by `convert --bitmap -B PREVIOUS` and a clear of
/// the bitmap. After every round the chain restored to raw equals the disk
/// (`qemu-img compare`), and each increment holds only changed clusters.
#[test]
fn incremental_backup_chain_from_a_bitmap() {
    let d = tmp();
    let p = d.path();
    const SIZE: u64 = 32 << 20;
    qemu_img(p, &["create", "-q", "-f", "qcow2", "disk.qcow2", "32M"]);
    qemu_io(p, "qcow2", "disk.qcow2", &["write -P 1 0 16M"]);
    ok(p, &["img", "bitmap", "add", "disk.qcow2", "cbt"]);
    ok(
        p,
        &["img", "convert", "-O", "qcow2", "disk.qcow2", "full.qcow2"],
    );
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut previous = "full.qcow2".to_string();
    for round in 1..=3 {
        let mut changed = 0;
        for _ in 0..6 {
            let len = 1 + rand(300_000);
            let off = rand(SIZE - len);
            changed += len;
            let cmd = match rand(4) {
                0 => format!("write -z {off} {len}"),
                1 => format!("discard {off} {len}"),
                _ => format!("write -P {} {off} {len}", rand(250)),
            };
            qemu_io(p, "qcow2", "disk.qcow2", &[&cmd]);
            let len = 1 + rand(70_000);
            let off = rand(SIZE - len);
            changed += len;
            let (off, len, pat) = (off.to_string(), len.to_string(), round.to_string());
            ok(
                p,
                &[
                    "img",
                    "write",
                    "disk.qcow2",
                    "--offset",
                    &off,
                    "--pattern",
                    &pat,
                    "--length",
                    &len,
                ],
            );
        }
        let inc = format!("inc{round}.qcow2");
        ok(
            p,
            &[
                "img",
                "convert",
                "--bitmap",
                "cbt",
                "-B",
                &previous,
                "-F",
                "qcow2",
                "-O",
                "qcow2",
                "disk.qcow2",
                &inc,
            ],
        );
        ok(p, &["img", "bitmap", "clear", "disk.qcow2", "cbt"]);
        qemu_img(p, &["check", &inc]);
        let restored = format!("restore{round}.raw");
        ok(p, &["img", "convert", "-O", "raw", &inc, &restored]);
        qemu_img(p, &["compare", "disk.qcow2", &restored]);
        // Only the clusters the round changed are in the increment.
        let map = qemu_img(p, &["map", "--output=json", &inc]).json();
        let own: u64 = map
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["depth"] == 0 && e["present"] == true)
            .map(|e| e["length"].as_u64().unwrap())
            .sum();
        assert!(
            own > 0 && own <= changed + 24 * (64 << 10),
            "{inc} holds {own} bytes of its own for {changed} changed"
        );
        previous = inc;
    }
    for (args, want) in [
        (
            vec![
                "img",
                "convert",
                "--bitmap",
                "cbt",
                "-O",
                "qcow2",
                "disk.qcow2",
                "x.qcow2",
            ],
            "--bitmap needs -B",
        ),
        (
            vec![
                "img",
                "convert",
                "--bitmap",
                "nope",
                "-B",
                "full.qcow2",
                "-O",
                "qcow2",
                "disk.qcow2",
                "y.qcow2",
            ],
            "'nope' not found",
        ),
    ] {
        let r = strata(p, &args);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert!(!p.join("x.qcow2").exists() && !p.join("y.qcow2").exists());
    }
}
