//! Bitmap changes by strata (add, clear, enable, disable, merge, remove),
//! mostly on a bitmaps-only writable open, judged by QEMU: qemu-img info lists what
//! strata made, QEMU tracks its own writes into strata's bitmaps, qemu-nbd
//! exports exactly the bits strata says, and qemu-img check stays clean.

mod common;
use common::*;
use std::path::Path;
use std::sync::Arc;
use strata_image::{ChainOptions, Image};

fn bitmaps_only(path: &Path) -> Arc<dyn Image> {
    strata_image::open(
        path,
        &ChainOptions {
            writable: true,
            bitmaps_only: true,
            backing: false,
            ..Default::default()
        },
    )
    .expect("bitmaps-only open")
}

fn strata_dirty(path: &Path, name: &str) -> Vec<(u64, u64)> {
    let i = open_ro(path);
    qcow2(&i).bitmap_dirty(name).unwrap()
}

#[test]
fn strata_bitmaps_are_qemus_bitmaps() {
    let d = tmp();
    let img = at(&d, "w.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "32M"]);
    run("qemu-io", &["-c", "write -P 1 0 4M", s(&img)]);
    {
        let i = bitmaps_only(&img);
        let q = qcow2(&i);
        q.bitmap_add("cbt", None, true).unwrap();
        q.bitmap_add("fine", Some(512), true).unwrap();
        q.bitmap_add("off", None, false).unwrap();
        let err = q.bitmap_add("cbt", None, true).unwrap_err().to_string();
        assert!(
            err.contains("already exists") && err.contains("w.qcow2"),
            "{err}"
        );
        let err = i.write_at(&[1], 0).unwrap_err().to_string();
        assert!(err.contains("bitmap changes only"), "{err}");
    }
    assert_qemu_clean(&img);
    assert_eq!(
        qemu_bitmaps(&img),
        vec![
            ("cbt".to_string(), 65536, vec!["auto".to_string()]),
            ("fine".to_string(), 512, vec!["auto".to_string()]),
            ("off".to_string(), 65536, vec![]),
        ]
    );
    // QEMU tracks its writes into the bitmaps strata made.
    run(
        "qemu-io",
        &["-c", "write 100k 300k", "-c", "write 20M 1k", s(&img)],
    );
    assert_qemu_clean(&img);
    for name in ["cbt", "fine", "off"] {
        assert_eq!(
            strata_dirty(&img, name),
            nbd_dirty(&img, name, d.path()),
            "bitmap {name}"
        );
    }
    assert!(strata_dirty(&img, "off").is_empty());
    assert!(!strata_dirty(&img, "cbt").is_empty());
    // Merge cbt into off, then clear cbt, disable fine.
    {
        let i = bitmaps_only(&img);
        let q = qcow2(&i);
        let cbt = q.bitmap_dirty("cbt").unwrap();
        q.bitmap_merge("off", &cbt).unwrap();
        q.bitmap_clear("cbt").unwrap();
        q.bitmap_set_enabled("fine", false).unwrap();
    }
    assert_qemu_clean(&img);
    assert!(
        nbd_dirty(&img, "cbt", d.path()).is_empty(),
        "cleared bitmap still dirty for qemu-nbd"
    );
    let fine_before = nbd_dirty(&img, "fine", d.path());
    run("qemu-io", &["-c", "write 10M 64k", s(&img)]);
    assert_eq!(
        nbd_dirty(&img, "fine", d.path()),
        fine_before,
        "a disabled bitmap tracked a write"
    );
    assert_eq!(nbd_dirty(&img, "cbt", d.path()), vec![(10 << 20, 64 << 10)]);
    assert_eq!(strata_dirty(&img, "off"), nbd_dirty(&img, "off", d.path()));
    assert_eq!(
        qemu_bitmaps(&img)
            .iter()
            .map(|b| (b.0.as_str(), b.2.len()))
            .collect::<Vec<_>>(),
        [("cbt", 1), ("fine", 0), ("off", 0)]
    );
    // Remove all: no extension left, no leaked cluster.
    {
        let i = bitmaps_only(&img);
        for name in ["cbt", "fine", "off"] {
            qcow2(&i).bitmap_remove(name).unwrap();
        }
    }
    assert_qemu_clean(&img);
    assert!(qemu_bitmaps(&img).is_empty());
}

#[test]
fn qemu_bitmaps_changed_by_strata() {
    let d = tmp();
    let img = at(&d, "q.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "16M"]);
    run("qemu-img", &["bitmap", "--add", s(&img), "b0"]);
    run("qemu-io", &["-c", "write 1M 1M", s(&img)]);
    {
        let i = bitmaps_only(&img);
        qcow2(&i).bitmap_set_enabled("b0", false).unwrap();
    }
    run("qemu-io", &["-c", "write 8M 1M", s(&img)]);
    assert_eq!(nbd_dirty(&img, "b0", d.path()), vec![(1 << 20, 1 << 20)]);
    // qemu-img changes what strata changed.
    run("qemu-img", &["bitmap", "--enable", s(&img), "b0"]);
    run("qemu-io", &["-c", "write 12M 4k", s(&img)]);
    assert_eq!(
        strata_dirty(&img, "b0"),
        vec![(1 << 20, 1 << 20), (12 << 20, 64 << 10)]
    );
    assert_qemu_clean(&img);
    // A normal writable open changes bitmaps too, and tracks its writes.
    {
        let i = open_rw(&img);
        qcow2(&i).bitmap_clear("b0").unwrap();
        i.write_at(&[1; 10], 3 << 20).unwrap();
    }
    assert_qemu_clean(&img);
    assert_eq!(nbd_dirty(&img, "b0", d.path()), vec![(3 << 20, 64 << 10)]);
}
