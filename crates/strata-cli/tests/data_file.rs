//! qcow2 images with an external data file through the CLI, judged by
//! qemu-img: `create -o data_file=…[,data_file_raw=on]` makes what
//! qemu-img makes; `info`, `map` and `check` print what qemu-img prints;
//! `convert` goes to and from such images; internal snapshots are refused
//! as qemu-img refuses them; and a raw disk with a qcow2 metadata file
//! beside it serves as a domain disk with checkpoints and incremental
//! backups.
//!
//! QEMU resolves a relative data file name against its working directory
//! (strata against the image's folder, as for backing files): every tool
//! here runs in the images' folder, where the two agree.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

/// The top-level keys of `info --output json` both must agree on.
const SHARED: [&str; 6] = [
    "virtual-size",
    "cluster-size",
    "format",
    "format-specific",
    "dirty-flag",
    "filename",
];

fn assert_info_agrees(p: &Path, file: &str) {
    let s = ok(p, &["img", "info", "--output", "json", file]).json();
    let q = qemu_img(p, &["info", "--output=json", file]).json();
    for key in SHARED {
        assert_eq!(
            s.get(key),
            q.get(key),
            "{file}: {key}\nstrata: {s:#}\nqemu: {q:#}"
        );
    }
    let human = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("data file"))
            .map(str::to_string)
            .collect()
    };
    let sh = human(&ok(p, &["img", "info", file]).stdout);
    assert!(!sh.is_empty(), "{file}: no data file lines");
    assert_eq!(sh, human(&qemu_img(p, &["info", file]).stdout), "{file}");
}

fn onoff(raw: bool) -> &'static str {
    if raw {
        "on"
    } else {
        "off"
    }
}

#[test]
fn create_makes_what_qemu_img_makes_and_info_agrees() {
    let d = tmp();
    let p = d.path();
    for raw in [false, true] {
        let (si, sd, qi, qd) = ("s.qcow2", "s.raw", "q.qcow2", "q.raw");
        for f in [si, sd, qi, qd] {
            let _ = std::fs::remove_file(p.join(f));
        }
        let o = |data: &str| format!("data_file={data},data_file_raw={}", onoff(raw));
        let sline = ok(p, &["img", "create", "-f", "qcow2", "-o", &o(sd), si, "5M"]).stdout;
        let qline = qemu_img(p, &["create", "-f", "qcow2", "-o", &o(qd), qi, "5M"]).stdout;
        assert_eq!(
            sline.replace('s', "q"),
            qline.replace('s', "q"),
            "raw={raw}"
        );
        assert_clean(p, si);
        assert_info_agrees(p, si);
        assert_info_agrees(p, qi);
        let sinfo = ok(p, &["img", "info", "--output", "json", si]).json();
        let qinfo = qemu_img(p, &["info", "--output=json", qi]).json();
        let mut sf = sinfo["format-specific"].clone();
        sf["data"]["data-file"] = Value::from(qd);
        assert_eq!(sf, qinfo["format-specific"], "raw={raw}");
        let map = |f: &str| qemu_img(p, &["map", "--output=json", f]).stdout;
        assert_eq!(map(si), map(qi), "raw={raw}");
        assert_eq!(
            std::fs::read(p.join(sd)).unwrap(),
            std::fs::read(p.join(qd)).unwrap(),
            "raw={raw}: data files"
        );
        if raw {
            // Every cluster mapped up front: the same bytes but the name.
            let mut s = std::fs::read(p.join(si)).unwrap();
            let q = std::fs::read(p.join(qi)).unwrap();
            let at = s.windows(5).position(|w| w == b"s.raw").unwrap();
            s[at] = b'q';
            assert!(s == q, "the qcow2 files differ");
        }
    }
}

#[test]
fn map_and_check_print_what_qemu_img_prints() {
    let d = tmp();
    let p = d.path();
    for raw in [false, true] {
        let img = format!("m{raw}.qcow2");
        let o = format!("data_file=m{raw}.raw,data_file_raw={}", onoff(raw));
        qemu_img(p, &["create", "-q", "-f", "qcow2", "-o", &o, &img, "4M"]);
        qemu_io(
            p,
            "qcow2",
            &img,
            &[
                "write -P 0x11 0 64k",
                "write -P 0x22 1M 200k",
                "write -z 1M 64k",
                "discard 1216k 64k",
            ],
        );
        ok(
            p,
            &[
                "img",
                "write",
                "--offset",
                "3000000",
                "--pattern",
                "0x33",
                "--length",
                "5000",
                &img,
            ],
        );
        let pairs: [(Vec<&str>, Vec<&str>); 3] = [
            (
                vec!["img", "map", "--output", "json", &img],
                vec!["map", "--output=json", &img],
            ),
            (vec!["img", "map", &img], vec!["map", &img]),
            (vec!["img", "check", &img], vec!["check", &img]),
        ];
        for (sargs, qargs) in pairs {
            let s = ok(p, &sargs).stdout;
            let q = qemu_img(p, &qargs).stdout;
            assert_eq!(s, q, "raw={raw}: {qargs:?}");
        }
        let human = ok(p, &["img", "map", &img]).stdout;
        assert!(human.contains(&format!("m{raw}.raw")), "{human}");
        assert_info_agrees(p, &img);
    }
}

#[test]
fn convert_to_and_from_data_file_images() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "src.qcow2", "4M"]);
    qemu_io(
        p,
        "qcow2",
        "src.qcow2",
        &[
            "write -P 0x41 0 100k",
            "write -P 0x42 2M 300k",
            "write -z 3M 64k",
        ],
    );
    ok(
        p,
        &[
            "img",
            "convert",
            "-O",
            "qcow2",
            "-o",
            "data_file=r.raw,data_file_raw=on",
            "src.qcow2",
            "r.qcow2",
        ],
    );
    assert_clean(p, "r.qcow2");
    assert_same(p, "src.qcow2", "r.qcow2");
    run_in(
        p,
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", "r.raw", "src.qcow2"],
    )
    .expect(0);
    ok(
        p,
        &[
            "img",
            "convert",
            "-O",
            "qcow2",
            "-o",
            "data_file=n.raw",
            "r.qcow2",
            "n.qcow2",
        ],
    );
    assert_clean(p, "n.qcow2");
    assert_same(p, "src.qcow2", "n.qcow2");
    ok(p, &["img", "convert", "-O", "raw", "n.qcow2", "back.raw"]);
    ok(
        p,
        &["img", "convert", "-O", "qcow2", "n.qcow2", "back.qcow2"],
    );
    assert_same(p, "src.qcow2", "back.raw");
    assert_same(p, "src.qcow2", "back.qcow2");
    // Compression is refused before anything is created (qemu-img fails
    // at the first write instead).
    strata(
        p,
        &[
            "img",
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "data_file=c.raw",
            "src.qcow2",
            "c.qcow2",
        ],
    )
    .one_error(2, "data_file");
    assert!(!p.join("c.qcow2").exists() && !p.join("c.raw").exists());
    let q = run_in(
        p,
        "qemu-img",
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "data_file=qc.raw",
            "src.qcow2",
            "qc.qcow2",
        ],
    );
    assert_ne!(q.code, 0, "qemu-img refuses compression too");
}

#[test]
fn internal_snapshots_are_refused_as_qemu_img_refuses_them() {
    let d = tmp();
    let p = d.path();
    ok(
        p,
        &[
            "img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=s.raw",
            "s.qcow2",
            "1M",
        ],
    );
    let before = std::fs::read(p.join("s.qcow2")).unwrap();
    let q = run_in(p, "qemu-img", &["snapshot", "-c", "s1", "s.qcow2"]);
    assert_ne!(q.code, 0);
    assert!(q.stderr.contains("Operation not supported"), "{}", q.stderr);
    let line = strata(p, &["img", "snapshot", "create", "s.qcow2", "s1"]).one_error(1, "s.qcow2");
    assert!(line.contains("external data file"), "{line}");
    assert_eq!(std::fs::read(p.join("s.qcow2")).unwrap(), before);
}

/// The guest contents of `file` by qemu-img, saved as `out`.
fn contents(p: &Path, file: &str, out: &str) {
    qemu_img(p, &["convert", "-U", "-O", "raw", file, out]);
}

#[test]
fn a_raw_disk_with_qcow2_metadata_gets_checkpoints_and_incremental_backups() {
    let d = tmp();
    let p = d.path();
    // A raw disk holding data; qcow2 metadata beside it takes it over.
    qemu_img(p, &["create", "-q", "-f", "raw", "disk.raw", "8M"]);
    qemu_io(
        p,
        "raw",
        "disk.raw",
        &["write -P 7 0 2M", "write -P 8 5M 1M"],
    );
    contents(p, "disk.raw", "original.raw");
    ok(
        p,
        &[
            "img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=disk.raw,data_file_raw=on",
            "disk.qcow2",
            "8M",
        ],
    );
    assert_same(p, "disk.qcow2", "original.raw");
    let dir = p.display();
    std::fs::write(
        p.join("vm.xml"),
        format!(
            "<domain type='kvm'><name>vm</name><memory>1048576</memory>\
             <os><type>hvm</type></os><devices>\
             <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{dir}/disk.qcow2'/><target dev='vda'/></disk>\
             </devices></domain>"
        ),
    )
    .unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "c0"]));
    contents(p, "disk.qcow2", "at0.raw");
    // The guest writes (through QEMU) after the checkpoint.
    qemu_io(
        p,
        "qcow2",
        "disk.qcow2",
        &["write -P 9 1M 64k", "write -z 5M 128k", "write -P 10 7M 4k"],
    );
    contents(p, "disk.qcow2", "at1.raw");
    assert_differ(p, "at0.raw", "at1.raw");
    // The raw disk alone is the guest's disk.
    run_in(
        p,
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", "disk.raw", "at1.raw"],
    )
    .expect(0);
    std::fs::write(
        p.join("b.xml"),
        format!(
            "<domainbackup mode='push'><incremental>c0</incremental><disks>\
             <disk name='vda' type='file'><target file='{dir}/inc.qcow2'/><driver type='qcow2'/></disk>\
             </disks></domainbackup>"
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("c.xml"),
        "<domaincheckpoint><name>c1</name></domaincheckpoint>",
    )
    .unwrap();
    backup_begin(p, "b.xml", "c.xml");
    assert_clean(p, "inc.qcow2");
    assert_clean(p, "disk.qcow2");
    // The incremental holds exactly the changed clusters: on top of the
    // contents at c0 it restores the contents now.
    let map = qemu_img(p, &["map", "--output=json", "inc.qcow2"]).json();
    let present: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["present"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(present, 64 * 1024 + 128 * 1024 + 64 * 1024, "{map}");
    qemu_img(
        p,
        &["rebase", "-u", "-F", "raw", "-b", "at0.raw", "inc.qcow2"],
    );
    contents(p, "inc.qcow2", "restored.raw");
    assert_same(p, "restored.raw", "at1.raw");
    // The checkpoint bitmaps are what qemu-img sees in the image.
    let info = qemu_img(p, &["info", "--output=json", "-U", "disk.qcow2"]).json();
    let names: Vec<&str> = info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"c1"), "{info}");
}

#[test]
fn nbd_exports_read_guest_data_from_the_data_file() {
    let d = tmp();
    let p = d.path();
    ok(
        p,
        &[
            "img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=n.raw",
            "n.qcow2",
            "4M",
        ],
    );
    qemu_io(
        p,
        "qcow2",
        "n.qcow2",
        &[
            "write -P 0x61 0 300k",
            "write -P 0x62 2M 64k",
            "write -z 128k 64k",
        ],
    );
    let ours = nbd::strata_nbd(p, "s.sock", &["name=disk,file=n.qcow2,readonly"]);
    let theirs = nbd::qemu_nbd(p, "q.sock", "n.qcow2", true, &[]);
    let map = |uri: &str| run_in(p, "nbdinfo", &["--map", uri]).expect(0).stdout;
    assert_eq!(map(&ours.uri(p, "disk")), map(&theirs.uri(p, "")));
    // Spliced reads come from the data file, not the metadata file.
    qemu_img(
        p,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &ours.uri(p, "disk"),
            "a.raw",
        ],
    );
    qemu_img(
        p,
        &[
            "compare", "-U", "-f", "raw", "-F", "qcow2", "a.raw", "n.qcow2",
        ],
    );
    assert!(ours.stop().success());
}

/// A data file that is the image itself is refused at create (nothing is
/// left behind), and a data file that is a FIFO is refused at open without
/// blocking on it (found by review).
#[test]
fn a_data_file_that_is_the_image_or_a_fifo_is_refused() {
    let d = tmp();
    let p = d.path();
    for name in ["d.qcow2", &format!("{}/./d.qcow2", p.display())] {
        let o = format!("data_file={name}");
        strata(
            p,
            &["img", "create", "-f", "qcow2", "-o", &o, "d.qcow2", "1M"],
        )
        .one_error(1, "is the image itself");
        assert!(!p.join("d.qcow2").exists(), "{name}: the image was left");
    }
    qemu_img(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=f.raw",
            "x.qcow2",
            "1M",
        ],
    );
    std::fs::remove_file(p.join("f.raw")).unwrap();
    run_in(p, "mkfifo", &["f.raw"]).expect(0);
    let r = run_in(
        p,
        "timeout",
        &["10", env!("CARGO_BIN_EXE_strata"), "img", "info", "x.qcow2"],
    );
    r.one_error(1, "f.raw is not a regular file");
}
