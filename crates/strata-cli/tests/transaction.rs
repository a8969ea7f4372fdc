//! `strata img transaction --file`: a JSON group of actions over several
//! images, all or nothing, judged with qemu-img.

mod common;
use common::*;
use std::path::Path;

fn setup(p: &Path) {
    for f in ["a.qcow2", "b.qcow2", "c.qcow2"] {
        qemu_img(p, &["create", "-q", "-f", "qcow2", f, "4M"]);
        qemu_io(p, "qcow2", f, &["write -P 9 0 1M"]);
    }
    qemu_img(p, &["snapshot", "-c", "old", "c.qcow2"]);
}

fn snapshot_names(p: &Path, f: &str) -> String {
    run_in(p, "qemu-img", &["snapshot", "-l", f])
        .expect(0)
        .stdout
}

fn bytes(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| f.extension().is_some_and(|e| e == "qcow2"))
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_group_of_three_succeeds() {
    let d = tmp();
    let p = d.path();
    setup(p);
    std::fs::write(
        p.join("t.json"),
        r#"[
          {"action": "snapshot-internal", "file": "a.qcow2", "name": "s1"},
          {"action": "snapshot-external", "file": "b.qcow2", "overlay": "b.s1.qcow2", "format": "qcow2"},
          {"action": "snapshot-delete-internal", "file": "c.qcow2", "name": "old"}
        ]"#,
    )
    .unwrap();
    let r = ok(
        p,
        &["img", "transaction", "--file", "t.json", "--output", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["snapshot"], "s1");
    assert_eq!(v[1]["overlay"], "b.s1.qcow2");
    assert!(snapshot_names(p, "a.qcow2").contains("s1"));
    assert!(!snapshot_names(p, "c.qcow2").contains("old"));
    let info = run_in(p, "qemu-img", &["info", "--output=json", "b.s1.qcow2"])
        .expect(0)
        .stdout;
    assert!(info.contains("\"backing-filename\": \"b.qcow2\""), "{info}");
    for f in ["a.qcow2", "b.qcow2", "c.qcow2", "b.s1.qcow2"] {
        assert_clean(p, f);
    }
    assert_same(p, "b.s1.qcow2", "b.qcow2");
}

#[test]
fn a_failing_member_changes_nothing() {
    let d = tmp();
    let p = d.path();
    setup(p);
    let before = bytes(p);
    std::fs::write(
        p.join("t.json"),
        r#"[
          {"action": "snapshot-internal", "file": "a.qcow2", "name": "s1"},
          {"action": "snapshot-external", "file": "b.qcow2", "overlay": "b.s1.qcow2"},
          {"action": "snapshot-delete-internal", "file": "c.qcow2", "name": "missing"}
        ]"#,
    )
    .unwrap();
    let r = strata(p, &["img", "transaction", "--file", "t.json"]).expect(1);
    assert!(r.stderr.starts_with("strata: error:"), "{}", r.stderr);
    assert!(
        r.stderr.contains("action 3")
            && r.stderr.contains("c.qcow2")
            && r.stderr.contains("'missing'"),
        "{}",
        r.stderr
    );
    assert_eq!(bytes(p), before, "a failed transaction changed an image");
    assert!(!p.join("b.s1.qcow2").exists(), "an overlay was left behind");
}

#[test]
fn bad_json_and_bitmaps() {
    let d = tmp();
    let p = d.path();
    setup(p);
    for (json, code, want) in [
        (
            r#"[{"action": "snapshot-everything", "file": "a.qcow2"}]"#,
            2,
            "snapshot-everything",
        ),
        (
            r#"[{"action": "snapshot-internal", "file": "a.qcow2", "nmae": "x"}]"#,
            2,
            "nmae",
        ),
        (r#"{"action": "snapshot-internal"}"#, 2, "t.json"),
        (
            r#"[{"action": "snapshot-external", "file": "a.qcow2", "format": "raw"}]"#,
            2,
            "only qcow2",
        ),
        (
            r#"[{"action": "bitmap-remove", "file": "a.qcow2", "name": "cbt"}]"#,
            1,
            "bitmap 'cbt' not found",
        ),
        (
            r#"[{"action": "bitmap-clear", "file": "a.qcow2", "name": "cbt", "granularity": 512}]"#,
            2,
            "belong to bitmap-add",
        ),
    ] {
        std::fs::write(p.join("t.json"), json).unwrap();
        let r = strata(p, &["img", "transaction", "--file", "t.json"]).expect(code);
        assert!(r.stderr.contains(want), "{json}: {}", r.stderr);
    }
    assert!(!snapshot_names(p, "a.qcow2").contains("cbt"));
}

#[test]
fn bitmap_actions_with_a_snapshot() {
    let d = tmp();
    let p = d.path();
    setup(p);
    qemu_img(p, &["bitmap", "--add", "b.qcow2", "old"]);
    qemu_io(p, "qcow2", "b.qcow2", &["write -P 1 2M 4k"]);
    std::fs::write(
        p.join("t.json"),
        r#"[
  {"action": "bitmap-add", "file": "a.qcow2", "name": "cbt", "granularity": 4096},
  {"action": "bitmap-merge", "file": "a.qcow2", "target": "cbt",
   "sources": [{"file": "b.qcow2", "name": "old"}]},
  {"action": "snapshot-internal", "file": "a.qcow2", "name": "s9"},
  {"action": "bitmap-disable", "file": "b.qcow2", "name": "old"}
]"#,
    )
    .unwrap();
    let r = ok(
        p,
        &["img", "transaction", "--output", "json", "--file", "t.json"],
    );
    assert_eq!(r.json()[0]["bitmap"], "cbt");
    assert_eq!(r.json()[2]["snapshot"], "s9");
    assert!(snapshot_names(p, "a.qcow2").contains("s9"));
    let info = qemu_img(p, &["info", "--output=json", "a.qcow2"]).json();
    let bitmaps = &info["format-specific"]["data"]["bitmaps"];
    assert_eq!(bitmaps[0]["name"], "cbt");
    assert_eq!(bitmaps[0]["granularity"], 4096);
    let info = qemu_img(p, &["info", "--output=json", "b.qcow2"]).json();
    assert_eq!(
        info["format-specific"]["data"]["bitmaps"][0]["flags"],
        serde_json::json!([])
    );
    let dump = ok(
        p,
        &[
            "img", "bitmap", "dump", "--output", "json", "a.qcow2", "cbt",
        ],
    );
    assert_eq!(dump.json()[0]["start"], 2 << 20, "{}", dump.stdout);
    for f in ["a.qcow2", "b.qcow2"] {
        qemu_img(p, &["check", f]);
    }
}
