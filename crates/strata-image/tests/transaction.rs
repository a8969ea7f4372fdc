//! All-or-nothing snapshot transactions over three disks mixing internal
//! and external actions. With a fault injected into each member in turn, at
//! prepare and at commit, every disk is exactly as before (same bytes, same
//! `qemu-img snapshot -l`, `qemu-img check` clean, no overlay left); without
//! a fault, all three are snapshotted. Validation failures write nothing.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use strata_image::qcow2::CreateOptions;
use strata_image::transaction::{
    run as run_tx, run_with_fault, Action, Fault, Held, Outcome, Phase,
};

const SIZE: u64 = 4 << 20;

/// Three disks with data; c has a snapshot "old".
fn disks(dir: &Path) -> Vec<PathBuf> {
    let names = ["a.qcow2", "b.qcow2", "c.qcow2"];
    let mut rng = Rng(1);
    let mut paths = Vec::new();
    for n in names {
        let p = dir.join(n);
        create(
            &p,
            CreateOptions {
                size: SIZE,
                ..Default::default()
            },
        );
        let i = open_rw(&p);
        let mut model = vec![0u8; SIZE as usize];
        random_writes(i.as_ref(), &mut model, &mut rng, 20, 300_000);
        if n == "c.qcow2" {
            qcow2(&i).snapshot_create(Some("old"), 0).unwrap();
            random_writes(i.as_ref(), &mut model, &mut rng, 10, 300_000);
        }
        paths.push(p);
    }
    paths
}

fn actions(p: &[PathBuf]) -> Vec<Action> {
    vec![
        Action::SnapshotInternal {
            file: p[0].clone(),
            name: Some("s1".into()),
        },
        Action::SnapshotExternal {
            file: p[1].clone(),
            overlay: None,
            name: Some("s1".into()),
            reuse: false,
        },
        Action::SnapshotDeleteInternal {
            file: p[2].clone(),
            name: "old".into(),
        },
    ]
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_fault_anywhere_leaves_every_disk_as_before() {
    for member in 0..3 {
        for phase in [Phase::Prepare, Phase::Commit] {
            let d = tmp();
            let p = disks(d.path());
            let before = files(d.path());
            let lists: Vec<_> = p.iter().map(|f| qemu_snapshots(f)).collect();
            let err = run_with_fault(&actions(&p), &Held::none(), Fault { member, phase })
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("action {}", member + 1)),
                "{member} {phase:?}: {err}"
            );
            let ctx = format!("fault at member {member} {phase:?}");
            for (f, list) in p.iter().zip(&lists) {
                assert_qemu_clean(f);
                assert_eq!(
                    &qemu_snapshots(f),
                    list,
                    "{ctx}: snapshot list of {}",
                    f.display()
                );
            }
            assert_eq!(
                files(d.path()),
                before,
                "{ctx}: files differ from before (names or bytes)"
            );
        }
    }
}

#[test]
fn success_snapshots_all_three() {
    let d = tmp();
    let p = disks(d.path());
    let data: Vec<Vec<u8>> = p.iter().map(|f| read_all(open_ro(f).as_ref())).collect();
    let out = run_tx(&actions(&p)).unwrap();
    assert_eq!(
        out[0],
        Outcome::Internal {
            name: "s1".into(),
            id: "1".into()
        }
    );
    let overlay = d.path().join("b.s1");
    assert_eq!(
        out[1],
        Outcome::External {
            overlay: overlay.clone()
        }
    );
    for f in p.iter().chain([&overlay]) {
        assert_qemu_clean(f);
    }
    assert_eq!(qemu_snapshots(&p[0]), [("1".to_string(), "s1".to_string())]);
    assert!(qemu_snapshots(&p[2]).is_empty());
    let info = run("qemu-img", &["info", "--output=json", s(&overlay)]);
    assert!(info.contains("\"backing-filename\": \"b.qcow2\""), "{info}");
    assert!(
        info.contains("\"backing-filename-format\": \"qcow2\""),
        "{info}"
    );
    // Contents are unchanged through the new layers.
    assert!(qemu_read_snapshot(&p[0], "s1", d.path()) == data[0]);
    let raw = d.path().join("b.raw");
    write_raw(&raw, &data[1]);
    assert_qemu_identical(&overlay, &raw);
}

#[test]
fn validation_refuses_before_writing() {
    let d = tmp();
    let p = disks(d.path());
    let before = files(d.path());
    let cases: Vec<(Vec<Action>, &str)> = vec![
        (
            vec![Action::SnapshotDeleteInternal {
                file: p[2].clone(),
                name: "nope".into(),
            }],
            "snapshot 'nope' not found",
        ),
        (
            vec![Action::SnapshotInternal {
                file: p[2].clone(),
                name: Some("old".into()),
            }],
            "already exists",
        ),
        (
            vec![Action::SnapshotInternal {
                file: d.path().join("missing.qcow2"),
                name: None,
            }],
            "missing.qcow2",
        ),
        (
            vec![
                Action::SnapshotInternal {
                    file: p[0].clone(),
                    name: Some("x".into()),
                },
                Action::SnapshotInternal {
                    file: d.path().join("./a.qcow2"),
                    name: Some("y".into()),
                },
            ],
            "the same image as action 1",
        ),
        (
            vec![Action::SnapshotExternal {
                file: p[0].clone(),
                overlay: Some(p[1].clone()),
                name: None,
                reuse: false,
            }],
            "already exists",
        ),
        (
            vec![
                Action::SnapshotInternal {
                    file: p[0].clone(),
                    name: Some("ok".into()),
                },
                Action::bitmap(
                    strata_image::transaction::BitmapOp::Disable,
                    p[1].clone(),
                    "cbt",
                ),
            ],
            "action 2 (bitmap-disable): bitmap 'cbt' not found",
        ),
    ];
    for (acts, want) in cases {
        let err = run_tx(&acts).unwrap_err().to_string();
        assert!(err.contains(want), "error {err:?} does not say {want:?}");
        assert_eq!(
            files(d.path()),
            before,
            "a refused transaction changed files: {err}"
        );
    }
    // A disk held by another process (qemu-io holding it open for writing
    // through qemu-nbd would do; a second strata writer is the same lock).
    let held = open_rw(&p[0]);
    let err = run_tx(&actions(&p)).unwrap_err().to_string();
    assert!(err.contains("lock") && err.contains("a.qcow2"), "{err}");
    drop(held);
    assert_eq!(files(d.path()), before);
}

/// Image `a.qcow2` in `d` with data and an enabled bitmap `b0`, held open
/// as a running guest's disk would be.
fn tracked_base(d: &tempfile::TempDir) -> (PathBuf, std::sync::Arc<dyn strata_image::Image>) {
    let base = at(d, "a.qcow2");
    create(
        &base,
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    let img = open_rw(&base);
    img.write_at(&pattern(65536, 3), 0).unwrap();
    qcow2(&img)
        .bitmap_edits(&[strata_image::qcow2::BitmapEdit::Add {
            name: "b0".into(),
            granularity: None,
            enabled: true,
        }])
        .unwrap();
    (base, img)
}

/// The bitmaps of `file` as qemu-img lists them: `(name, flags)`.
fn qemu_bitmaps(file: &Path) -> Vec<(String, Vec<String>)> {
    let info: serde_json::Value =
        serde_json::from_str(&run("qemu-img", &["info", "-U", "--output=json", s(file)])).unwrap();
    info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|b| {
            let flags = b["flags"].as_array().unwrap();
            (
                b["name"].as_str().unwrap().to_string(),
                flags
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn an_overlay_prepared_ahead_is_held_through_the_transaction_and_tracks_after_it() {
    let d = tmp();
    let (base, img) = tracked_base(&d);
    let overlay = at(&d, "a.s1");
    let ov = strata_image::transaction::prepare_overlay(&base, &img, &overlay).unwrap();
    let mut held = Held::none();
    held.insert(&base, img.clone()).unwrap();
    held.insert(&overlay, ov.clone()).unwrap();
    let act = vec![Action::SnapshotExternal {
        file: base.clone(),
        overlay: Some(overlay.clone()),
        name: Some("s1".into()),
        reuse: true,
    }];
    // A failed transaction leaves the image tracking as before.
    let fault = Fault {
        member: 0,
        phase: Phase::Commit,
    };
    run_with_fault(&act, &held, fault).unwrap_err();
    assert!(qcow2(&img).bitmaps().unwrap()[0].enabled());
    let out = strata_image::transaction::run_held(&act, &held).unwrap();
    assert!(matches!(&out[0], Outcome::External { overlay: o } if *o == overlay));
    // The guest writes on through the overlay held all along.
    ov.write_at(&pattern(4096, 9), 1 << 20).unwrap();
    ov.flush().unwrap();
    assert_eq!(
        qcow2(&ov).bitmap_dirty("b0").unwrap(),
        vec![(1 << 20, 65536)]
    );
    drop((held, ov, img));
    let flags = |f: &Path| qemu_bitmaps(f);
    assert_eq!(flags(&base), [("b0".to_string(), Vec::<String>::new())]);
    assert_eq!(
        flags(&overlay),
        [("b0".to_string(), vec!["auto".to_string()])]
    );
    assert_qemu_clean(&base);
    assert_qemu_clean(&overlay);
    // qemu-img reads the base's data below the guest's new write.
    let raw = at(&d, "out.raw");
    run("qemu-img", &["convert", "-O", "raw", s(&overlay), s(&raw)]);
    let mut want = vec![0u8; SIZE as usize];
    want[..65536].copy_from_slice(&pattern(65536, 3));
    want[1 << 20..(1 << 20) + 4096].copy_from_slice(&pattern(4096, 9));
    assert!(std::fs::read(&raw).unwrap() == want);
}
