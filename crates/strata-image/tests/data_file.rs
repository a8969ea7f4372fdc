//! qcow2 images with an external data file, QEMU as the oracle both ways:
//! what qemu-io writes strata reads; what strata writes `qemu-img compare`
//! and `qemu-img check` accept; the same operations leave the same L2
//! mappings and data file bytes as QEMU's; with `data_file_raw` the data
//! file alone is the guest's disk; bitmaps strata tracks on a raw-backed
//! image are what qemu-nbd exports; hostile data-file headers are refused
//! with the file named and nothing changed.

mod common;
use common::*;
use std::path::Path;
use strata_image::qcow2::{CreateOptions, Qcow2};
use strata_image::Error;

const SIZE: u64 = 4 << 20;

/// Creation options for a data file at `data` (an absolute name: QEMU
/// resolves relative data file names against its working directory).
fn opts(data: &Path, raw: bool) -> CreateOptions {
    CreateOptions {
        size: SIZE,
        data_file: Some(s(data).to_string()),
        data_file_raw: raw,
        ..Default::default()
    }
}

/// The guest view as qemu-img reads it (convert to raw).
fn qemu_guest(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("guest-by-qemu.raw");
    let _ = std::fs::remove_file(&out);
    run("qemu-img", &["convert", "-O", "raw", s(img), s(&out)]);
    std::fs::read(&out).unwrap()
}

/// `qemu-img compare -f raw DATA -F qcow2 IMAGE`: the raw data file alone
/// shows the guest what the image shows.
fn assert_data_file_is_guest(data: &Path, img: &Path) {
    let (code, text) = run_status(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", s(data), s(img)],
    );
    assert_eq!(
        code, 0,
        "raw data file differs from the guest view:\n{text}"
    );
}

fn qemu_create(img: &Path, data: &Path, raw: bool) {
    let o = format!(
        "data_file={},data_file_raw={}",
        s(data),
        if raw { "on" } else { "off" }
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &o,
            s(img),
            &SIZE.to_string(),
        ],
    );
}

#[test]
fn qemu_writes_strata_reads() {
    for raw in [false, true] {
        let d = tmp();
        let img = at(&d, "q.qcow2");
        qemu_create(&img, &at(&d, "q.raw"), raw);
        run(
            "qemu-io",
            &[
                "-c",
                "write -P 0x11 0 64k",
                "-c",
                "write -P 0x22 1000000 200000",
                "-c",
                "write -P 0x33 3145728 5000",
                "-c",
                "write -z 1048576 65536",
                "-c",
                "discard 1179648 65536",
                "-c",
                "write -z -u 0 4096",
                s(&img),
            ],
        );
        let want = qemu_guest(&img, d.path());
        let got = read_all(open_ro(&img).as_ref());
        assert!(got == want, "raw={raw}: strata reads other bytes than qemu");
        assert!(got.contains(&0x22), "the writes landed");
        if raw {
            assert_data_file_is_guest(&at(&d, "q.raw"), &img);
        }
    }
}

#[test]
fn strata_writes_qemu_judges() {
    for raw in [false, true] {
        let d = tmp();
        let img = at(&d, "s.qcow2");
        create(&img, opts(&at(&d, "s.raw"), raw));
        let mut model = vec![0u8; SIZE as usize];
        {
            let h = open_rw(&img);
            random_writes(
                h.as_ref(),
                &mut model,
                &mut Rng(5 + raw as u64),
                120,
                300_000,
            );
            h.discard(2 << 20, 1 << 20).unwrap();
            model[2 << 20..3 << 20].fill(0);
            h.flush().unwrap();
        }
        let m = at(&d, "model.raw");
        write_raw(&m, &model);
        assert_qemu_clean(&img);
        assert_qemu_identical(&img, &m);
        if raw {
            assert_data_file_is_guest(&at(&d, "s.raw"), &img);
        }
        // The image reopens and reads the same.
        assert!(read_all(open_ro(&img).as_ref()) == model);
    }
}

/// The L2 entries of the first L2 table.
fn first_l2(img: &Path) -> Vec<u64> {
    let f = std::fs::read(img).unwrap();
    let be = |at: usize| u64::from_be_bytes(f[at..at + 8].try_into().unwrap());
    let l1 = be(40) as usize;
    let l2 = (be(l1) & 0x00ff_ffff_ffff_fe00) as usize;
    (0..64).map(|i| be(l2 + i * 8)).collect()
}

#[test]
fn same_operations_leave_the_same_mappings_and_data_as_qemu() {
    for raw in [false, true] {
        let d = tmp();
        let (si, qi) = (at(&d, "s.qcow2"), at(&d, "q.qcow2"));
        create(&si, opts(&at(&d, "s.raw"), raw));
        qemu_create(&qi, &at(&d, "q.raw"), raw);
        {
            let h = open_rw(&si);
            h.write_at(&[0x33; 6 << 16], 0).unwrap();
            h.write_at(&[0x44; 100_000], 1 << 20).unwrap();
            h.write_zeroes(0, 1 << 16, false).unwrap();
            h.write_zeroes(1 << 16, 1 << 16, true).unwrap();
            h.write_zeroes(2 << 16, 70_000, false).unwrap();
            h.discard(4 << 16, 1 << 16).unwrap();
            // Guest cluster 0 sits at host offset 0: zeroed again, it keeps it.
            h.write_zeroes(0, 1 << 16, false).unwrap();
            h.flush().unwrap();
        }
        run(
            "qemu-io",
            &[
                "-c",
                "write -P 0x33 0 384k",
                "-c",
                "write -P 0x44 1M 100000",
                "-c",
                "write -z 0 64k",
                "-c",
                "write -z -u 64k 64k",
                "-c",
                "write -z 128k 70000",
                "-c",
                "discard 256k 64k",
                "-c",
                "write -z 0 64k",
                s(&qi),
            ],
        );
        assert_eq!(first_l2(&si), first_l2(&qi), "raw={raw}: L2 entries differ");
        let (sd, qd) = (
            std::fs::read(at(&d, "s.raw")).unwrap(),
            std::fs::read(at(&d, "q.raw")).unwrap(),
        );
        assert!(sd == qd, "raw={raw}: data files differ");
        assert_qemu_identical(&si, &qi);
        assert_qemu_clean(&si);
    }
}

#[test]
fn bitmaps_on_a_raw_backed_image_are_what_qemu_nbd_exports() {
    let d = tmp();
    let img = at(&d, "r.qcow2");
    create(&img, opts(&at(&d, "r.raw"), true));
    {
        let h = open_rw(&img);
        let q = qcow2(&h);
        q.bitmap_add("b4k", Some(4096), true).unwrap();
        q.bitmap_add("b64k", None, true).unwrap();
        let mut model = vec![0u8; SIZE as usize];
        random_writes(h.as_ref(), &mut model, &mut Rng(9), 40, 100_000);
        h.close().unwrap();
    }
    assert_qemu_clean(&img);
    let h = open_ro(&img);
    for name in ["b4k", "b64k"] {
        let ours = qcow2(&h).bitmap_dirty(name).unwrap();
        assert!(!ours.is_empty(), "{name}: nothing tracked");
        assert_eq!(ours, nbd_dirty(&img, name, d.path()), "bitmap {name}");
    }
}

#[test]
fn snapshots_and_compression_are_refused_as_qemu_refuses_them() {
    let d = tmp();
    let img = at(&d, "n.qcow2");
    create(&img, opts(&at(&d, "n.raw"), false));
    let before = std::fs::read(&img).unwrap();
    let (code, _) = run_status("qemu-img", &["snapshot", "-c", "s1", s(&img)]);
    assert_ne!(code, 0, "qemu-img refuses internal snapshots here");
    let h = open_rw(&img);
    let e = qcow2(&h).snapshot_create(Some("s1"), 0).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains(s(&img)), "{e}");
    let e = qcow2(&h)
        .write_compressed(0, &vec![7u8; 65536])
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    drop(h);
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

#[test]
fn relative_names_resolve_against_the_image_folder() {
    let d = tmp();
    let sub = at(&d, "sub");
    std::fs::create_dir(&sub).unwrap();
    let img = sub.join("i.qcow2");
    create(&img, opts(Path::new("i.raw"), true));
    assert!(sub.join("i.raw").exists());
    let h = open_rw(&img);
    h.write_at(&[9u8; 512], 4096).unwrap();
    drop(h);
    // QEMU resolves the name against its working directory: run it there.
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2", "i.raw", "i.qcow2"])
        .current_dir(&sub)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn growing_a_raw_backed_image_keeps_the_data_file_the_guest() {
    let d = tmp();
    let (si, qi) = (at(&d, "g.qcow2"), at(&d, "q.qcow2"));
    create(&si, opts(&at(&d, "g.raw"), true));
    qemu_create(&qi, &at(&d, "q.raw"), true);
    let h = open_rw(&si);
    h.write_at(&[5u8; 70_000], SIZE - 1000).unwrap_err();
    h.resize(SIZE * 2).unwrap();
    h.write_at(&[5u8; 70_000], SIZE - 1000).unwrap();
    drop(h);
    run(
        "qemu-img",
        &["resize", "-q", s(&qi), &(SIZE * 2).to_string()],
    );
    run("qemu-io", &["-c", "write -P 5 4193304 70000", s(&qi)]);
    for (img, data) in [(&si, "g.raw"), (&qi, "q.raw")] {
        assert_eq!(std::fs::metadata(at(&d, data)).unwrap().len(), SIZE * 2);
        assert_qemu_clean(img);
        assert_data_file_is_guest(&at(&d, data), img);
    }
    assert_qemu_identical(&si, &qi);
    let map = |p: &Path| run("qemu-img", &["map", "--output=json", s(p)]);
    assert_eq!(
        map(&si),
        map(&qi),
        "mapped as qemu maps its own grown image"
    );
}

/// Writes `bytes` at `offset` of the file.
fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Replaces the data file name extension (at 0x70 in an image qemu-img or
/// strata made with a short name) with `name`, keeping the rest of the
/// header's extensions after it.
fn rename_data_file(img: &Path, name: &[u8]) {
    let f = std::fs::read(img).unwrap();
    let hl = u32::from_be_bytes(f[100..104].try_into().unwrap()) as usize;
    let kind = u32::from_be_bytes(f[hl..hl + 4].try_into().unwrap());
    assert_eq!(kind, 0x4441_5441, "the data file name comes first");
    let len = u32::from_be_bytes(f[hl + 4..hl + 8].try_into().unwrap()) as usize;
    let rest_at = hl + 8 + len.div_ceil(8) * 8;
    let rest_end = rest_at + 4096;
    let mut area = Vec::new();
    area.extend_from_slice(&0x4441_5441u32.to_be_bytes());
    area.extend_from_slice(&(name.len() as u32).to_be_bytes());
    area.extend_from_slice(name);
    area.resize(area.len().div_ceil(8) * 8, 0);
    area.extend_from_slice(&f[rest_at..rest_end]);
    poke(img, hl as u64, &area);
}

#[test]
fn hostile_data_file_headers_are_refused_naming_the_file() {
    let d = tmp();
    let base = at(&d, "base.qcow2");
    create(&base, opts(&at(&d, "base.raw"), false));
    let plain = at(&d, "plain.qcow2");
    create(
        &plain,
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    type Spoil = fn(&Path);
    let cases: [(&str, bool, Spoil, &str); 6] = [
        (
            "missing.qcow2",
            true,
            |p| {
                // Turn the extension into an unknown one: the name is gone.
                poke(p, 112, &0x1234_5678u32.to_be_bytes())
            },
            "names no data file",
        ),
        (
            "long.qcow2",
            true,
            |p| rename_data_file(p, &[b'x'; 5000]),
            "more than 4095",
        ),
        (
            "nonexistent.qcow2",
            true,
            |p| rename_data_file(p, b"no-such-file.raw"),
            "no-such-file.raw",
        ),
        (
            "itself.qcow2",
            true,
            |p| rename_data_file(p, b"itself.qcow2"),
            "the image itself",
        ),
        (
            "rawbit.qcow2",
            false,
            |p| poke(p, 88, &2u64.to_be_bytes()),
            "data_file_raw",
        ),
        ("empty.qcow2", true, |p| rename_data_file(p, b""), "empty"),
    ];
    for (name, from_data_file_image, spoil, needle) in cases {
        let p = at(&d, name);
        std::fs::copy(if from_data_file_image { &base } else { &plain }, &p).unwrap();
        spoil(&p);
        let before = std::fs::read(&p).unwrap();
        for writable in [false, true] {
            let r = strata_image::open(
                &p,
                &strata_image::ChainOptions {
                    writable,
                    ..Default::default()
                },
            );
            let e = match r {
                Ok(_) => panic!("{name}: opened"),
                Err(e) => e,
            };
            assert!(matches!(e, Error::DataFile { .. }), "{name}: {e}");
            let text = e.to_string();
            assert!(text.contains(s(&p)), "{name}: {text}");
            assert!(text.contains(needle), "{name}: {text}");
        }
        assert_eq!(std::fs::read(&p).unwrap(), before, "{name} changed");
        // QEMU refuses to open it too.
        let (code, _) = run_status("qemu-io", &["-c", "read 0 512", s(&p)]);
        assert_ne!(code, 0, "{name}: qemu-io opened it");
    }
}

#[test]
fn an_existing_data_file_keeps_its_contents() {
    let d = tmp();
    let data = pattern(SIZE as usize, 3);
    write_raw(&at(&d, "disk.raw"), &data);
    let img = at(&d, "disk.qcow2");
    create(&img, opts(&at(&d, "disk.raw"), true));
    assert_qemu_clean(&img);
    assert!(read_all(open_ro(&img).as_ref()) == data);
    assert_data_file_is_guest(&at(&d, "disk.raw"), &img);
    // Larger than the image: refused, left alone, no image made.
    let big = at(&d, "big.raw");
    write_raw(&big, &pattern(SIZE as usize + 512, 4));
    let e = Qcow2::create_file(&at(&d, "big.qcow2"), &opts(&at(&d, "big.raw"), true)).unwrap_err();
    assert!(matches!(e, Error::DataFile { .. }), "{e}");
    assert!(!at(&d, "big.qcow2").exists());
    assert_eq!(
        std::fs::read(&big).unwrap(),
        pattern(SIZE as usize + 512, 4)
    );
}

/// The spec: with a data file, an L2 entry's host offset must be the guest
/// offset. An entry pointing elsewhere (here guest cluster 1 at data-file
/// offset 0, so writes to it would land on cluster 0) is corruption:
/// reads refuse it and check reports it, for raw on and off.
#[test]
fn an_l2_entry_not_at_its_guest_offset_is_corruption() {
    for raw in [false, true] {
        let d = tmp();
        let (img, data) = (at(&d, "d.qcow2"), at(&d, "d.raw"));
        qemu_create(&img, &data, raw);
        run("qemu-io", &["-c", "write -P 1 0 128k", s(&img)]);
        let f = std::fs::read(&img).unwrap();
        let be = |at: usize| u64::from_be_bytes(f[at..at + 8].try_into().unwrap());
        let l2 = (be(be(40) as usize) & 0x00ff_ffff_ffff_fe00) as usize;
        assert_eq!(first_l2(&img)[1] & 0x00ff_ffff_ffff_fe00, 65536);
        poke(&img, l2 as u64 + 8, &(1u64 << 63).to_be_bytes());
        let before = std::fs::read(&img).unwrap();
        let err = match open_ro(&img).read_at(&mut [0u8; 4096], 65536) {
            Err(e) => e,
            Ok(()) => panic!("raw={raw}: read through a misplaced L2 entry"),
        };
        assert!(
            err.is_corrupt() && err.to_string().contains("0x10000"),
            "{err}"
        );
        let rep = qcow2_check(&img);
        assert!(
            rep.corruptions == 1
                && rep
                    .messages
                    .iter()
                    .any(|m| m.contains("guest offset 0x10000")),
            "raw={raw}: {rep:?}"
        );
        assert_eq!(std::fs::read(&img).unwrap(), before);
    }
}

/// strata's check of `img`, read-only.
fn qcow2_check(img: &Path) -> strata_image::qcow2::CheckReport {
    let q = open_ro(img);
    qcow2(&q)
        .check(strata_image::qcow2::CheckMode::ReadOnly)
        .unwrap()
}
