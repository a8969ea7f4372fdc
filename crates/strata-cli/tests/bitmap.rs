//! `strata img bitmap` and the bitmaps of `strata img info`, judged by the
//! QEMU tools: `qemu-img info` (human and JSON) for names, granularities and
//! flags, and qemu-nbd's `qemu:dirty-bitmap:NAME` context (read with
//! nbdinfo) for the dirty extents. Bitmap changes are refused without the
//! image being touched.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A 64 MiB qcow2 with four bitmaps made by qemu-img and written by qemu-io:
/// "b0" (64K, enabled), "fine" (512, enabled), "coarse" (1M, enabled) and
/// "off" (64K, added disabled after the first writes, enabled for one write
/// at 40M, then disabled again).
fn image(p: &Path, name: &str) {
    qemu_img(p, &["create", "-q", "-f", "qcow2", name, "64M"]);
    qemu_img(p, &["bitmap", "--add", name, "b0"]);
    qemu_img(p, &["bitmap", "--add", "-g", "512", name, "fine"]);
    qemu_img(p, &["bitmap", "--add", "-g", "1M", name, "coarse"]);
    qemu_io(
        p,
        "qcow2",
        name,
        &[
            "write 100k 300k",
            "write 5M 64k",
            "write 63M 1k",
            "write 33M 3M",
        ],
    );
    qemu_img(p, &["bitmap", "--add", "--disable", name, "off"]);
    qemu_img(p, &["bitmap", "--enable", name, "off"]);
    qemu_io(p, "qcow2", name, &["write 40M 4k"]);
    qemu_img(p, &["bitmap", "--disable", name, "off"]);
    qemu_io(p, "qcow2", name, &["write 7M 512"]);
}

/// `strata img info` prints exactly what `qemu-img info` prints, human and JSON.
fn assert_info_like_qemu(p: &Path, file: &str) {
    let s = ok(p, &["img", "info", file]).stdout;
    let q = qemu_img(p, &["info", file]).stdout;
    assert_eq!(s, q, "human info differs from qemu-img info");
    let s = ok(p, &["img", "info", "--output", "json", file]);
    let q = qemu_img(p, &["info", "--output=json", file]);
    assert_eq!(s.json(), q.json());
    assert_eq!(s.stdout, q.stdout, "JSON text differs from qemu-img's");
}

/// The "bitmaps" array of `qemu-img info --output=json` (null when absent).
fn qemu_bitmaps(p: &Path, file: &str) -> Value {
    qemu_img(p, &["info", "-U", "--output=json", file]).json()["format-specific"]["data"]["bitmaps"]
        .clone()
}

/// Dirty extents of `bitmap` as qemu-nbd exports them, adjacent ones merged.
fn nbd_dirty(p: &Path, file: &str, bitmap: &str) -> Vec<(u64, u64)> {
    let sock = p.join(format!("{bitmap}.sock"));
    let sock_s = sock.to_str().expect("utf-8 path");
    let mut srv = Command::new("qemu-nbd")
        .args([
            "-r", "-t", "-B", bitmap, "--socket", sock_s, "-f", "qcow2", file,
        ])
        .current_dir(p)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "qemu-nbd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///?socket={sock_s}");
    // The socket file appears just before qemu-nbd listens on it.
    let map = loop {
        let r = run_in(
            p,
            "nbdinfo",
            &[&format!("--map=qemu:dirty-bitmap:{bitmap}"), &uri],
        );
        if r.code == 0 || t.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = srv.kill();
    let _ = srv.wait();
    let map = map.expect(0);
    let mut v: Vec<(u64, u64)> = Vec::new();
    for line in map.stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 && f[2] == "1" {
            let start: u64 = f[0].parse().expect("start");
            let len: u64 = f[1].parse().expect("length");
            match v.last_mut() {
                Some(last) if last.0 + last.1 == start => last.1 += len,
                _ => v.push((start, len)),
            }
        }
    }
    v
}

/// Extents as `bitmap dump --output json` prints them.
fn as_json(extents: &[(u64, u64)]) -> Value {
    Value::Array(
        extents
            .iter()
            .map(|&(s, l)| json!({"start": s, "length": l}))
            .collect(),
    )
}

/// Where the bitmaps extension of the image bytes `b` is (qcow2.txt: magic
/// 0x23852875, after the v3 header): its offset, the number of bitmaps,
/// and the directory's size and offset.
fn bitmaps_extension(b: &[u8]) -> (usize, usize, usize, usize) {
    let be32 = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4"));
    let be64 = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8"));
    let mut at = be32(100) as usize;
    while be32(at) != 0x2385_2875 {
        assert_ne!(be32(at), 0, "no bitmaps extension");
        at += 8 + (be32(at + 4) as usize).div_ceil(8) * 8;
    }
    (
        at,
        be32(at + 8) as usize,
        be64(at + 16) as usize,
        be64(at + 24) as usize,
    )
}

/// Sets the "in use" flag of every bitmap in the directory, as a QEMU that
/// died with the image open leaves it (qcow2.txt: bitmaps extension, magic
/// 0x23852875; directory entries with flags at +12).
fn mark_in_use(path: &Path) {
    let b = std::fs::read(path).expect("read image");
    let be32 = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4"));
    let (_, nb, _, mut e) = bitmaps_extension(&b);
    for _ in 0..nb {
        let flags = be32(e + 12) | 1;
        poke(path, (e + 12) as u64, &flags.to_be_bytes());
        let (name, extra) = (
            u16::from_be_bytes([b[e + 18], b[e + 19]]) as usize,
            be32(e + 20) as usize,
        );
        e += (24 + extra + name).div_ceil(8) * 8;
    }
}

#[test]
fn info_shows_bitmaps_as_qemu_img() {
    let d = tmp();
    let p = d.path();
    image(p, "a.qcow2");
    assert_info_like_qemu(p, "a.qcow2");
    let info = ok(p, &["img", "info", "--output", "json", "a.qcow2"]);
    assert_eq!(
        info.json()["format-specific"]["data"]["bitmaps"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    // Placed where qemu-img puts it: after lazy-refcounts.
    assert!(
        info.stdout
            .contains("\"lazy-refcounts\": false,\n            \"bitmaps\": ["),
        "{}",
        info.stdout
    );
    let human = ok(p, &["img", "info", "a.qcow2"]).stdout;
    assert!(human.contains("        [3]:\n            flags:\n            name: off\n"));

    // Internal snapshots and a backing chain do not disturb the block.
    qemu_img(p, &["snapshot", "-c", "s1", "a.qcow2"]);
    qemu_img(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "a.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_img(p, &["bitmap", "--add", "-g", "128K", "top.qcow2", "t"]);
    assert_info_like_qemu(p, "a.qcow2");
    assert_info_like_qemu(p, "top.qcow2");
    let s = ok(p, &["img", "info", "--backing-chain", "top.qcow2"]).stdout;
    let q = qemu_img(p, &["info", "--backing-chain", "top.qcow2"]).stdout;
    assert_eq!(s, q);
}

#[test]
fn info_without_bitmaps_and_after_a_write_as_qemu_img() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "a.qcow2", "8M"]);
    assert_info_like_qemu(p, "a.qcow2");
    assert!(!ok(p, &["img", "info", "a.qcow2"])
        .stdout
        .contains("bitmaps"));
    qemu_img(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "old.qcow2",
            "8M",
        ],
    );
    assert_info_like_qemu(p, "old.qcow2");
    // A writable strata open keeps the bitmaps consistent and tracks its
    // write in the enabled ones: both tools still list all of them.
    image(p, "w.qcow2");
    let before = qemu_bitmaps(p, "w.qcow2");
    ok(
        p,
        &[
            "img",
            "write",
            "w.qcow2",
            "--offset",
            "0",
            "--pattern",
            "1",
            "--length",
            "512",
        ],
    );
    assert_eq!(qemu_bitmaps(p, "w.qcow2"), before);
    assert_info_like_qemu(p, "w.qcow2");
    let list = ok(p, &["img", "bitmap", "list", "--output", "json", "w.qcow2"]);
    assert_eq!(list.json(), before);
}

#[test]
fn list_matches_qemu_img_info() {
    let d = tmp();
    let p = d.path();
    image(p, "a.qcow2");
    let r = ok(p, &["img", "bitmap", "list", "--output", "json", "a.qcow2"]);
    let want = qemu_bitmaps(p, "a.qcow2");
    assert_eq!(want.as_array().map(Vec::len), Some(4));
    assert_eq!(r.json(), want);
    // Same text as qemu-img's array, keys in its order.
    let q = qemu_img(p, &["info", "--output=json", "a.qcow2"]).stdout;
    let indented: String = r
        .stdout
        .lines()
        .map(|l| format!("            {l}\n"))
        .collect();
    assert!(
        q.contains(&format!("\"bitmaps\": {},", indented.trim())),
        "{}",
        r.stdout
    );
    let human = ok(p, &["img", "bitmap", "list", "a.qcow2"]).stdout;
    let want = "\
NAME    GRANULARITY  FLAGS
b0            65536  auto
fine            512  auto
coarse      1048576  auto
off           65536  -
";
    assert_eq!(human, want);
}

#[test]
fn dump_matches_qemu_nbd() {
    let d = tmp();
    let p = d.path();
    image(p, "a.qcow2");
    for name in ["b0", "fine", "coarse", "off"] {
        let theirs = nbd_dirty(p, "a.qcow2", name);
        let r = ok(
            p,
            &["img", "bitmap", "dump", "--output", "json", "a.qcow2", name],
        );
        assert_eq!(r.json(), as_json(&theirs), "bitmap {name}");
        let human = ok(p, &["img", "bitmap", "dump", "a.qcow2", name]).stdout;
        let want: String = theirs.iter().map(|(s, l)| format!("{s} {l}\n")).collect();
        assert_eq!(human, want, "bitmap {name}");
    }
    // The oracle saw something: whole 64K granules around each write,
    // and "off" only the write it was enabled for.
    const M: u64 = 1 << 20;
    let k64 = 65536;
    let b0 = [
        (k64, 6 * k64),
        (5 * M, k64),
        (7 * M, k64),
        (33 * M, 3 * M),
        (40 * M, k64),
        (63 * M, k64),
    ];
    assert_eq!(nbd_dirty(p, "a.qcow2", "b0"), b0);
    assert_eq!(nbd_dirty(p, "a.qcow2", "off"), [(40 * M, k64)]);
    // No dirty extents: an empty array, no lines.
    qemu_img(p, &["bitmap", "--add", "a.qcow2", "new"]);
    let r = ok(
        p,
        &[
            "img", "bitmap", "dump", "--output", "json", "a.qcow2", "new",
        ],
    );
    assert_eq!((r.json(), r.stdout.as_str()), (json!([]), "[\n]\n"));
    assert_eq!(
        ok(p, &["img", "bitmap", "dump", "a.qcow2", "new"]).stdout,
        ""
    );
    // Reading changed nothing: qemu-img still finds the bitmaps consistent.
    assert_eq!(qemu_bitmaps(p, "a.qcow2").as_array().map(Vec::len), Some(5));
    assert_clean(p, "a.qcow2");
}

#[test]
fn bitmaps_in_use_as_qemu_sees_them() {
    let d = tmp();
    let p = d.path();
    image(p, "a.qcow2");
    mark_in_use(&p.join("a.qcow2"));
    assert_info_like_qemu(p, "a.qcow2");
    let flags = &qemu_bitmaps(p, "a.qcow2")[0]["flags"];
    assert_eq!(flags, &json!(["in-use", "auto"]));
    let list = ok(p, &["img", "bitmap", "list", "--output", "json", "a.qcow2"]);
    assert_eq!(list.json(), qemu_bitmaps(p, "a.qcow2"));
    // qemu-nbd refuses to export an inconsistent bitmap; so does dump.
    let sock = p.join("x.sock");
    let sock = sock.to_str().expect("utf-8 path");
    let nbd = run_in(
        p,
        "timeout",
        &[
            "20", "qemu-nbd", "-r", "-B", "b0", "--socket", sock, "a.qcow2",
        ],
    );
    assert_ne!(nbd.code, 0);
    assert!(nbd.stderr.contains("inconsistent"), "{}", nbd.stderr);
    let r = strata(p, &["img", "bitmap", "dump", "a.qcow2", "b0"]);
    let line = r.one_error(1, "a.qcow2");
    assert!(
        line.contains("'b0'") && line.contains("inconsistent"),
        "{line}"
    );
}

#[test]
fn read_commands_honour_force_share() {
    let d = tmp();
    let p = d.path();
    image(p, "a.qcow2");
    // qemu-io holds the image open for writing (and its lock) a while.
    let mut holder = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "sleep 5000", "a.qcow2"])
        .current_dir(p)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(p.join("qemu-io.err")).expect("err file"))
        .spawn()
        .expect("qemu-io");
    // Let it take the lock before anyone else opens the image.
    std::thread::sleep(Duration::from_millis(400));
    let t = Instant::now();
    let locked = loop {
        let r = strata(p, &["img", "bitmap", "list", "a.qcow2"]);
        if r.code != 0 || t.elapsed() > Duration::from_secs(4) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let shared = [
        strata(p, &["img", "bitmap", "list", "-U", "a.qcow2"]),
        strata(
            p,
            &[
                "img",
                "bitmap",
                "list",
                "--force-share",
                "--output",
                "json",
                "a.qcow2",
            ],
        ),
    ];
    // A writer marks its bitmaps in use: -U gets past the lock, to that.
    let shared_dump = strata(p, &["img", "bitmap", "dump", "-U", "a.qcow2", "off"]);
    let dump = strata(p, &["img", "bitmap", "dump", "a.qcow2", "off"]);
    let _ = holder.kill();
    let _ = holder.wait();
    let err = std::fs::read_to_string(p.join("qemu-io.err")).unwrap_or_default();
    assert_eq!(locked.code, 1, "qemu-io did not hold the lock: {err}");
    locked.one_error(1, "a.qcow2");
    dump.one_error(1, "lock");
    for r in shared {
        assert!(r.expect(0).stdout.contains("off"));
    }
    shared_dump.one_error(1, "inconsistent");
}

#[test]
fn errors_are_one_line_naming_file_and_bitmap() {
    let d = tmp();
    let p = d.path();
    image(p, "a.qcow2");
    qemu_img(p, &["create", "-q", "-f", "raw", "r.img", "1M"]);
    let before = std::fs::read(p.join("a.qcow2")).expect("read");

    let line = strata(p, &["img", "bitmap", "dump", "a.qcow2", "nope"]).one_error(1, "a.qcow2");
    assert!(
        line.contains("'nope'") && line.contains("not found"),
        "{line}"
    );
    let raw: [(&[&str], &str); 3] = [
        (&["img", "bitmap", "list", "r.img"], "r.img"),
        (&["img", "bitmap", "dump", "r.img", "b0"], "r.img"),
        (
            &["img", "bitmap", "list", "-f", "raw", "a.qcow2"],
            "a.qcow2",
        ),
    ];
    for (args, file) in raw {
        let line = strata(p, args).one_error(1, file);
        assert!(
            line.contains("a raw image has no persistent bitmaps"),
            "{line}"
        );
    }
    strata(p, &["img", "bitmap", "list", "missing.qcow2"]).one_error(1, "missing.qcow2");
    strata(p, &["img", "bitmap", "dump", "missing.qcow2", "b0"]).one_error(1, "missing.qcow2");

    // Changes that cannot be made fail with one line and change nothing.
    let refused: [(&[&str], &str, &str); 4] = [
        (&["add", "a.qcow2", "b0"], "a.qcow2", "already exists"),
        (
            &["remove", "a.qcow2", "nope"],
            "a.qcow2",
            "bitmap 'nope' not found",
        ),
        (
            &[
                "merge",
                "a.qcow2",
                "b0",
                "--source",
                "x",
                "--source-file",
                "r.img",
            ],
            "r.img",
            "no persistent bitmaps",
        ),
        (&["add", "r.img", "n"], "r.img", "no persistent bitmaps"),
    ];
    for (c, file, what) in refused {
        let mut args = vec!["img", "bitmap"];
        args.extend_from_slice(c);
        let line = strata(p, &args).one_error(1, file);
        assert!(line.contains(what), "{line}");
    }
    assert!(
        std::fs::read(p.join("a.qcow2")).expect("read") == before,
        "image changed"
    );
}

/// Bitmap changes through the CLI, judged by qemu-img info and qemu-nbd:
/// add (enabled, disabled, granularity), QEMU tracking into them, clear,
/// disable, enable, merge (same image and another image), remove.
#[test]
fn changes_as_qemu_sees_them() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "a.qcow2", "16M"]);
    ok(p, &["img", "bitmap", "add", "a.qcow2", "cbt"]);
    ok(
        p,
        &[
            "img",
            "bitmap",
            "add",
            "-g",
            "1M",
            "--disabled",
            "a.qcow2",
            "coarse",
        ],
    );
    let names = |v: Value| -> Vec<(String, u64, usize)> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|b| {
                        let n = b["name"].as_str().unwrap().to_string();
                        (
                            n,
                            b["granularity"].as_u64().unwrap(),
                            b["flags"].as_array().unwrap().len(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        names(qemu_bitmaps(p, "a.qcow2")),
        [
            ("cbt".to_string(), 65536, 1),
            ("coarse".to_string(), 1 << 20, 0)
        ]
    );
    assert_clean(p, "a.qcow2");
    qemu_io(p, "qcow2", "a.qcow2", &["write 100k 4k"]);
    assert_eq!(nbd_dirty(p, "a.qcow2", "cbt"), [(65536, 65536)]);
    assert!(nbd_dirty(p, "a.qcow2", "coarse").is_empty());
    ok(
        p,
        &[
            "img", "bitmap", "merge", "a.qcow2", "coarse", "--source", "cbt",
        ],
    );
    assert_eq!(nbd_dirty(p, "a.qcow2", "coarse"), [(0, 1 << 20)]);
    ok(p, &["img", "bitmap", "clear", "a.qcow2", "cbt"]);
    ok(p, &["img", "bitmap", "disable", "a.qcow2", "cbt"]);
    qemu_io(p, "qcow2", "a.qcow2", &["write 5M 4k"]);
    assert!(nbd_dirty(p, "a.qcow2", "cbt").is_empty());
    ok(p, &["img", "bitmap", "enable", "a.qcow2", "cbt"]);
    qemu_io(p, "qcow2", "a.qcow2", &["write 9M 4k"]);
    assert_eq!(nbd_dirty(p, "a.qcow2", "cbt"), [(9 << 20, 65536)]);
    // Merge from a bitmap of another image (e.g. a backing file).
    qemu_img(p, &["create", "-q", "-f", "qcow2", "other.qcow2", "16M"]);
    qemu_img(p, &["bitmap", "--add", "other.qcow2", "o"]);
    qemu_io(p, "qcow2", "other.qcow2", &["write 12M 4k"]);
    ok(
        p,
        &[
            "img",
            "bitmap",
            "merge",
            "a.qcow2",
            "cbt",
            "--source",
            "o",
            "--source-file",
            "other.qcow2",
        ],
    );
    assert_eq!(
        nbd_dirty(p, "a.qcow2", "cbt"),
        [(9 << 20, 65536), (12 << 20, 65536)]
    );
    let dumped: Value = serde_json::from_str(
        &ok(
            p,
            &[
                "img", "bitmap", "dump", "--output", "json", "a.qcow2", "cbt",
            ],
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(dumped, as_json(&nbd_dirty(p, "a.qcow2", "cbt")));
    for name in ["cbt", "coarse"] {
        ok(p, &["img", "bitmap", "remove", "a.qcow2", name]);
    }
    assert!(names(qemu_bitmaps(p, "a.qcow2")).is_empty());
    assert_clean(p, "a.qcow2");
}

/// Gives bitmap `name` the extra data `extra` (and the
/// `extra_data_compatible` flag when `compatible`), rewriting the directory
/// in place (it stays within its cluster) as a newer writer could leave it.
fn add_extra(path: &Path, name: &str, extra: &[u8], compatible: bool) {
    let b = std::fs::read(path).expect("read image");
    let be32 = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4"));
    let (at, nb, size, dir) = bitmaps_extension(&b);
    let mut out = Vec::new();
    let mut e = dir;
    for _ in 0..nb {
        let nlen = u16::from_be_bytes([b[e + 18], b[e + 19]]) as usize;
        let old_extra = be32(e + 20) as usize;
        let this = &b[e + 24 + old_extra..e + 24 + old_extra + nlen];
        let start = out.len();
        out.extend_from_slice(&b[e..e + 20]);
        if this == name.as_bytes() {
            if compatible {
                let flags = be32(e + 12) | 4;
                out[start + 12..start + 16].copy_from_slice(&flags.to_be_bytes());
            }
            out.extend_from_slice(&(extra.len() as u32).to_be_bytes());
            out.extend_from_slice(extra);
        } else {
            out.extend_from_slice(&(old_extra as u32).to_be_bytes());
            out.extend_from_slice(&b[e + 24..e + 24 + old_extra]);
        }
        out.extend_from_slice(this);
        out.resize(start + (out.len() - start).div_ceil(8) * 8, 0);
        e += (24 + old_extra + nlen).div_ceil(8) * 8;
    }
    assert_eq!(e - dir, size);
    poke(path, dir as u64, &out);
    poke(path, (at + 16) as u64, &(out.len() as u64).to_be_bytes());
}

/// The extra data of each bitmap in `path`'s directory, by name.
fn extras(p: &Path, file: &str) -> Vec<(String, Vec<u8>, bool)> {
    let b = std::fs::read(p.join(file)).expect("read image");
    let be32 = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4"));
    let (_, nb, _, mut e) = bitmaps_extension(&b);
    let mut out = Vec::new();
    for _ in 0..nb {
        let nlen = u16::from_be_bytes([b[e + 18], b[e + 19]]) as usize;
        let x = be32(e + 20) as usize;
        let name = String::from_utf8_lossy(&b[e + 24 + x..e + 24 + x + nlen]).into_owned();
        out.push((name, b[e + 24..e + 24 + x].to_vec(), be32(e + 12) & 4 != 0));
        e += (24 + x + nlen).div_ceil(8) * 8;
    }
    out
}

#[test]
fn extra_data_is_kept_and_guards_its_bitmap() {
    // qcow2.txt: a bitmap whose extra data is unknown may be used only
    // with extra_data_compatible; either way the data is left as it is.
    // (QEMU refuses to open such images at all.)
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "a.qcow2", "64M"]);
    qemu_img(p, &["bitmap", "--add", "a.qcow2", "strange"]);
    qemu_img(p, &["bitmap", "--add", "a.qcow2", "known"]);
    qemu_io(p, "qcow2", "a.qcow2", &["write 0 64k"]);
    add_extra(
        &p.join("a.qcow2"),
        "strange",
        &[0xaa, 0xbb, 0xcc, 0xdd],
        false,
    );
    add_extra(&p.join("a.qcow2"), "known", &[0x11, 0x22], true);
    let r = run_in(p, "qemu-img", &["check", "a.qcow2"]);
    assert!(
        r.stderr.contains("extra data is not supported"),
        "{}",
        r.stderr
    );
    // The unknown one can be neither read nor changed; the image still is.
    strata(p, &["img", "bitmap", "dump", "a.qcow2", "strange"])
        .one_error(1, "bitmap 'strange' has extra data");
    for verb in ["clear", "enable", "disable"] {
        strata(p, &["img", "bitmap", verb, "a.qcow2", "strange"])
            .one_error(1, "bitmap 'strange' has extra data");
    }
    // Writes and another bitmap's creation rewrite the directory: the
    // extra data stays, the compatible bitmap tracks, the other does not.
    ok(p, &["img", "bitmap", "add", "a.qcow2", "new"]);
    ok(
        p,
        &[
            "img",
            "write",
            "a.qcow2",
            "--offset",
            "1M",
            "--pattern",
            "0x5",
            "--length",
            "64k",
        ],
    );
    let want = vec![
        ("strange".to_string(), vec![0xaa, 0xbb, 0xcc, 0xdd], false),
        ("known".to_string(), vec![0x11, 0x22], true),
        ("new".to_string(), vec![], false),
    ];
    assert_eq!(extras(p, "a.qcow2"), want);
    let dump = |name: &str| {
        ok(
            p,
            &["img", "bitmap", "dump", "--output", "json", "a.qcow2", name],
        )
        .json()
    };
    assert_eq!(
        dump("known"),
        as_json(&[(0, 64 << 10), (1 << 20, 64 << 10)])
    );
    assert_eq!(dump("new"), as_json(&[(1 << 20, 64 << 10)]));
    ok(p, &["img", "check", "a.qcow2"]);
    // Removing both leaves an image QEMU opens and finds clean, with the
    // data written.
    ok(p, &["img", "bitmap", "remove", "a.qcow2", "strange"]);
    ok(p, &["img", "bitmap", "remove", "a.qcow2", "known"]);
    assert_clean(p, "a.qcow2");
    qemu_io(p, "qcow2", "a.qcow2", &["read -P 5 1M 64k"]);
    assert_eq!(qemu_bitmaps(p, "a.qcow2")[0]["name"], "new");
}
