//! strata tracks its own guest writes in enabled bitmaps, judged by QEMU:
//! the same operations run through strata on one copy of an image and
//! through qemu-io on another must leave bitmaps that qemu-nbd exports
//! identically, with the data identical and `qemu-img check` clean.

mod common;
use common::*;
use std::path::Path;
use strata_image::Image;

/// One guest operation, as strata calls it and as a qemu-io command.
#[derive(Clone, Copy, Debug)]
enum Op {
    Write(u64, u64, u8),
    Zero(u64, u64, bool),
    Discard(u64, u64),
}

impl Op {
    fn qemu(self) -> String {
        match self {
            Op::Write(o, l, p) => format!("write -P {p} {o} {l}"),
            Op::Zero(o, l, false) => format!("write -z {o} {l}"),
            Op::Zero(o, l, true) => format!("write -z -u {o} {l}"),
            Op::Discard(o, l) => format!("discard {o} {l}"),
        }
    }

    fn strata(self, img: &dyn Image) {
        match self {
            Op::Write(o, l, p) => img.write_at(&vec![p; l as usize], o),
            Op::Zero(o, l, unmap) => img.write_zeroes(o, l, unmap),
            Op::Discard(o, l) => img.discard(o, l),
        }
        .unwrap_or_else(|e| panic!("{self:?}: {e}"))
    }
}

const BITMAPS: [&str; 4] = ["b64k", "b4k", "b512", "off"];

/// A 32 MiB image holding data, with three enabled bitmaps of different
/// granularities and a disabled one, all made by qemu-img.
fn prepared(path: &Path) {
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(path), "32M"]);
    run(
        "qemu-io",
        &["-c", "write -P 7 0 8M", "-c", "write -P 8 20M 1M", s(path)],
    );
    run("qemu-img", &["bitmap", "--add", s(path), "b64k"]);
    run(
        "qemu-img",
        &["bitmap", "--add", "-g", "4096", s(path), "b4k"],
    );
    run(
        "qemu-img",
        &["bitmap", "--add", "-g", "512", s(path), "b512"],
    );
    run(
        "qemu-img",
        &["bitmap", "--add", "--disable", s(path), "off"],
    );
}

fn qemu_apply(path: &Path, ops: &[Op]) {
    let mut args = vec!["-d".to_string(), "unmap".to_string()];
    for op in ops {
        args.push("-c".into());
        args.push(op.qemu());
    }
    args.push(s(path).to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("qemu-io", &args);
}

fn same_bitmaps(strata: &Path, qemu: &Path, dir: &Path, what: &str) {
    assert_qemu_clean(strata);
    assert_qemu_identical(strata, qemu);
    for name in BITMAPS {
        let want = nbd_dirty(qemu, name, dir);
        assert_eq!(
            nbd_dirty(strata, name, dir),
            want,
            "{what}: bitmap {name} as qemu-nbd serves it"
        );
        let i = open_ro(strata);
        assert_eq!(
            qcow2(&i).bitmap_dirty(name).unwrap(),
            want,
            "{what}: bitmap {name} as strata reads it"
        );
    }
}

#[test]
fn strata_tracks_writes_as_qemu_does() {
    let d = tmp();
    let (a, b) = (at(&d, "strata.qcow2"), at(&d, "qemu.qcow2"));
    prepared(&a);
    std::fs::copy(&a, &b).unwrap();
    // In-place overwrites, allocating writes, unaligned edges, zeroes with
    // and without unmap, discards of whole and partial clusters.
    let ops = [
        Op::Write(100 << 10, 300 << 10, 1),
        Op::Write(12 << 20, 5000, 2),
        Op::Write((6 << 20) + 513, 70_000, 3),
        Op::Zero(2 << 20, 1 << 20, false),
        Op::Zero((3 << 20) + 4096, 200 << 10, true),
        Op::Discard(4 << 20, 256 << 10),
        Op::Discard((20 << 20) + 1000, 3000),
        Op::Write(31 << 20, 1 << 20, 4),
        Op::Zero(25 << 20, 1 << 20, false),
    ];
    {
        let img = open_rw(&a);
        for op in ops {
            op.strata(img.as_ref());
        }
        // Before closing, the open image reports what it tracked.
        for name in BITMAPS {
            assert!(
                name == "off" || !qcow2(&img).bitmap_dirty(name).unwrap().is_empty(),
                "{name} tracked nothing"
            );
        }
        assert!(qcow2(&img).bitmap_dirty("off").unwrap().is_empty());
    }
    qemu_apply(&b, &ops);
    same_bitmaps(&a, &b, d.path(), "after strata's writes");
    // QEMU continues on strata's bitmaps, and strata on QEMU's.
    let more = [Op::Write(9 << 20, 64 << 10, 5)];
    qemu_apply(&a, &more);
    qemu_apply(&b, &more);
    let last = [Op::Write(16 << 20, 100, 6), Op::Write(100 << 10, 10, 9)];
    for p in [&a, &b] {
        let img = open_rw(p);
        for op in last {
            op.strata(img.as_ref());
        }
    }
    same_bitmaps(&a, &b, d.path(), "after both");
}

#[test]
fn bitmap_changes_on_a_normal_open_keep_tracking() {
    let d = tmp();
    let (a, b) = (at(&d, "strata.qcow2"), at(&d, "qemu.qcow2"));
    prepared(&a);
    std::fs::copy(&a, &b).unwrap();
    let first = [Op::Write(0, 64 << 10, 1), Op::Write(10 << 20, 1 << 20, 2)];
    let second = [Op::Write(1 << 20, 4096, 3), Op::Discard(10 << 20, 64 << 10)];
    {
        let img = open_rw(&a);
        let q = qcow2(&img);
        for op in first {
            op.strata(img.as_ref());
        }
        q.bitmap_clear("b64k").unwrap();
        q.bitmap_set_enabled("off", true).unwrap();
        q.bitmap_set_enabled("b4k", false).unwrap();
        for op in second {
            op.strata(img.as_ref());
        }
    }
    qemu_apply(&b, &first);
    run("qemu-img", &["bitmap", "--clear", s(&b), "b64k"]);
    run("qemu-img", &["bitmap", "--enable", s(&b), "off"]);
    run("qemu-img", &["bitmap", "--disable", s(&b), "b4k"]);
    qemu_apply(&b, &second);
    same_bitmaps(&a, &b, d.path(), "after changes on an open image");
}

#[test]
fn applying_a_snapshot_marks_what_it_changes() {
    let d = tmp();
    let img_path = at(&d, "s.qcow2");
    prepared(&img_path);
    {
        let img = open_rw(&img_path);
        let q = qcow2(&img);
        q.snapshot_create(Some("s1"), 0).unwrap();
        // Changed after the snapshot: one data cluster rewritten, one
        // allocated, one zeroed; then the bitmaps start clean.
        Op::Write(1 << 20, 100, 1).strata(img.as_ref());
        Op::Write(14 << 20, 64 << 10, 2).strata(img.as_ref());
        Op::Zero(20 << 20, 64 << 10, true).strata(img.as_ref());
        for name in ["b64k", "b4k", "b512"] {
            q.bitmap_clear(name).unwrap();
        }
        q.snapshot_apply("s1").unwrap();
        // Tracking goes on after the switch.
        Op::Write(30 << 20, 512, 3).strata(img.as_ref());
    }
    assert_qemu_clean(&img_path);
    let want = vec![
        (1 << 20, 64 << 10),
        (14 << 20, 64 << 10),
        (20 << 20, 64 << 10),
        (30 << 20, 64 << 10),
    ];
    assert_eq!(nbd_dirty(&img_path, "b64k", d.path()), want);
    let mut fine = want.clone();
    fine[3].1 = 512;
    assert_eq!(nbd_dirty(&img_path, "b512", d.path()), fine);
    assert!(nbd_dirty(&img_path, "off", d.path()).is_empty());
}

#[test]
fn mark_ahead_amortises_sequential_overwrites() {
    let d = tmp();
    let p = at(&d, "seq.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&p), "128M"]);
    run("qemu-io", &["-c", "write -P 1 0 128M", s(&p)]);
    // 512-byte granules: one 512-byte sector of bitmap covers 2 MiB.
    run("qemu-img", &["bitmap", "--add", "-g", "512", s(&p), "cbt"]);
    {
        let img = open_rw(&p);
        // 16 MiB of sequential in-place 64 KiB overwrites: the first write
        // syncs, then each window doubles (1, 2, 4, 8 MiB ahead).
        for k in 0..256u64 {
            img.write_at(&[2; 65536], (8 << 20) + k * 65536).unwrap();
        }
        let seq = qcow2(&img).bitmap_syncs();
        assert!(
            (1..=6).contains(&seq),
            "{seq} syncs for a sequential stream"
        );
        // Scattered first writes, each in a bitmap sector of its own and
        // past the stream's last window, each need their own sync.
        for k in 0..20u64 {
            img.write_at(&[3; 512], (48 << 20) + k * (4 << 20)).unwrap();
        }
        let scattered = qcow2(&img).bitmap_syncs() - seq;
        assert_eq!(scattered, 20);
        // Another first write in a sector already written costs nothing.
        img.write_at(&[4; 512], (48 << 20) + 4096).unwrap();
        assert_eq!(qcow2(&img).bitmap_syncs(), seq + 20);
    }
    // The bits marked ahead of the stream are gone after the close.
    let mut want = vec![(8 << 20, 16 << 20)];
    want.push((48 << 20, 512));
    want.push(((48 << 20) + 4096, 512));
    want.extend((1..20u64).map(|k| ((48 << 20) + k * (4 << 20), 512)));
    assert_eq!(nbd_dirty(&p, "cbt", d.path()), want);
    assert_qemu_clean(&p);
}
