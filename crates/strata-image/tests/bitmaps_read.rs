//! Persistent bitmaps QEMU made are read exactly: names, granularities and
//! flags as qemu-img info shows them, and dirty extents exactly as qemu-nbd
//! exports them (`nbdinfo --map=qemu:dirty-bitmap:NAME`).

mod common;
use common::*;

#[test]
fn qemu_bitmaps_read_exactly() {
    let d = tmp();
    let img = at(&d, "b.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            s(&img),
            "64M",
        ],
    );
    run("qemu-img", &["bitmap", "--add", s(&img), "b0"]);
    run(
        "qemu-img",
        &["bitmap", "--add", "-g", "512", s(&img), "fine"],
    );
    run(
        "qemu-img",
        &["bitmap", "--add", "-g", "1M", s(&img), "coarse"],
    );
    run(
        "qemu-io",
        &[
            "-c",
            "write 100k 300k",
            "-c",
            "write 5M 64k",
            "-c",
            "write 63M 1k",
            "-c",
            "write 33M 3M",
            s(&img),
        ],
    );
    run(
        "qemu-img",
        &["bitmap", "--add", "--disable", s(&img), "off"],
    );
    run("qemu-io", &["-c", "write 40M 4k", s(&img)]);
    let i = open_ro(&img);
    let q = qcow2(&i);
    let got: Vec<(String, u64, Vec<&str>)> = q
        .bitmaps()
        .unwrap()
        .iter()
        .map(|b| (b.name.clone(), b.granularity, b.flag_names()))
        .collect();
    // qemu-img info is the oracle for names, granularities and flags.
    let info: serde_json::Value =
        serde_json::from_str(&run("qemu-img", &["info", "--output=json", "-U", s(&img)])).unwrap();
    let want: Vec<(String, u64, Vec<&str>)> = info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let flags = b["flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            (
                b["name"].as_str().unwrap().to_string(),
                b["granularity"].as_u64().unwrap(),
                flags,
            )
        })
        .collect();
    assert_eq!(want.len(), 4);
    assert_eq!(got, want);
    for name in ["b0", "fine", "coarse", "off"] {
        let ours = q.bitmap_dirty(name).unwrap();
        let theirs = nbd_dirty(&img, name, d.path());
        assert_eq!(ours, theirs, "bitmap {name}");
    }
    // The disabled bitmap saw only the write made while it was enabled: none.
    assert!(q.bitmap_dirty("off").unwrap().is_empty());
    let err = q.bitmap_dirty("nope").unwrap_err().to_string();
    assert!(
        err.contains("bitmap 'nope' not found") && err.contains("b.qcow2"),
        "{err}"
    );
}
