//! `strata img create` and `strata img info`, judged by qemu-img: images
//! strata creates pass `qemu-img check` and show the asked-for options in
//! `qemu-img info`; `strata img info` agrees with `qemu-img info` on images
//! qemu-img made.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The keys strata and qemu-img must agree on.
const SHARED: [&str; 8] = [
    "virtual-size",
    "cluster-size",
    "format",
    "format-specific",
    "backing-filename",
    "backing-filename-format",
    "full-backing-filename",
    "dirty-flag",
];

fn assert_info_agrees(s: &Value, q: &Value) {
    for key in SHARED {
        assert_eq!(
            s.get(key),
            q.get(key),
            "key {key} differs\nstrata: {s:#}\nqemu: {q:#}"
        );
    }
    assert_eq!(s["filename"], q["filename"]);
    assert_eq!(
        s["children"][0]["info"]["virtual-size"],
        q["children"][0]["info"]["virtual-size"]
    );
}

fn info_both(dir: &Path, file: &str, chain: bool) -> (Value, Value) {
    let mut sargs = vec!["img", "info", "--output", "json"];
    let mut qargs = vec!["info", "--output=json"];
    if chain {
        sargs.push("--backing-chain");
        qargs.push("--backing-chain");
    }
    sargs.push(file);
    qargs.push(file);
    (ok(dir, &sargs).json(), qemu_img(dir, &qargs).json())
}

#[test]
fn created_images_pass_qemu_check_and_carry_their_options() {
    let d = tmp();
    let cases: &[(&str, &[(&str, Value)])] = &[
        ("", &[("cluster-size", 65536.into())]),
        ("cluster_size=4K", &[("cluster-size", 4096.into())]),
        (
            "cluster_size=512,refcount_bits=1",
            &[("cluster-size", 512.into())],
        ),
        (
            "cluster_size=2M,refcount_bits=64",
            &[("cluster-size", (2 << 20).into())],
        ),
        ("compat=0.10", &[]),
        (
            "extended_l2=on,cluster_size=128K",
            &[("cluster-size", 131072.into())],
        ),
        ("compression_type=zstd", &[]),
        ("lazy_refcounts=on,refcount_bits=8", &[]),
    ];
    for (i, (opts, want)) in cases.iter().enumerate() {
        let name = format!("c{i}.qcow2");
        let mut args = vec!["img", "create", "-f", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([name.as_str(), "3M"]);
        ok(d.path(), &args);
        assert_clean(d.path(), &name);
        let q = qemu_img(d.path(), &["info", "--output=json", &name]).json();
        assert_eq!(q["virtual-size"], 3 << 20, "{opts}");
        for (k, v) in *want {
            assert_eq!(&q[*k], v, "{opts}: {k}");
        }
        let data = &q["format-specific"]["data"];
        let has = |s: &str| opts.contains(s);
        assert_eq!(
            data["compat"],
            if has("compat=0.10") { "0.10" } else { "1.1" },
            "{opts}"
        );
        assert_eq!(
            data["compression-type"],
            if has("zstd") { "zstd" } else { "zlib" },
            "{opts}"
        );
        let bits = opts
            .split(',')
            .find_map(|o| o.strip_prefix("refcount_bits="))
            .map_or(16, |b| b.parse().expect("n"));
        assert_eq!(data["refcount-bits"], bits, "{opts}");
        if !has("compat=0.10") {
            assert_eq!(data["lazy-refcounts"], has("lazy_refcounts=on"), "{opts}");
            assert_eq!(data["extended-l2"], has("extended_l2=on"), "{opts}");
        }
        let (s, q) = info_both(d.path(), &name, false);
        assert_info_agrees(&s, &q);
        let mode = std::fs::metadata(d.path().join(&name))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} must not be world-readable");
    }
}

#[test]
fn info_agrees_with_qemu_on_images_qemu_made() {
    let d = tmp();
    let cases = [
        "cluster_size=65536",
        "compat=0.10",
        "extended_l2=on",
        "compression_type=zstd,lazy_refcounts=on",
        "refcount_bits=2,cluster_size=8K",
    ];
    for (i, opts) in cases.iter().enumerate() {
        let name = format!("q{i}.qcow2");
        qemu_img(
            d.path(),
            &["create", "-f", "qcow2", "-o", opts, &name, "5M"],
        );
        qemu_io(
            d.path(),
            "qcow2",
            &name,
            &["write -P 7 0 100k", "write -z 1M 64k"],
        );
        let (s, q) = info_both(d.path(), &name, false);
        assert_info_agrees(&s, &q);
        // The human text is qemu-img's, line for line.
        let sh = ok(d.path(), &["img", "info", &name]).stdout;
        let qh = qemu_img(d.path(), &["info", &name]).stdout;
        assert_eq!(sh, qh, "{opts}");
    }
    qemu_img(d.path(), &["create", "-f", "raw", "r.raw", "1000"]);
    let (s, q) = info_both(d.path(), "r.raw", false);
    assert_info_agrees(&s, &q);
    assert!(s.get("format-specific").is_none());
}

#[test]
fn internal_snapshots_are_listed_as_qemu_lists_them() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-f", "qcow2", "s.qcow2", "2M"]);
    qemu_io(p, "qcow2", "s.qcow2", &["write -P 1 0 64k"]);
    qemu_img(p, &["snapshot", "-c", "first", "s.qcow2"]);
    qemu_io(p, "qcow2", "s.qcow2", &["write -P 2 0 64k"]);
    qemu_img(
        p,
        &["snapshot", "-c", "a-much-longer-snapshot-name", "s.qcow2"],
    );
    let (s, q) = info_both(p, "s.qcow2", false);
    assert_info_agrees(&s, &q);
    assert_eq!(s["snapshots"], q["snapshots"]);
    assert_eq!(s["snapshots"].as_array().map(Vec::len), Some(2));
    let sh = ok(p, &["img", "info", "s.qcow2"]).stdout;
    let qh = qemu_img(p, &["info", "s.qcow2"]).stdout;
    assert_eq!(sh, qh);
}

#[test]
fn backing_chain_info_agrees_with_qemu() {
    let d = tmp();
    let p = d.path();
    std::fs::create_dir(p.join("sub")).expect("mkdir");
    qemu_img(p, &["create", "-f", "raw", "base.raw", "4M"]);
    qemu_img(
        p,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "../base.raw",
            "-F",
            "raw",
            "sub/mid.qcow2",
        ],
    );
    qemu_img(
        p,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "sub/mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(p, "qcow2", "sub/mid.qcow2", &["write -P 1 0 64k"]);
    for file in ["top.qcow2", "sub/mid.qcow2"] {
        let (s, q) = info_both(p, file, true);
        let (s, q) = (s.as_array().expect("array"), q.as_array().expect("array"));
        assert_eq!(s.len(), q.len(), "{file}");
        for (a, b) in s.iter().zip(q) {
            assert_info_agrees(a, b);
        }
        let (s1, q1) = info_both(p, file, false);
        assert_info_agrees(&s1, &q1);
        assert_eq!(&s1, &s[0], "{file}: the first chain element is plain info");
        let sh = ok(p, &["img", "info", "--backing-chain", file]).stdout;
        let qh = qemu_img(p, &["info", "--backing-chain", file]).stdout;
        assert_eq!(sh, qh, "{file}");
    }
    // Absolute paths too.
    let top = p.join("top.qcow2");
    let (s, q) = info_both(p, top.to_str().expect("utf-8"), true);
    assert_eq!(s[1]["filename"], q[1]["filename"]);
    assert_eq!(s[0]["full-backing-filename"], q[0]["full-backing-filename"]);
}

#[test]
fn info_reads_only_the_header_so_a_missing_backing_file_is_fine() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-f", "qcow2", "base.qcow2", "2M"]);
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
    std::fs::remove_file(p.join("base.qcow2")).expect("rm");
    let s = ok(p, &["img", "info", "--output", "json", "top.qcow2"]).json();
    assert_eq!(s["backing-filename"], "base.qcow2");
    assert_eq!(s["virtual-size"], 2 << 20);
    strata(p, &["img", "info", "--backing-chain", "top.qcow2"]).one_error(1, "base.qcow2");
}

#[test]
fn dirty_flag_of_an_image_left_open_matches_qemu() {
    let d = tmp();
    let p = d.path();
    qemu_img(
        p,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            "d.qcow2",
            "1M",
        ],
    );
    // qemu-io killed by its own signal leaves the dirty bit set.
    let r = run_in(
        p,
        "qemu-io",
        &["-c", "write 0 4k", "-c", "sigraise 9", "d.qcow2"],
    );
    assert_ne!(r.code, 0);
    let (s, q) = info_both(p, "d.qcow2", false);
    assert_eq!(
        q["dirty-flag"], true,
        "qemu-io should have left the image dirty"
    );
    assert_info_agrees(&s, &q);
    assert!(ok(p, &["img", "info", "d.qcow2"])
        .stdout
        .contains("cleanly shut down: no"));
}

#[test]
fn create_over_a_backing_file_takes_its_size_and_resolves_relative_names() {
    let d = tmp();
    let p = d.path();
    std::fs::create_dir(p.join("sub")).expect("mkdir");
    ok(p, &["img", "create", "-f", "qcow2", "sub/base.qcow2", "3M"]);
    ok(
        p,
        &[
            "img",
            "write",
            "sub/base.qcow2",
            "--offset",
            "0",
            "--pattern",
            "0x5a",
            "--length",
            "128K",
        ],
    );
    // BACKING is relative to FILE's folder, not to the current directory.
    ok(
        p,
        &[
            "img",
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "sub/top.qcow2",
        ],
    );
    ok(
        p,
        &[
            "img",
            "write",
            "sub/top.qcow2",
            "--offset",
            "64K",
            "--pattern",
            "0xa5",
            "--length",
            "4K",
        ],
    );
    let q = qemu_img(p, &["info", "--output=json", "sub/top.qcow2"]).json();
    assert_eq!(q["virtual-size"], 3 << 20);
    assert_eq!(q["backing-filename"], "base.qcow2");
    assert_eq!(
        q["backing-filename-format"], "qcow2",
        "the probed backing format is recorded"
    );
    assert_clean(p, "sub/top.qcow2");
    let a = vec![0x5a; 128 << 10];
    let b = vec![0xa5; 4096];
    reference(p, "want.raw", 3 << 20, &[(0, &a), (64 << 10, &b)]);
    assert_same(p, "sub/top.qcow2", "want.raw");
    // An explicit size and -F, with a raw backing file.
    ok(p, &["img", "create", "-f", "raw", "r.raw", "1M"]);
    ok(
        p,
        &[
            "img", "create", "-f", "qcow2", "-b", "r.raw", "-F", "raw", "o.qcow2", "2M",
        ],
    );
    let q = qemu_img(p, &["info", "--output=json", "o.qcow2"]).json();
    assert_eq!(q["virtual-size"], 2 << 20);
    assert_eq!(q["backing-filename-format"], "raw");
    // A backing file that does not exist is refused and nothing is created.
    strata(
        p,
        &[
            "img",
            "create",
            "-f",
            "qcow2",
            "-b",
            "nope.qcow2",
            "x.qcow2",
        ],
    )
    .one_error(1, "nope.qcow2");
    assert!(!p.join("x.qcow2").exists());
}

#[test]
fn raw_images_round_up_and_preallocate() {
    let d = tmp();
    let p = d.path();
    ok(p, &["img", "create", "-f", "raw", "a.raw", "1000"]);
    assert_eq!(
        std::fs::metadata(p.join("a.raw")).expect("stat").len(),
        1024,
        "rounded up as qemu-img does"
    );
    for mode in ["off", "falloc", "full"] {
        let name = format!("{mode}.raw");
        let opt = format!("preallocation={mode}");
        ok(p, &["img", "create", "-f", "raw", "-o", &opt, &name, "2M"]);
        let q = qemu_img(p, &["info", "--output=json", &name]).json();
        assert_eq!(q["virtual-size"], 2 << 20);
        assert_eq!(q["format"], "raw");
        let actual = q["actual-size"].as_u64().expect("actual-size");
        if mode == "off" {
            assert!(actual < 1 << 20, "{mode}: {actual}");
        } else {
            assert!(actual >= 2 << 20, "{mode}: {actual}");
        }
    }
}

#[test]
fn qcow2_preallocation_maps_every_cluster_as_qemu_does() {
    let d = tmp();
    let p = d.path();
    for mode in ["metadata", "falloc", "full"] {
        let (s, q) = (format!("s-{mode}.qcow2"), format!("q-{mode}.qcow2"));
        let opt = format!("preallocation={mode}");
        ok(p, &["img", "create", "-f", "qcow2", "-o", &opt, &s, "1M"]);
        qemu_img(p, &["create", "-f", "qcow2", "-o", &opt, &q, "1M"]);
        assert_clean(p, &s);
        let sm = qemu_img(p, &["map", "--output=json", &s]).json();
        let qm = qemu_img(p, &["map", "--output=json", &q]).json();
        assert_eq!(sm, qm, "{mode}");
        // strata's map of qemu's image is qemu's, too.
        let strata_map = ok(p, &["img", "map", "--output", "json", &q]).stdout;
        assert_eq!(
            strata_map,
            qemu_img(p, &["map", "--output=json", &q]).stdout,
            "{mode}"
        );
    }
}

#[test]
fn bad_create_requests_fail_before_touching_files() {
    let d = tmp();
    let p = d.path();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["-o", "cluster_size=3K"], 2, "cluster_size"),
        (&["-o", "cluster_size=4M"], 2, "cluster_size"),
        (&["-o", "refcount_bits=3"], 2, "refcount_bits"),
        (&["-o", "compat=2.0"], 2, "compat"),
        (&["-o", "extended_l2=maybe"], 2, "extended_l2"),
        (&["-o", "compression_type=lzo"], 2, "compression_type"),
        (&["-o", "nosuch=1"], 2, "nosuch"),
        (
            &["-o", "compat=0.10,lazy_refcounts=on"],
            2,
            "lazy_refcounts",
        ),
        (&["-o", "extended_l2=on,cluster_size=4K"], 2, "extended_l2"),
        (&["-o", "preallocation=some"], 2, "preallocation"),
        (
            &["-f", "raw", "-o", "preallocation=metadata"],
            2,
            "preallocation",
        ),
        (&["-f", "raw", "-o", "cluster_size=64K"], 2, "cluster_size"),
        (&["-f", "raw", "-b", "x.qcow2"], 2, "backing"),
        (&["-F", "raw"], 2, "-F"),
        (&["-f", "vmdk"], 2, "vmdk"),
    ];
    for (extra, code, needle) in cases {
        let mut args = vec!["img", "create"];
        args.extend_from_slice(extra);
        args.extend(["new.img", "1M"]);
        strata(p, &args).one_error(*code, needle);
        assert!(!p.join("new.img").exists(), "{extra:?} created a file");
    }
    strata(p, &["img", "create", "new.img", "12Q"]).one_error(2, "12Q");
    strata(p, &["img", "create", "new.img"]).one_error(2, "size");
    assert!(!p.join("new.img").exists());
    ok(p, &["img", "create", "new.img", "1M"]);
    strata(p, &["img", "create", "new.img", "2M"]).one_error(1, "new.img");
    assert_eq!(
        qemu_img(p, &["info", "--output=json", "new.img"]).json()["virtual-size"],
        1 << 20,
        "not overwritten"
    );
}
