//! `strata img snapshot` and `strata img convert -s`, judged by the QEMU
//! tools: snapshots strata makes are listed by `qemu-img snapshot -l` and
//! `qemu-img info` as strata lists them; applying and deleting leave what
//! `qemu-img compare` and `qemu-img check` expect; snapshots qemu-img made
//! are listed, applied, deleted and converted by strata as qemu-img does.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

const MIB: usize = 1 << 20;

/// Runs a strata snapshot command that must succeed, then `qemu-img check`.
fn snap(p: &Path, file: &str, args: &[&str]) -> Run {
    let mut all = vec!["img", "snapshot"];
    all.extend_from_slice(args);
    let r = ok(p, &all);
    assert_clean(p, file);
    r
}

/// The "snapshots" array of `qemu-img info --output=json` (empty when none).
fn qemu_snapshots(p: &Path, file: &str) -> Value {
    let info = qemu_img(p, &["info", "--output=json", file]).json();
    info.get("snapshots")
        .cloned()
        .unwrap_or_else(|| Value::Array(Vec::new()))
}

/// `strata img snapshot list --output json`.
fn strata_snapshots(p: &Path, file: &str) -> Value {
    ok(p, &["img", "snapshot", "list", "--output", "json", file]).json()
}

/// Names in a snapshot array, in order.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("snapshot array")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_string())
        .collect()
}

/// Both listings (JSON and the human table) agree with qemu-img's.
fn assert_lists_agree(p: &Path, file: &str) {
    assert_eq!(strata_snapshots(p, file), qemu_snapshots(p, file));
    let s = ok(p, &["img", "snapshot", "list", file]).stdout;
    let q = qemu_img(p, &["snapshot", "-l", file]).stdout;
    assert_eq!(s, q, "human list differs from qemu-img snapshot -l");
}

/// A 4 MiB qcow2 made by qemu-img.
fn image(p: &Path, name: &str) {
    qemu_img(p, &["create", "-f", "qcow2", name, "4M"]);
}

#[test]
fn strata_snapshots_are_listed_by_qemu_img() {
    let d = tmp();
    let p = d.path();
    image(p, "a.qcow2");
    // No snapshots: qemu-img prints nothing; JSON is an empty array.
    assert_eq!(ok(p, &["img", "snapshot", "list", "a.qcow2"]).stdout, "");
    assert_eq!(strata_snapshots(p, "a.qcow2"), Value::Array(Vec::new()));
    assert_lists_agree(p, "a.qcow2");

    qemu_io(p, "qcow2", "a.qcow2", &["write -P 1 0 64k"]);
    let r = snap(p, "a.qcow2", &["create", "a.qcow2", "first"]);
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""));
    qemu_io(p, "qcow2", "a.qcow2", &["write -P 2 1M 64k"]);
    // Without a name: named after the time.
    let auto = snap(p, "a.qcow2", &["--output", "json", "create", "a.qcow2"]).json();
    let auto_name = auto["name"].as_str().expect("name").to_string();
    assert!(
        auto_name.len() == 14 && auto_name.bytes().all(|b| b.is_ascii_digit()),
        "time name {auto_name:?}"
    );
    let third = snap(
        p,
        "a.qcow2",
        &[
            "create",
            "--output",
            "json",
            "a.qcow2",
            "a-much-longer-snapshot-name",
        ],
    )
    .json();

    let q = qemu_snapshots(p, "a.qcow2");
    assert_eq!(
        names(&q),
        ["first", auto_name.as_str(), "a-much-longer-snapshot-name"]
    );
    let ids: Vec<&str> = q
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["1", "2", "3"]);
    // What create reported is what qemu-img reads back.
    assert_eq!(q[1], auto);
    assert_eq!(q[2], third);
    assert_eq!(q[2]["date-sec"], third["date-sec"]);
    assert_lists_agree(p, "a.qcow2");
    // info shows the same table as qemu-img info.
    let si = ok(p, &["img", "info", "a.qcow2"]).stdout;
    let qi = qemu_img(p, &["info", "a.qcow2"]).stdout;
    assert_eq!(si, qi);
    assert_eq!(
        ok(p, &["img", "info", "--output", "json", "a.qcow2"]).json()["snapshots"],
        q
    );
}

#[test]
fn apply_and_delete_by_strata_as_qemu_img_sees_them() {
    let d = tmp();
    let p = d.path();
    image(p, "a.qcow2");
    let ones = vec![1u8; 64 << 10];
    let twos = vec![2u8; 64 << 10];
    let threes = vec![3u8; 4 << 10];
    qemu_io(p, "qcow2", "a.qcow2", &["write -P 1 0 64k"]);
    reference(p, "one.raw", 4 * MIB, &[(0, &ones)]);
    snap(p, "a.qcow2", &["create", "a.qcow2", "one"]);
    qemu_io(
        p,
        "qcow2",
        "a.qcow2",
        &["write -P 2 2M 64k", "write -P 3 4k 4k"],
    );
    reference(
        p,
        "two.raw",
        4 * MIB,
        &[(0, &ones), (4096, &threes), (2 * MIB, &twos)],
    );
    snap(p, "a.qcow2", &["create", "a.qcow2", "two"]);
    qemu_io(
        p,
        "qcow2",
        "a.qcow2",
        &["write -z 0 64k", "write -P 4 3M 64k"],
    );
    assert_differ(p, "a.qcow2", "one.raw");

    let r = snap(p, "a.qcow2", &["apply", "a.qcow2", "one"]);
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""));
    assert_same(p, "a.qcow2", "one.raw");
    // By ID, with the record of the snapshot in JSON.
    let r = snap(p, "a.qcow2", &["apply", "--output", "json", "a.qcow2", "2"]).json();
    assert_eq!(
        (r["name"].as_str(), r["id"].as_str()),
        (Some("two"), Some("2"))
    );
    assert_same(p, "a.qcow2", "two.raw");
    // Writing after an apply leaves the snapshots alone.
    qemu_io(p, "qcow2", "a.qcow2", &["write -P 9 0 1M"]);
    snap(p, "a.qcow2", &["apply", "a.qcow2", "one"]);
    assert_same(p, "a.qcow2", "one.raw");

    let r = snap(p, "a.qcow2", &["delete", "a.qcow2", "one"]);
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""));
    let listed = qemu_img(p, &["snapshot", "-l", "a.qcow2"]).stdout;
    assert!(!listed.contains(" one "), "still listed:\n{listed}");
    assert!(listed.contains(" two "), "{listed}");
    assert_eq!(names(&qemu_snapshots(p, "a.qcow2")), ["two"]);
    // The active state does not depend on the deleted snapshot.
    assert_same(p, "a.qcow2", "one.raw");
    snap(p, "a.qcow2", &["apply", "a.qcow2", "two"]);
    assert_same(p, "a.qcow2", "two.raw");
    // Delete by ID; JSON names what was deleted.
    let r = snap(
        p,
        "a.qcow2",
        &["--output", "json", "delete", "a.qcow2", "2"],
    )
    .json();
    assert_eq!(r["name"], "two");
    assert_eq!(qemu_img(p, &["snapshot", "-l", "a.qcow2"]).stdout, "");
    assert_eq!(strata_snapshots(p, "a.qcow2"), Value::Array(Vec::new()));
    assert_same(p, "a.qcow2", "two.raw");
}

/// A qcow2 with two snapshots qemu-img made, s1 and s2, and the raw images
/// of their contents as qemu-img converts them.
fn qemu_made(p: &Path) {
    image(p, "q.qcow2");
    qemu_io(
        p,
        "qcow2",
        "q.qcow2",
        &["write -P 1 0 100k", "write -P 2 1M 64k"],
    );
    qemu_img(p, &["snapshot", "-c", "s1", "q.qcow2"]);
    qemu_io(
        p,
        "qcow2",
        "q.qcow2",
        &["write -P 3 32k 64k", "write -z 1M 64k", "write -P 4 3M 1k"],
    );
    qemu_img(p, &["snapshot", "-c", "s2", "q.qcow2"]);
    qemu_io(p, "qcow2", "q.qcow2", &["write -P 5 0 2M"]);
    for s in ["s1", "s2"] {
        let opt = format!("snapshot.name={s}");
        let out = format!("{s}.raw");
        qemu_img(
            p,
            &["convert", "-l", &opt, "-O", "raw", "q.qcow2", out.as_str()],
        );
    }
    assert_differ(p, "s1.raw", "s2.raw");
}

#[test]
fn qemu_made_snapshots_are_listed_applied_and_deleted() {
    let d = tmp();
    let p = d.path();
    qemu_made(p);
    assert_lists_agree(p, "q.qcow2");
    assert_eq!(names(&strata_snapshots(p, "q.qcow2")), ["s1", "s2"]);

    snap(p, "q.qcow2", &["apply", "q.qcow2", "s1"]);
    assert_same(p, "q.qcow2", "s1.raw");
    snap(p, "q.qcow2", &["delete", "q.qcow2", "s2"]);
    let listed = qemu_img(p, &["snapshot", "-l", "q.qcow2"]).stdout;
    assert!(!listed.contains(" s2 "), "still listed:\n{listed}");
    assert_lists_agree(p, "q.qcow2");
    assert_same(p, "q.qcow2", "s1.raw");
    // qemu-img still reads the remaining snapshot as before.
    qemu_img(
        p,
        &[
            "convert",
            "-l",
            "snapshot.name=s1",
            "-O",
            "raw",
            "q.qcow2",
            "again.raw",
        ],
    );
    assert_same(p, "again.raw", "s1.raw");
}

#[test]
fn convert_snapshot_equals_qemu_img_convert_l() {
    let d = tmp();
    let p = d.path();
    qemu_made(p);
    // To raw, by name and by ID.
    ok(
        p,
        &[
            "img", "convert", "-s", "s1", "-O", "raw", "q.qcow2", "c1.raw",
        ],
    );
    assert_same(p, "c1.raw", "s1.raw");
    assert_eq!(
        std::fs::read(p.join("c1.raw")).expect("read"),
        std::fs::read(p.join("s1.raw")).expect("read")
    );
    ok(p, &["img", "convert", "-s", "2", "q.qcow2", "c2.raw"]);
    assert_same(p, "c2.raw", "s2.raw");
    // To compressed qcow2, with format options.
    ok(
        p,
        &[
            "img",
            "convert",
            "-s",
            "s2",
            "-O",
            "qcow2",
            "-c",
            "-o",
            "cluster_size=4K",
            "q.qcow2",
            "c2.qcow2",
        ],
    );
    assert_same(p, "c2.qcow2", "s2.raw");
    assert_clean(p, "c2.qcow2");
    let info = qemu_img(p, &["info", "--output=json", "c2.qcow2"]).json();
    assert_eq!(info["cluster-size"], 4096);
    let check = qemu_img(p, &["check", "--output=json", "c2.qcow2"]).json();
    assert!(
        check["compressed-clusters"].as_u64().unwrap_or(0) > 0,
        "nothing compressed: {check:#}"
    );
    // The source is untouched: its snapshots and its current contents.
    assert_lists_agree(p, "q.qcow2");
    assert_clean(p, "q.qcow2");
    assert_differ(p, "q.qcow2", "s2.raw");
    qemu_img(p, &["convert", "-O", "raw", "q.qcow2", "now.raw"]);
    ok(p, &["img", "convert", "q.qcow2", "now2.raw"]);
    assert_same(p, "now.raw", "now2.raw");
}

#[test]
fn convert_snapshot_keeps_its_size_and_works_over_a_backing_file() {
    let d = tmp();
    let p = d.path();
    // A snapshot taken before the image grew has the old size, as
    // `qemu-img snapshot -a` restores it. (`qemu-img convert -l` copies it
    // at the image's current size instead, zero past the snapshot's end.)
    image(p, "g.qcow2");
    qemu_io(p, "qcow2", "g.qcow2", &["write -P 7 4032k 64k"]);
    qemu_img(p, &["snapshot", "-c", "small", "g.qcow2"]);
    qemu_img(p, &["resize", "g.qcow2", "6M"]);
    qemu_io(p, "qcow2", "g.qcow2", &["write -P 8 5M 64k"]);
    ok(
        p,
        &[
            "img",
            "convert",
            "-s",
            "small",
            "-O",
            "qcow2",
            "g.qcow2",
            "small.qcow2",
        ],
    );
    qemu_img(
        p,
        &[
            "convert",
            "-l",
            "snapshot.name=small",
            "-O",
            "raw",
            "g.qcow2",
            "small.raw",
        ],
    );
    assert_same(p, "small.qcow2", "small.raw");
    std::fs::copy(p.join("g.qcow2"), p.join("applied.qcow2")).expect("copy");
    qemu_img(p, &["snapshot", "-a", "small", "applied.qcow2"]);
    assert_same(p, "small.qcow2", "applied.qcow2");
    let size = |f: &str| qemu_img(p, &["info", "--output=json", f]).json()["virtual-size"].clone();
    assert_eq!(size("small.qcow2"), size("applied.qcow2"));
    assert_eq!(size("small.qcow2"), 4 * MIB);

    // Over a backing file: the snapshot of the overlay shows the base
    // through; -B copies only what the overlay's snapshot holds.
    image(p, "base.qcow2");
    qemu_io(p, "qcow2", "base.qcow2", &["write -P 1 0 4M"]);
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
    qemu_io(p, "qcow2", "top.qcow2", &["write -P 2 1M 64k"]);
    qemu_img(p, &["snapshot", "-c", "s", "top.qcow2"]);
    qemu_io(p, "qcow2", "top.qcow2", &["write -P 3 0 2M"]);
    qemu_img(
        p,
        &[
            "convert",
            "-l",
            "snapshot.name=s",
            "-O",
            "raw",
            "top.qcow2",
            "s.raw",
        ],
    );
    ok(p, &["img", "convert", "-s", "s", "top.qcow2", "full.raw"]);
    assert_same(p, "full.raw", "s.raw");
    ok(
        p,
        &[
            "img",
            "convert",
            "-s",
            "s",
            "-O",
            "qcow2",
            "-B",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            "thin.qcow2",
        ],
    );
    assert_same(p, "thin.qcow2", "s.raw");
    assert_clean(p, "thin.qcow2");
    let map = qemu_img(p, &["map", "--output=json", "thin.qcow2"]).json();
    let own: u64 = map
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["depth"] == 0 && e["data"] == true)
        .map(|e| e["length"].as_u64().expect("length"))
        .sum();
    assert_eq!(
        own,
        64 << 10,
        "thin copy holds only the overlay's cluster: {map:#}"
    );
}

#[test]
fn errors_name_the_file_and_the_snapshot() {
    let d = tmp();
    let p = d.path();
    image(p, "a.qcow2");
    ok(p, &["img", "snapshot", "create", "a.qcow2", "s1"]);
    let before = std::fs::read(p.join("a.qcow2")).expect("read");

    // Unknown snapshot.
    for verb in ["apply", "delete"] {
        let line = strata(p, &["img", "snapshot", verb, "a.qcow2", "nope"]).one_error(1, "a.qcow2");
        assert!(line.contains("'nope'"), "{line}");
    }
    // Duplicate name.
    let line = strata(p, &["img", "snapshot", "create", "a.qcow2", "s1"]).one_error(1, "a.qcow2");
    assert!(line.contains("'s1'"), "{line}");
    assert_eq!(
        std::fs::read(p.join("a.qcow2")).expect("read"),
        before,
        "a refused request changed the image"
    );
    assert_clean(p, "a.qcow2");

    // A raw image has no snapshots.
    qemu_img(p, &["create", "-f", "raw", "r.raw", "1M"]);
    let cases: &[&[&str]] = &[
        &["img", "snapshot", "create", "r.raw", "s1"],
        &["img", "snapshot", "apply", "r.raw", "s1"],
        &["img", "snapshot", "delete", "r.raw", "s1"],
    ];
    for args in cases {
        let line = strata(p, args).one_error(1, "r.raw");
        assert!(line.contains("'s1'") && line.contains("raw"), "{line}");
    }
    strata(p, &["img", "snapshot", "list", "r.raw"]).one_error(1, "r.raw");
    assert_eq!(
        std::fs::metadata(p.join("r.raw")).expect("stat").len(),
        1 << 20
    );

    // A missing file.
    for verb in ["create", "apply", "delete"] {
        let line = strata(p, &["img", "snapshot", verb, "missing.qcow2", "s1"])
            .one_error(1, "missing.qcow2");
        assert!(line.contains("'s1'"), "{line}");
    }
    strata(p, &["img", "snapshot", "list", "missing.qcow2"]).one_error(1, "missing.qcow2");

    // Usage errors.
    strata(p, &["img", "snapshot", "create", "a.qcow2", ""]).one_error(2, "name");
    strata(p, &["img", "snapshot", "apply", "a.qcow2"]).one_error(2, "NAME");
    strata(p, &["img", "snapshot", "rename", "a.qcow2"]).one_error(2, "rename");
    assert_eq!(std::fs::read(p.join("a.qcow2")).expect("read"), before);
}

#[test]
fn convert_snapshot_errors_name_the_file_and_the_snapshot() {
    let d = tmp();
    let p = d.path();
    image(p, "a.qcow2");
    ok(p, &["img", "snapshot", "create", "a.qcow2", "s1"]);
    qemu_img(p, &["create", "-f", "raw", "r.raw", "1M"]);
    let cases: &[(&[&str], i32, &str)] = &[
        (&["-s", "nope", "a.qcow2"], 1, "a.qcow2"),
        (
            &["-s", "nope", "-O", "qcow2", "-c", "a.qcow2"],
            1,
            "a.qcow2",
        ),
        (&["-s", "s1", "r.raw"], 1, "r.raw"),
        (&["-s", "s1", "missing.qcow2"], 1, "missing.qcow2"),
    ];
    for (args, code, file) in cases {
        let mut all = vec!["img", "convert"];
        all.extend_from_slice(args);
        all.push("out.img");
        let line = strata(p, &all).one_error(*code, file);
        let snapshot = args[1];
        assert!(line.contains(&format!("'{snapshot}'")), "{line}");
        assert!(!p.join("out.img").exists(), "{args:?} left a target");
    }
    strata(p, &["img", "convert", "-s", "", "a.qcow2", "out.img"]).one_error(2, "-s");
    assert!(!p.join("out.img").exists());
    assert_clean(p, "a.qcow2");
}

/// qemu-img looks a snapshot up by ID before name when applying (and in
/// `convert -l ID_OR_NAME`); the engine looks by name first.
#[test]

fn apply_prefers_an_id_to_a_name_as_qemu_img() {
    let d = tmp();
    let p = d.path();
    image(p, "a.qcow2");
    qemu_io(p, "qcow2", "a.qcow2", &["write -P 1 0 64k"]);
    // Snapshot ID 1 is named "2"; snapshot ID 2 is named "other".
    qemu_img(p, &["snapshot", "-c", "2", "a.qcow2"]);
    qemu_io(p, "qcow2", "a.qcow2", &["write -P 2 0 64k"]);
    qemu_img(p, &["snapshot", "-c", "other", "a.qcow2"]);
    std::fs::copy(p.join("a.qcow2"), p.join("b.qcow2")).expect("copy");
    qemu_img(p, &["snapshot", "-a", "2", "a.qcow2"]);
    ok(p, &["img", "snapshot", "apply", "b.qcow2", "2"]);
    assert_same(p, "a.qcow2", "b.qcow2");
}

/// A snapshot created without a name is named after the local time, as the
/// engine documents (and as QEMU names them); the engine formats UTC.
#[test]

fn unnamed_snapshot_is_named_after_the_local_time() {
    let d = tmp();
    let p = d.path();
    image(p, "a.qcow2");
    let in_tokyo = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .current_dir(p)
            .env("TZ", "JST-9")
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(out.status.success(), "{program} {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let created = in_tokyo(
        env!("CARGO_BIN_EXE_strata"),
        &["img", "snapshot", "create", "--output", "json", "a.qcow2"],
    );
    let created: Value = serde_json::from_str(&created).expect("JSON");
    let listed = in_tokyo("qemu-img", &["snapshot", "-l", "a.qcow2"]);
    let row = listed.lines().nth(2).expect("one snapshot row");
    // ID, TAG, VM_SIZE ("0 B"), then DATE: local `YYYY-MM-DD hh:mm:ss`.
    let cols: Vec<&str> = row.split_whitespace().collect();
    let local: String = format!("{}{}", cols[4], cols[5])
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    assert_eq!(created["name"], local.as_str(), "{listed}");
}
