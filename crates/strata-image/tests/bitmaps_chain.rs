//! Bitmaps in transactions and across backing chains: bitmap actions are
//! all-or-nothing with snapshots, an external snapshot hands tracking to the
//! new overlay, and `dirty_since` answers "what changed since X" over the
//! layers, checked against the writes made and against qemu-img.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use strata_image::ops::{commit, no_progress, CommitOptions};
use strata_image::transaction::{
    run as run_tx, run_with_fault, Action, BitmapOp, BitmapSource, Fault, Held, Phase,
};
use strata_image::{dirty_since, ChainOptions, Image};

/// `(name, flags)` of every bitmap, as qemu-img info lists them.
fn qemu_bitmaps(path: &Path) -> Vec<(String, Vec<String>)> {
    common::qemu_bitmaps(path)
        .into_iter()
        .map(|(n, _, f)| (n, f))
        .collect()
}

/// What a user can observe of every image in `dir`: qemu-img's info and
/// map, each bitmap's dirty extents, and a clean check (no leaks either).
/// (Not the bytes: an aborted change may leave data in clusters that were
/// free before and still are.)
fn state_of(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "qcow2"))
        .map(|p| {
            assert_qemu_clean(&p);
            let mut info: serde_json::Value =
                serde_json::from_str(&run("qemu-img", &["info", "--output=json", "-U", s(&p)]))
                    .unwrap();
            let o = info.as_object_mut().unwrap();
            o.remove("actual-size");
            o.remove("children");
            let map = run("qemu-img", &["map", "--output=json", "-U", s(&p)]);
            let img = open_ro(&p);
            let bits: Vec<_> = qcow2(&img)
                .bitmaps()
                .unwrap()
                .iter()
                .map(|b| qcow2(&img).bitmap_dirty(&b.name).unwrap())
                .collect();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                format!("{info}\n{map}\n{bits:?}"),
            )
        })
        .collect();
    v.sort();
    v
}

/// Two 16 MiB images with data; `a` has an enabled bitmap `cbt0` with a
/// write tracked in it.
fn two_images(dir: &Path) -> (PathBuf, PathBuf) {
    let (a, b) = (dir.join("a.qcow2"), dir.join("b.qcow2"));
    for p in [&a, &b] {
        run("qemu-img", &["create", "-q", "-f", "qcow2", s(p), "16M"]);
        run("qemu-io", &["-c", "write -P 3 0 2M", s(p)]);
    }
    run("qemu-img", &["bitmap", "--add", s(&a), "cbt0"]);
    run("qemu-io", &["-c", "write -P 4 1M 64k", s(&a)]);
    (a, b)
}

fn checkpoint(a: &Path, b: &Path) -> Vec<Action> {
    vec![
        Action::bitmap(BitmapOp::Disable, a, "cbt0"),
        Action::bitmap(BitmapOp::Add, a, "cbt1"),
        Action::SnapshotInternal {
            file: a.to_path_buf(),
            name: Some("s1".into()),
        },
        Action::Bitmap {
            op: BitmapOp::Add,
            file: b.to_path_buf(),
            name: "cbt1".into(),
            granularity: Some(4096),
            disabled: false,
            sources: vec![],
        },
        Action::Bitmap {
            op: BitmapOp::Merge,
            file: b.to_path_buf(),
            name: "cbt1".into(),
            granularity: None,
            disabled: false,
            sources: vec![BitmapSource {
                file: Some(a.to_path_buf()),
                name: "cbt0".into(),
            }],
        },
    ]
}

#[test]
fn bitmap_actions_are_all_or_nothing_with_snapshots() {
    for member in 0..5 {
        for phase in [Phase::Prepare, Phase::Commit] {
            let d = tmp();
            let (a, b) = two_images(d.path());
            let before = state_of(d.path());
            let err = run_with_fault(&checkpoint(&a, &b), &Held::none(), Fault { member, phase })
                .unwrap_err()
                .to_string();
            assert!(err.contains("injected"), "{err}");
            assert_eq!(
                state_of(d.path()),
                before,
                "fault at action {member} {phase:?} changed files"
            );
        }
    }
    let d = tmp();
    let (a, b) = two_images(d.path());
    let done = run_tx(&checkpoint(&a, &b)).unwrap();
    assert_eq!(done.len(), 5);
    for p in [&a, &b] {
        assert_qemu_clean(p);
    }
    assert_eq!(
        qemu_bitmaps(&a),
        vec![
            ("cbt0".to_string(), vec![]),
            ("cbt1".to_string(), vec!["auto".to_string()])
        ]
    );
    assert_eq!(qemu_snapshots(&a).len(), 1);
    assert_eq!(
        qemu_bitmaps(&b),
        vec![("cbt1".to_string(), vec!["auto".to_string()])]
    );
    // The merge copied a's cbt0 bits into b's cbt1.
    assert_eq!(nbd_dirty(&b, "cbt1", d.path()), vec![(1 << 20, 64 << 10)]);
    // A bad name anywhere refuses the whole group before anything is written.
    let before = state_of(d.path());
    let mut bad = checkpoint(&a, &b);
    bad[1] = Action::bitmap(BitmapOp::Add, &a, "cbt0");
    let err = run_tx(&bad).unwrap_err().to_string();
    assert!(
        err.contains("action 2") && err.contains("'cbt0' already exists"),
        "{err}"
    );
    assert_eq!(state_of(d.path()), before);
}

fn open_chain(path: &Path, writable: bool) -> std::sync::Arc<dyn Image> {
    strata_image::open(
        path,
        &ChainOptions {
            writable,
            ..Default::default()
        },
    )
    .unwrap()
}

fn external(file: &Path, overlay: &Path) -> Action {
    Action::SnapshotExternal {
        file: file.to_path_buf(),
        overlay: Some(overlay.to_path_buf()),
        name: None,
        reuse: false,
    }
}

#[test]
fn external_snapshots_hand_tracking_to_the_overlay() {
    let d = tmp();
    let base = at(&d, "base.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&base), "16M"],
    );
    run("qemu-io", &["-c", "write -P 1 0 16M", s(&base)]);
    run("qemu-img", &["bitmap", "--add", s(&base), "c"]);
    run(
        "qemu-img",
        &["bitmap", "--add", "-g", "4096", s(&base), "fine"],
    );
    // Changes in three layers: the model is every range written.
    let mut model: Vec<(u64, u64)> = Vec::new();
    let mut write = |img: &dyn Image, off: u64, len: u64| {
        img.write_at(&vec![9u8; len as usize], off).unwrap();
        model.push((off, len));
    };
    write(open_chain(&base, true).as_ref(), 100_000, 5000);
    let (mid, top) = (at(&d, "mid.qcow2"), at(&d, "top.qcow2"));
    run_tx(&[external(&base, &mid)]).unwrap();
    write(open_chain(&mid, true).as_ref(), 3 << 20, 1 << 20);
    run_tx(&[external(&mid, &top)]).unwrap();
    {
        let img = open_chain(&top, true);
        write(img.as_ref(), 8 << 20, 10);
        img.discard(12 << 20, 1 << 20).unwrap();
    }
    model.push((12 << 20, 1 << 20));
    for p in [&base, &mid, &top] {
        assert_qemu_clean(p);
    }
    // qemu-img: the backing layers' bitmaps are disabled, the top's enabled.
    let disabled = vec![("c".to_string(), vec![]), ("fine".to_string(), vec![])];
    assert_eq!(qemu_bitmaps(&base), disabled);
    assert_eq!(qemu_bitmaps(&mid), disabled);
    let auto = vec!["auto".to_string()];
    assert_eq!(
        qemu_bitmaps(&top),
        vec![("c".to_string(), auto.clone()), ("fine".to_string(), auto)]
    );
    let chain = open_chain(&top, false);
    for (name, gran) in [("c", 65536u64), ("fine", 4096)] {
        let mut want: Vec<(u64, u64)> = Vec::new();
        let mut granules: Vec<u64> = model
            .iter()
            .flat_map(|&(o, l)| o / gran..(o + l).div_ceil(gran))
            .collect();
        granules.sort_unstable();
        granules.dedup();
        for g in granules {
            match want.last_mut() {
                Some(last) if last.0 + last.1 == g * gran => last.1 += gran,
                _ => want.push((g * gran, gran)),
            }
        }
        assert_eq!(dirty_since(chain.as_ref(), name).unwrap(), want, "{name}");
    }
    // QEMU's own view of the top layer agrees with strata's.
    assert_eq!(
        nbd_dirty(&top, "c", d.path()),
        vec![(8 << 20, 64 << 10), (12 << 20, 1 << 20)]
    );
    let err = dirty_since(chain.as_ref(), "nope").unwrap_err().to_string();
    assert!(
        err.contains("'nope' not found in the backing chain"),
        "{err}"
    );
    let before = dirty_since(chain.as_ref(), "c").unwrap();
    drop(chain);
    // Commit top and mid into base: base's own bitmap now holds it all,
    // and the chain still answers the same.
    {
        let chain = strata_image::open(
            &top,
            &ChainOptions {
                writable: true,
                writable_backing: 2,
                ..Default::default()
            },
        )
        .unwrap();
        let opts = CommitOptions {
            base_depth: 2,
            keep_top: false,
            skip_bitmaps: false,
        };
        commit(chain.as_ref(), &opts, &no_progress).unwrap();
    }
    for p in [&base, &mid, &top] {
        assert_qemu_clean(p);
    }
    assert_eq!(nbd_dirty(&base, "c", d.path()), before);
    assert_eq!(
        dirty_since(open_chain(&top, false).as_ref(), "c").unwrap(),
        before
    );
    // A middle layer without the bitmap: changes there went untracked.
    run("qemu-img", &["bitmap", "--remove", s(&mid), "c"]);
    run("qemu-io", &["-c", "write 0 1k", s(&mid)]);
    let chain = open_chain(&top, false);
    let err = dirty_since(chain.as_ref(), "c").unwrap_err().to_string();
    assert!(
        err.contains("base.qcow2") && err.contains("mid.qcow2") && err.contains("not tracked"),
        "{err}"
    );
}
