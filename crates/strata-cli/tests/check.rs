//! `strata img check`: exit statuses 0 (clean), 2 (corruption), 3 (leaks
//! only), 63 (raw), JSON as `qemu-img check --output=json`, and repairs
//! that leave an image `qemu-img check` calls clean.

mod common;

use common::*;
use std::path::Path;

/// A 4 MiB qcow2 (64K clusters) with two data clusters, made by qemu-img:
/// header, refcount table, one refcount block at 0x20000, L1, L2, data.
fn sample(dir: &Path, name: &str) {
    qemu_img(dir, &["create", "-f", "qcow2", name, "4M"]);
    qemu_io(dir, "qcow2", name, &["write -P 1 0 128k"]);
    let rt = peek_u64(&dir.join(name), 48);
    assert_eq!(
        peek_u64(&dir.join(name), rt),
        0x20000,
        "refcount block where the test expects it"
    );
}

/// Gives cluster 7 (past every used cluster) a refcount: one leaked cluster.
fn leak(dir: &Path, name: &str) {
    let path = dir.join(name);
    poke(&path, 0x20000 + 2 * 7, &[0, 1]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(8 * 65536).expect("grow");
}

/// Zeroes the refcount of the L2 table (cluster 4): corruption.
fn corrupt(dir: &Path, name: &str) {
    poke(&dir.join(name), 0x20000 + 2 * 4, &[0, 0]);
}

fn check_json(dir: &Path, extra: &[&str], file: &str) -> (i32, serde_json::Value) {
    let mut args = vec!["img", "check", "--output", "json"];
    args.extend_from_slice(extra);
    args.push(file);
    let r = strata(dir, &args);
    (r.code, r.json())
}

fn qemu_check_json(dir: &Path, file: &str) -> (i32, serde_json::Value) {
    let r = run_in(dir, "qemu-img", &["check", "--output=json", file]);
    (r.code, r.json())
}

/// The human report (stdout) and the problem lines (stderr) are qemu-img's.
fn assert_same_report(dir: &Path, file: &str) {
    let s = strata(dir, &["img", "check", file]);
    let q = run_in(dir, "qemu-img", &["check", file]);
    assert_eq!(s.code, q.code, "{file}");
    assert_eq!(s.stdout, q.stdout, "{file}");
    assert_eq!(s.stderr, q.stderr, "{file}");
}

#[test]
fn clean_images_exit_0_and_match_qemu() {
    let d = tmp();
    let p = d.path();
    sample(p, "a.qcow2");
    let (code, s) = check_json(p, &[], "a.qcow2");
    let (qcode, q) = qemu_check_json(p, "a.qcow2");
    assert_eq!((code, qcode), (0, 0));
    assert_eq!(s, q);
    let s = ok(p, &["img", "check", "a.qcow2"]).stdout;
    let q = qemu_img(p, &["check", "a.qcow2"]).stdout;
    assert_eq!(s, q);
    // An image strata wrote.
    ok(
        p,
        &[
            "img",
            "create",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=4,cluster_size=4K",
            "b.qcow2",
            "2M",
        ],
    );
    ok(
        p,
        &[
            "img",
            "write",
            "b.qcow2",
            "--offset",
            "8K",
            "--pattern",
            "3",
            "--length",
            "40K",
        ],
    );
    let (code, s) = check_json(p, &[], "b.qcow2");
    assert_eq!(code, 0);
    assert_eq!(s, qemu_check_json(p, "b.qcow2").1);
}

#[test]
fn leaks_exit_3_and_are_repaired() {
    let d = tmp();
    let p = d.path();
    sample(p, "l.qcow2");
    leak(p, "l.qcow2");
    let (code, s) = check_json(p, &[], "l.qcow2");
    let (qcode, q) = qemu_check_json(p, "l.qcow2");
    assert_eq!((code, qcode), (3, 3));
    assert_eq!(s, q);
    assert_eq!(s["leaks"], 1);
    let r = strata(p, &["img", "check", "l.qcow2"]).expect(3);
    assert!(
        r.stdout
            .contains("1 leaked clusters were found on the image."),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("Leaked cluster 7"), "{}", r.stderr);
    assert_same_report(p, "l.qcow2");
    // -r leaks repairs and reports what it fixed.
    let (code, s) = check_json(p, &["-r", "leaks"], "l.qcow2");
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["leaks-fixed"], 1);
    assert!(s.get("leaks").is_none());
    assert_clean(p, "l.qcow2");
    // -r all repairs leaks too.
    sample(p, "m.qcow2");
    leak(p, "m.qcow2");
    let r = ok(p, &["img", "check", "-r", "all", "m.qcow2"]);
    assert!(
        r.stdout
            .contains("The following inconsistencies were found and repaired:"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("No errors were found on the image."),
        "{}",
        r.stdout
    );
    assert_clean(p, "m.qcow2");
    assert_same(p, "l.qcow2", "m.qcow2");
    // The repair report reads as qemu-img's.
    sample(p, "s.qcow2");
    leak(p, "s.qcow2");
    std::fs::copy(p.join("s.qcow2"), p.join("q.qcow2")).expect("copy");
    let s = ok(p, &["img", "check", "-r", "leaks", "s.qcow2"]);
    let q = qemu_img(p, &["check", "-r", "leaks", "q.qcow2"]);
    assert_eq!(s.stdout, q.stdout);
}

#[test]
fn corruption_exits_2_and_r_all_repairs_it() {
    let d = tmp();
    let p = d.path();
    sample(p, "c.qcow2");
    corrupt(p, "c.qcow2");
    let (code, s) = check_json(p, &[], "c.qcow2");
    let (qcode, q) = qemu_check_json(p, "c.qcow2");
    assert_eq!((code, qcode), (2, 2));
    assert!(s["corruptions"].as_u64().unwrap_or(0) > 0, "{s:#}");
    assert_eq!(s["filename"], q["filename"]);
    assert_eq!(s["image-end-offset"], q["image-end-offset"]);
    let r = strata(p, &["img", "check", "c.qcow2"]).expect(2);
    assert!(
        r.stdout.contains("errors were found on the image."),
        "{}",
        r.stdout
    );
    // Leaks and corruption together: corruption wins.
    sample(p, "both.qcow2");
    leak(p, "both.qcow2");
    corrupt(p, "both.qcow2");
    assert_eq!(check_json(p, &[], "both.qcow2").0, 2);
    assert_eq!(qemu_check_json(p, "both.qcow2").0, 2);
    assert_same_report(p, "both.qcow2");
    // -r all repairs both; qemu-img agrees the result is clean and the data is intact.
    sample(p, "orig.qcow2");
    for f in ["c.qcow2", "both.qcow2"] {
        let (code, s) = check_json(p, &["-r", "all"], f);
        assert_eq!(code, 0, "{f}: {s:#}");
        assert!(
            s["corruptions-fixed"].as_u64().unwrap_or(0) > 0,
            "{f}: {s:#}"
        );
        assert_clean(p, f);
        assert_same(p, f, "orig.qcow2");
        // After the repair the image takes writes, and stays clean.
        ok(
            p,
            &[
                "img",
                "write",
                f,
                "--offset",
                "2M",
                "--pattern",
                "9",
                "--length",
                "64K",
            ],
        );
        assert_clean(p, f);
    }
}

#[test]
fn raw_images_have_no_checks() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-f", "raw", "r.raw", "1M"]);
    let q = run_in(p, "qemu-img", &["check", "-f", "raw", "r.raw"]);
    assert_eq!(q.code, 63);
    strata(p, &["img", "check", "r.raw"]).one_error(63, "r.raw");
    strata(p, &["img", "check", "--output", "json", "r.raw"])
        .one_error(63, "does not support checks");
    strata(p, &["img", "check", "nonexistent.qcow2"]).one_error(1, "nonexistent.qcow2");
    strata(p, &["img", "check", "-r", "some", "r.raw"]).one_error(2, "some");
}

/// qemu-img counts every compressed cluster as fragmented; strata's check
/// counts only those that do not follow the previous one.
#[test]

fn fragmented_count_of_compressed_clusters_matches_qemu() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-f", "qcow2", "src.qcow2", "1M"]);
    qemu_io(p, "qcow2", "src.qcow2", &["write -P 1 0 128k"]);
    qemu_img(p, &["convert", "-c", "-O", "qcow2", "src.qcow2", "c.qcow2"]);
    let (_, s) = check_json(p, &[], "c.qcow2");
    let (_, q) = qemu_check_json(p, "c.qcow2");
    assert_eq!(s["fragmented-clusters"], q["fragmented-clusters"]);
}

/// qemu-img check -r (leaks or all) clears the corrupt bit of an image in
/// which it finds nothing wrong; strata's repair leaves the bit set, so the
/// image stays unwritable although the engine's own error message suggests
/// `check -r all`.
#[test]

fn repair_clears_the_corrupt_bit_of_a_consistent_image() {
    let d = tmp();
    let p = d.path();
    sample(p, "cb.qcow2");
    poke(&p.join("cb.qcow2"), 79, &[2]); // incompatible bit 1: corrupt
    let info = qemu_img(p, &["info", "--output=json", "cb.qcow2"]).json();
    assert_eq!(info["format-specific"]["data"]["corrupt"], true);
    ok(p, &["img", "check", "-r", "all", "cb.qcow2"]);
    let info = qemu_img(p, &["info", "--output=json", "cb.qcow2"]).json();
    assert_eq!(info["format-specific"]["data"]["corrupt"], false);
}

#[test]
fn corrupt_bit_shows_in_info_and_blocks_writes() {
    let d = tmp();
    let p = d.path();
    sample(p, "cb.qcow2");
    poke(&p.join("cb.qcow2"), 79, &[2]);
    let s = ok(p, &["img", "info", "--output", "json", "cb.qcow2"]).json();
    assert_eq!(s["format-specific"]["data"]["corrupt"], true);
    strata(
        p,
        &[
            "img", "write", "cb.qcow2", "--offset", "0", "--zero", "--length", "4K",
        ],
    )
    .one_error(1, "corrupt");
    // A check may still open it (read-only, and for repair).
    assert_eq!(check_json(p, &[], "cb.qcow2").0, 0);
    assert_eq!(check_json(p, &["-r", "leaks"], "cb.qcow2").0, 0);
}
