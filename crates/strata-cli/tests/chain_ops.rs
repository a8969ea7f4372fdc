//! `strata img commit`, `rebase`, `resize` and `compare`, each checked with
//! qemu-img (compare against raw references, check, info).

mod common;

use common::*;
use std::path::Path;

/// base.raw (1 at 0..1M) ← mid.qcow2 (2 at 1M..1M+64K) ← top.qcow2 (3 at 2M..2M+4K, zeros at 0..64K).
fn chain(p: &Path) {
    qemu_img(p, &["create", "-f", "raw", "base.raw", "4M"]);
    qemu_io(p, "raw", "base.raw", &["write -P 1 0 1M"]);
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
            "mid.qcow2",
        ],
    );
    qemu_io(p, "qcow2", "mid.qcow2", &["write -P 2 1M 64k"]);
    qemu_img(
        p,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(
        p,
        "qcow2",
        "top.qcow2",
        &["write -P 3 2M 4k", "write -z 0 64k"],
    );
}

fn flat(p: &Path, name: &str, of: &str) {
    qemu_img(p, &["convert", "-O", "raw", of, name]);
}

#[test]
fn commit_into_the_backing_file_empties_the_top() {
    let d = tmp();
    let p = d.path();
    chain(p);
    flat(p, "want.raw", "top.qcow2");
    flat(p, "base-before.raw", "base.raw");
    let r = ok(p, &["img", "commit", "top.qcow2"]);
    assert_eq!(r.stdout, "Image committed.\n");
    assert_same(p, "mid.qcow2", "want.raw");
    assert_same(p, "top.qcow2", "want.raw");
    assert_same(p, "base.raw", "base-before.raw");
    assert_clean(p, "mid.qcow2");
    assert_clean(p, "top.qcow2");
    let map = qemu_img(p, &["map", "--output=json", "top.qcow2"]).json();
    assert!(
        map.as_array()
            .expect("array")
            .iter()
            .all(|e| e["depth"] != 0),
        "top still holds data: {map}"
    );
}

#[test]
fn commit_d_keeps_the_top() {
    let d = tmp();
    let p = d.path();
    chain(p);
    flat(p, "want.raw", "top.qcow2");
    flat(p, "top-before.raw", "top.qcow2");
    let before = qemu_img(p, &["map", "--output=json", "top.qcow2"]).json();
    ok(p, &["img", "commit", "-d", "top.qcow2"]);
    assert_same(p, "mid.qcow2", "want.raw");
    assert_same(p, "top.qcow2", "want.raw");
    assert_eq!(
        qemu_img(p, &["map", "--output=json", "top.qcow2"]).json()[0],
        before[0]
    );
    assert_clean(p, "top.qcow2");
    assert_clean(p, "mid.qcow2");
}

#[test]
fn commit_b_into_a_deeper_base() {
    let d = tmp();
    let p = d.path();
    chain(p);
    flat(p, "want.raw", "top.qcow2");
    let own = |f: &str| {
        let m = qemu_img(p, &["map", "--output=json", f]).json();
        m.as_array()
            .expect("array")
            .iter()
            .filter(|e| e["depth"] == 0)
            .cloned()
            .collect::<Vec<_>>()
    };
    let mid_before = own("mid.qcow2");
    ok(p, &["img", "commit", "-b", "base.raw", "top.qcow2"]);
    assert_same(p, "base.raw", "want.raw");
    assert_same(p, "top.qcow2", "want.raw");
    // -b implies -d: top keeps its data, mid is untouched.
    let map = qemu_img(p, &["map", "--output=json", "top.qcow2"]).json();
    assert!(map
        .as_array()
        .expect("array")
        .iter()
        .any(|e| e["depth"] == 0 && e["data"] == true));
    assert_eq!(
        own("mid.qcow2"),
        mid_before,
        "mid's own clusters are untouched"
    );
    qemu_io(p, "qcow2", "mid.qcow2", &["read -P 2 1M 64k"]);
    assert_clean(p, "top.qcow2");
    assert_clean(p, "mid.qcow2");
    // A base that is not in the chain is refused.
    qemu_img(p, &["create", "-f", "qcow2", "other.qcow2", "4M"]);
    strata(p, &["img", "commit", "-b", "other.qcow2", "top.qcow2"]).one_error(1, "other.qcow2");
    // A standalone image has nothing to commit into.
    strata(p, &["img", "commit", "other.qcow2"]).one_error(1, "other.qcow2");
}

#[test]
fn rebase_safe_keeps_what_the_guest_sees() {
    let d = tmp();
    let p = d.path();
    chain(p);
    flat(p, "want.raw", "top.qcow2");
    // Onto the base directly, skipping mid: mid's data must move into top.
    ok(
        p,
        &["img", "rebase", "-b", "base.raw", "-F", "raw", "top.qcow2"],
    );
    assert_same(p, "top.qcow2", "want.raw");
    assert_clean(p, "top.qcow2");
    let info = qemu_img(p, &["info", "--output=json", "top.qcow2"]).json();
    assert_eq!(info["backing-filename"], "base.raw");
    assert_eq!(info["backing-filename-format"], "raw");
    // Onto a different image with other contents, format probed.
    qemu_img(p, &["create", "-f", "qcow2", "other.qcow2", "4M"]);
    qemu_io(p, "qcow2", "other.qcow2", &["write -P 9 0 4M"]);
    ok(p, &["img", "rebase", "-b", "other.qcow2", "top.qcow2"]);
    assert_same(p, "top.qcow2", "want.raw");
    assert_eq!(
        qemu_img(p, &["info", "--output=json", "top.qcow2"]).json()["backing-filename-format"],
        "qcow2"
    );
    // -b "": standalone.
    ok(p, &["img", "rebase", "-b", "", "top.qcow2"]);
    assert_same(p, "top.qcow2", "want.raw");
    assert_clean(p, "top.qcow2");
    assert!(qemu_img(p, &["info", "--output=json", "top.qcow2"])
        .json()
        .get("backing-filename")
        .is_none());
}

#[test]
fn rebase_unsafe_only_rewrites_the_header() {
    let d = tmp();
    let p = d.path();
    chain(p);
    flat(p, "want.raw", "top.qcow2");
    // A copy of mid under another name: -u is right, the data is the same.
    std::fs::copy(p.join("mid.qcow2"), p.join("mid2.qcow2")).expect("copy");
    let map_before = qemu_img(p, &["map", "--output=json", "top.qcow2"]).json();
    ok(
        p,
        &[
            "img",
            "rebase",
            "-u",
            "-b",
            "mid2.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    assert_eq!(
        qemu_img(p, &["info", "--output=json", "top.qcow2"]).json()["backing-filename"],
        "mid2.qcow2"
    );
    assert_same(p, "top.qcow2", "want.raw");
    let map_after = qemu_img(p, &["map", "--output=json", "top.qcow2"]).json();
    let own = |m: &serde_json::Value| {
        m.as_array()
            .expect("array")
            .iter()
            .filter(|e| e["depth"] == 0)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(own(&map_before), own(&map_after), "-u must not copy data");
    // -u with -b "": the guest now sees zeros where the backing was.
    ok(p, &["img", "rebase", "-u", "-b", "", "top.qcow2"]);
    assert_differ(p, "top.qcow2", "want.raw");
    assert_clean(p, "top.qcow2");
    // -u onto a file that does not exist (yet) is allowed, as in qemu-img.
    ok(
        p,
        &[
            "img",
            "rebase",
            "-u",
            "-b",
            "later.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    assert_eq!(
        qemu_img(p, &["info", "--output=json", "top.qcow2"]).json()["backing-filename"],
        "later.qcow2"
    );
    // Safe mode needs the new backing file.
    strata(p, &["img", "rebase", "-b", "missing.qcow2", "mid.qcow2"]).one_error(1, "missing.qcow2");
    strata(p, &["img", "rebase", "-b", "mid.qcow2", "base.raw"]).one_error(1, "qcow2");
}

#[test]
fn resize_grows_and_shrinks_as_asked() {
    let d = tmp();
    let p = d.path();
    let size = |f: &str| {
        qemu_img(p, &["info", "--output=json", f]).json()["virtual-size"]
            .as_u64()
            .expect("size")
    };
    ok(p, &["img", "create", "-f", "qcow2", "a.qcow2", "1M"]);
    ok(
        p,
        &[
            "img",
            "write",
            "a.qcow2",
            "--offset",
            "0",
            "--pattern",
            "5",
            "--length",
            "1M",
        ],
    );
    assert_eq!(
        ok(p, &["img", "resize", "a.qcow2", "+1M"]).stdout,
        "Image resized.\n"
    );
    assert_eq!(size("a.qcow2"), 2 << 20);
    ok(p, &["img", "resize", "a.qcow2", "3G"]);
    assert_eq!(size("a.qcow2"), 3 << 30);
    assert_clean(p, "a.qcow2");
    qemu_io(
        p,
        "qcow2",
        "a.qcow2",
        &["read -P 5 0 1M", "read -P 0 1M 1M"],
    );
    // Shrinking needs --shrink, and qcow2 cannot shrink yet.
    strata(p, &["img", "resize", "a.qcow2", "-1M"]).one_error(1, "--shrink");
    strata(p, &["img", "resize", "--shrink", "a.qcow2", "1M"]).one_error(1, "qcow2");
    assert_eq!(size("a.qcow2"), 3 << 30);
    // Raw images shrink with --shrink.
    ok(p, &["img", "create", "-f", "raw", "r.raw", "4M"]);
    strata(p, &["img", "resize", "r.raw", "2M"]).one_error(1, "--shrink");
    ok(p, &["img", "resize", "--shrink", "r.raw", "-1M"]);
    assert_eq!(size("r.raw"), 3 << 20);
    ok(p, &["img", "resize", "-f", "raw", "r.raw", "+512K"]);
    assert_eq!(size("r.raw"), (3 << 20) + (512 << 10));
    strata(p, &["img", "resize", "--shrink", "r.raw", "-1G"]).one_error(1, "r.raw");
    strata(p, &["img", "resize", "r.raw", "+1Z"]).one_error(2, "1Z");
}

#[test]
fn compare_exit_statuses_and_messages() {
    let d = tmp();
    let p = d.path();
    chain(p);
    flat(p, "want.raw", "top.qcow2");
    let r = ok(p, &["img", "compare", "top.qcow2", "want.raw"]);
    assert_eq!(r.stdout, "Images are identical.\n");
    let r = strata(p, &["img", "compare", "top.qcow2", "mid.qcow2"]).expect(1);
    let q = run_in(p, "qemu-img", &["compare", "top.qcow2", "mid.qcow2"]);
    assert_eq!(q.code, 1);
    assert_eq!(r.stdout, q.stdout);
    // Different sizes: the extra part must be zero.
    std::fs::copy(p.join("want.raw"), p.join("big.raw")).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(p.join("big.raw"))
        .expect("open")
        .set_len(6 << 20)
        .expect("grow");
    let r = ok(p, &["img", "compare", "want.raw", "big.raw"]);
    assert_eq!(
        r.stdout,
        qemu_img(p, &["compare", "want.raw", "big.raw"]).stdout
    );
    let j = ok(
        p,
        &["img", "compare", "--output", "json", "want.raw", "big.raw"],
    )
    .json();
    assert_eq!(j["identical"], true);
    assert_eq!(j["size-mismatch"], true);
    qemu_io(p, "raw", "big.raw", &["write -P 1 5M 512"]);
    let r = strata(p, &["img", "compare", "want.raw", "big.raw"]).expect(1);
    assert!(
        r.stdout.contains("Content mismatch at offset 5242880!"),
        "{}",
        r.stdout
    );
    // -q prints nothing; errors exit 2 as in qemu-img.
    assert_eq!(
        strata(p, &["-q", "img", "compare", "want.raw", "big.raw"])
            .expect(1)
            .stdout,
        ""
    );
    strata(p, &["img", "compare", "want.raw", "nope.raw"]).one_error(2, "nope.raw");
}
