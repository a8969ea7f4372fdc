//! Internal snapshots, both ways with qemu-img as the oracle: snapshots
//! strata makes are listed, read and applied by qemu-img; snapshots qemu-img
//! makes are listed, read, applied and deleted by strata; `qemu-img check`
//! is clean after every step.

mod common;
use common::*;
use strata_image::qcow2::CreateOptions;

const SIZE: u64 = 8 << 20;

#[test]
fn strata_snapshots_seen_by_qemu() {
    let d = tmp();
    let img = at(&d, "s.qcow2");
    create(
        &img,
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    let mut states = Vec::new();
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = Rng(5);
    {
        let i = open_rw(&img);
        for n in 0..3 {
            random_writes(i.as_ref(), &mut model, &mut rng, 30, 200_000);
            let info = qcow2(&i)
                .snapshot_create(Some(&format!("snap{n}")), 0)
                .unwrap();
            assert_eq!(info.id, (n + 1).to_string());
            states.push(model.clone());
        }
        random_writes(i.as_ref(), &mut model, &mut rng, 30, 200_000);
    }
    assert_qemu_clean(&img);
    let listed = qemu_snapshots(&img);
    let want: Vec<(String, String)> = (0..3)
        .map(|n| ((n + 1).to_string(), format!("snap{n}")))
        .collect();
    assert_eq!(listed, want);
    for (n, state) in states.iter().enumerate() {
        assert!(
            qemu_read_snapshot(&img, &format!("snap{n}"), d.path()) == *state,
            "snapshot {n} contents seen by qemu-img"
        );
    }
    // qemu-img applies one of them; strata reads the result.
    run("qemu-img", &["snapshot", "-a", "snap1", s(&img)]);
    assert_qemu_clean(&img);
    assert!(
        read_all(open_ro(&img).as_ref()) == states[1],
        "after qemu-img snapshot -a"
    );
    // strata applies another; qemu-img reads the result.
    {
        let i = open_rw(&img);
        qcow2(&i).snapshot_apply("snap0").unwrap();
        assert!(read_all(i.as_ref()) == states[0]);
        qcow2(&i).snapshot_delete("snap1").unwrap();
    }
    assert_qemu_clean(&img);
    let raw = at(&d, "e.raw");
    write_raw(&raw, &states[0]);
    assert_qemu_identical(&img, &raw);
    assert_eq!(qemu_snapshots(&img).len(), 2);
    for name in ["snap0", "snap2"] {
        let i = open_rw(&img);
        qcow2(&i).snapshot_delete(name).unwrap();
        drop(i);
        assert_qemu_clean(&img);
    }
    assert!(qemu_snapshots(&img).is_empty());
}

#[test]
fn qemu_snapshots_used_by_strata() {
    let d = tmp();
    let img = at(&d, "q.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&img), &SIZE.to_string()],
    );
    run("qemu-io", &["-c", "write -P 0x11 0 1M", s(&img)]);
    run("qemu-img", &["snapshot", "-c", "one", s(&img)]);
    run("qemu-io", &["-c", "write -P 0x22 512k 1M", s(&img)]);
    run("qemu-img", &["snapshot", "-c", "two", s(&img)]);
    run("qemu-io", &["-c", "write -P 0x33 0 100k", s(&img)]);
    let mut one = vec![0u8; SIZE as usize];
    one[..1 << 20].fill(0x11);
    let mut two = one.clone();
    two[512 << 10..(512 << 10) + (1 << 20)].fill(0x22);
    let mut now = two.clone();
    now[..100 << 10].fill(0x33);
    let i = open_rw(&img);
    let q = qcow2(&i);
    let names: Vec<String> = q.snapshots().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["one", "two"]);
    assert!(read_all(&q.snapshot_view("one").unwrap()) == one);
    assert!(read_all(&q.snapshot_view("2").unwrap()) == two, "by ID");
    assert!(read_all(i.as_ref()) == now);
    q.snapshot_apply("one").unwrap();
    assert!(read_all(i.as_ref()) == one);
    drop(i);
    assert_qemu_clean(&img);
    let i = open_rw(&img);
    qcow2(&i).snapshot_delete("two").unwrap();
    drop(i);
    assert_qemu_clean(&img);
    assert_eq!(qemu_snapshots(&img), [("1".to_string(), "one".to_string())]);
    assert!(qemu_read_snapshot(&img, "one", d.path()) == one);
}

#[test]
fn names_are_unique_and_made_from_the_time() {
    let d = tmp();
    let img = at(&d, "n.qcow2");
    create(
        &img,
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    let i = open_rw(&img);
    let q = qcow2(&i);
    q.snapshot_create(Some("a"), 0).unwrap();
    let err = q.snapshot_create(Some("a"), 0).unwrap_err().to_string();
    assert!(
        err.contains("already exists") && err.contains("n.qcow2"),
        "{err}"
    );
    let t1 = q.snapshot_create(None, 0).unwrap();
    let t2 = q.snapshot_create(None, 0).unwrap();
    assert_eq!(t1.name.len(), 14, "{}", t1.name);
    assert!(t1.name.chars().all(|c| c.is_ascii_digit()));
    assert_ne!(t1.name, t2.name);
    let err = q.snapshot_delete("nope").unwrap_err().to_string();
    assert!(err.contains("'nope' not found"), "{err}");
    drop(i);
    assert_qemu_clean(&img);
}
