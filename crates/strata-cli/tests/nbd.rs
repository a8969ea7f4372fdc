//! `strata nbd serve` against real clients and beside qemu-nbd: nbdinfo
//! lists the same exports, contexts and block sizes, `nbdinfo --map` gives
//! the same base:allocation extents as qemu-nbd serving the same image,
//! qemu-img reads exactly what the image holds, qemu-io writes, zeroes and
//! discards land as they do through qemu-nbd, nbdcopy copies bit for bit;
//! and a table of bad requests on raw sockets gets the protocol's errors,
//! never disturbing another client or the image.

mod common;
use common::nbd::*;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A qcow2 image with data, zero clusters, a discarded range and holes.
fn sample(p: &Path, name: &str) {
    qemu_img(p, &["create", "-q", "-f", "qcow2", name, "64M"]);
    qemu_io(
        p,
        "qcow2",
        name,
        &[
            "write -P 7 1M 2M",
            "write -z 8M 1M",
            "write -P 9 20M 64k",
            "write -P 3 30M 3M",
            "discard 31M 1M",
        ],
    );
}

#[test]
fn reads_maps_and_lists_match_qemu_nbd() {
    let d = tmp();
    let p = d.path();
    sample(p, "d.qcow2");
    let ours = strata_nbd(p, "s.sock", &["name=disk,file=d.qcow2,readonly"]);
    let theirs = qemu_nbd(p, "q.sock", "d.qcow2", true, &[]);
    let map = |uri: &str| run_in(p, "nbdinfo", &["--map", uri]).expect(0).stdout;
    assert_eq!(map(&ours.uri(p, "disk")), map(&theirs.uri(p, "")));
    let info = run_in(p, "nbdinfo", &["--json", &ours.uri(p, "disk")]).expect(0);
    let v = info.json();
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "disk");
    assert_eq!(e["export-size"], 64 << 20);
    assert_eq!(e["is_read_only"], true);
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 << 20);
    assert_eq!(e["contexts"][0], "base:allocation");
    // qemu-img reads exactly what the image holds; nbdcopy copies it.
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
            "compare", "-U", "-f", "raw", "-F", "qcow2", "a.raw", "d.qcow2",
        ],
    );
    run_in(p, "nbdcopy", &[&ours.uri(p, "disk"), "b.raw"]).expect(0);
    assert_eq!(
        std::fs::read(p.join("a.raw")).unwrap(),
        std::fs::read(p.join("b.raw")).unwrap()
    );
    assert!(ours.stop().success());
    drop(theirs);
    assert!(
        !p.join("s.sock").exists(),
        "the socket is removed at the end"
    );
}

#[test]
fn bitmap_and_allocation_depth_contexts_match_qemu_nbd() {
    let d = tmp();
    let p = d.path();
    // A backing chain: data in the base, a bitmap in the top recording the
    // top's writes, zeroes and discards.
    sample(p, "base.qcow2");
    qemu_img(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "base.qcow2",
            "top.qcow2",
        ],
    );
    qemu_img(p, &["bitmap", "--add", "-g", "64k", "top.qcow2", "b1"]);
    qemu_io(
        p,
        "qcow2",
        "top.qcow2",
        &[
            "write -P 4 2M 100k",
            "write -z 21M 64k",
            "write -P 5 40M 1M",
            "discard 1M 64k",
        ],
    );
    let ours = strata_nbd(
        p,
        "s.sock",
        &["name=t,file=top.qcow2,readonly,bitmap=b1,allocation-depth"],
    );
    let abs = p.join("q.sock").display().to_string();
    let theirs = Server::start(
        p,
        "qemu-nbd",
        &[
            "-t",
            "-r",
            "-f",
            "qcow2",
            "-B",
            "b1",
            "-A",
            "-x",
            "t",
            "-k",
            &abs,
            "top.qcow2",
        ],
        "q.sock",
    );
    for ctx in [
        "base:allocation",
        "qemu:dirty-bitmap:b1",
        "qemu:allocation-depth",
    ] {
        let map = |uri: &str| {
            run_in(p, "nbdinfo", &[&format!("--map={ctx}"), uri])
                .expect(0)
                .stdout
        };
        let (a, b) = (map(&ours.uri(p, "t")), map(&theirs.uri(p, "t")));
        assert_eq!(a, b, "{ctx}");
        assert!(a.lines().count() > 2, "{ctx}: {a}");
    }
    let v = run_in(p, "nbdinfo", &["--json", &ours.uri(p, "t")])
        .expect(0)
        .json();
    let mut contexts: Vec<String> = v["exports"][0]["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    contexts.sort();
    assert_eq!(
        contexts,
        [
            "base:allocation",
            "qemu:allocation-depth",
            "qemu:dirty-bitmap:b1"
        ]
    );
    // A bitmap that is not there is refused when the server starts.
    strata(
        p,
        &[
            "nbd",
            "serve",
            "--socket",
            "x.sock",
            "file=top.qcow2,readonly,bitmap=nope",
        ],
    )
    .one_error(1, "nope");
    assert!(ours.stop().success());
}

#[test]
fn several_exports_are_listed() {
    let d = tmp();
    let p = d.path();
    sample(p, "a.qcow2");
    qemu_img(p, &["create", "-q", "-f", "raw", "b.raw", "1M"]);
    let ours = strata_nbd(
        p,
        "s.sock",
        &[
            "name=one,file=a.qcow2",
            "name=two,file=b.raw,format=raw,readonly",
        ],
    );
    let out = run_in(p, "nbdinfo", &["--list", "--json", &ours.uri(p, "")]).expect(0);
    let v = out.json();
    let names: Vec<&str> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(v["exports"][1]["export-size"], 1 << 20);
    assert_eq!(v["exports"][1]["is_read_only"], true);
    assert_eq!(v["exports"][0]["is_read_only"], false);
    let r = run_in(p, "nbdinfo", &[&ours.uri(p, "three")]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("three") || r.stderr.contains("unknown"),
        "{}",
        r.stderr
    );
    assert!(ours.stop().success());
}

#[test]
fn writes_zeroes_and_discards_land_as_through_qemu_nbd() {
    let d = tmp();
    let p = d.path();
    sample(p, "s.qcow2");
    sample(p, "q.qcow2");
    let ours = strata_nbd(p, "s.sock", &["s.qcow2"]);
    let theirs = qemu_nbd(p, "q.sock", "q.qcow2", false, &[]);
    let cmds = [
        "write -P 5 0 64k",
        "write -P 6 1000k 300k",
        "write -z 2M 512k",
        "write -z -u 30M 1M",
        "discard 20M 64k",
        "write -P 8 63M 1M",
        "flush",
    ];
    for uri in [ours.uri(p, ""), theirs.uri(p, "")] {
        let mut args = vec!["-f", "raw"];
        for c in &cmds {
            args.extend(["-c", c]);
        }
        args.push(&uri);
        let r = run_in(p, "qemu-io", &args).expect(0);
        assert!(!r.stdout.contains("failed"), "{}", r.stdout);
    }
    assert!(ours.stop().success());
    drop(theirs);
    assert_clean(p, "s.qcow2");
    assert_clean(p, "q.qcow2");
    assert_same(p, "s.qcow2", "q.qcow2");
    // The writes really landed (the comparison can fail).
    qemu_io(
        p,
        "qcow2",
        "s.qcow2",
        &["read -P 5 0 64k", "read -P 8 63M 1M"],
    );
}

// ---- raw protocol ---------------------------------------------------------

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

fn connect(p: &Path) -> UnixStream {
    let s = UnixStream::connect(p.join("s.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Greeting read, client flags sent (fixed newstyle, no zeroes).
fn greet(p: &Path) -> UnixStream {
    let mut s = connect(p);
    let hello = read_n(&mut s, 18);
    assert_eq!(
        u64::from_be_bytes(hello[0..8].try_into().unwrap()),
        NBDMAGIC
    );
    assert_eq!(
        u64::from_be_bytes(hello[8..16].try_into().unwrap()),
        IHAVEOPT
    );
    assert_eq!(u16::from_be_bytes([hello[16], hello[17]]), 3);
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s
}

fn send_opt(s: &mut UnixStream, opt: u32, data: &[u8]) {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// One option reply: (option, type, data).
fn opt_reply(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    let h = read_n(s, 20);
    assert_eq!(u64::from_be_bytes(h[0..8].try_into().unwrap()), REPLY_MAGIC);
    let len = u32_at(&h, 16) as usize;
    (u32_at(&h, 8), u32_at(&h, 12), read_n(s, len))
}

/// GO on the default export; returns the socket in transmission.
fn go(p: &Path, structured: bool) -> UnixStream {
    let mut s = greet(p);
    if structured {
        send_opt(&mut s, 8, &[]);
        assert_eq!(opt_reply(&mut s).1, 1);
    }
    send_opt(&mut s, 7, &[0, 0, 0, 0, 0, 0]);
    loop {
        let (_, kind, _) = opt_reply(&mut s);
        if kind == 1 {
            return s;
        }
        assert_eq!(kind, 3, "an info reply");
    }
}

fn request(s: &mut UnixStream, flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) {
    let mut m = 0x2560_9513u32.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&offset.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    s.write_all(&m).unwrap();
}

/// A simple reply: (error, cookie).
fn simple(s: &mut UnixStream) -> (u32, u64) {
    let h = read_n(s, 16);
    assert_eq!(u32_at(&h, 0), 0x6744_6698);
    (
        u32_at(&h, 4),
        u64::from_be_bytes(h[8..16].try_into().unwrap()),
    )
}

/// True when the server closed the connection.
fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn bad_input_gets_protocol_errors_and_disturbs_nobody() {
    let d = tmp();
    let p = d.path();
    sample(p, "d.qcow2");
    qemu_img(p, &["create", "-q", "-f", "qcow2", "ro.qcow2", "1M"]);
    let ours = strata_nbd(p, "s.sock", &["d.qcow2", "name=ro,file=ro.qcow2,readonly"]);
    // A client that stays connected through everything below.
    let mut bystander = go(p, false);

    // Handshake: unknown client flags, bad option magic, oversized option,
    // truncated greeting reply: each just closes that connection.
    let mut s = connect(p);
    read_n(&mut s, 18);
    s.write_all(&0x80u32.to_be_bytes()).unwrap();
    assert!(closed(&mut s), "unknown client flags");
    let mut s = greet(p);
    s.write_all(&[0xde; 16]).unwrap();
    assert!(closed(&mut s), "garbage after the magic");
    let mut s = greet(p);
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&m).unwrap();
    assert!(closed(&mut s), "an option of 4 GiB");
    let mut s = connect(p);
    read_n(&mut s, 10);
    drop(s);
    // Options: unknown → UNSUP, LIST with data → INVALID, GO on an unknown
    // export → UNKNOWN, SET_META_CONTEXT before structured → INVALID,
    // INFO truncated → INVALID; the session goes on after each.
    let mut s = greet(p);
    for (opt, data, want) in [
        (99u32, vec![1u8, 2, 3], 0x8000_0001u32),
        (3, vec![1], 0x8000_0003),
        (
            7,
            [&4u32.to_be_bytes()[..], b"nope", &[0, 0]].concat(),
            0x8000_0006,
        ),
        (10, vec![0, 0, 0, 0, 0, 0, 0, 0], 0x8000_0003),
        (6, vec![0, 0, 0, 9], 0x8000_0003),
    ] {
        send_opt(&mut s, opt, &data);
        let (o, kind, _) = opt_reply(&mut s);
        assert_eq!((o, kind), (opt, want), "option {opt}");
    }
    send_opt(&mut s, 2, &[]);
    assert_eq!(opt_reply(&mut s).1, 1, "ABORT is acknowledged");
    assert!(closed(&mut s));

    // Transmission: errors by the protocol's numbers.
    let mut s = go(p, false);
    let size = 64u64 << 20;
    request(&mut s, 0, 0, 1, size - 512, 1024);
    assert_eq!(simple(&mut s), (22, 1), "read past the end: EINVAL");
    request(&mut s, 0, 0, 2, u64::MAX - 10, 100);
    assert_eq!(simple(&mut s), (22, 2), "offset overflow: EINVAL");
    request(&mut s, 0, 42, 3, 0, 0);
    assert_eq!(simple(&mut s), (22, 3), "unknown command: EINVAL");
    request(&mut s, 0x40, 0, 4, 0, 512);
    assert_eq!(simple(&mut s), (22, 4), "unknown flag: EINVAL");
    request(&mut s, 0, 7, 5, 0, 512);
    assert_eq!(
        simple(&mut s),
        (22, 5),
        "block status without contexts: EINVAL"
    );
    request(&mut s, 0, 4, 6, size, 4096);
    assert_eq!(simple(&mut s), (22, 6), "trim past the end: EINVAL");
    // A write past the end: its payload is consumed, the error returned.
    request(&mut s, 0, 1, 7, size, 4);
    s.write_all(&[1, 2, 3, 4]).unwrap();
    assert_eq!(simple(&mut s), (22, 7));
    // Still in step: a good read works.
    request(&mut s, 0, 0, 8, 1 << 20, 4);
    assert_eq!(simple(&mut s), (0, 8));
    assert_eq!(read_n(&mut s, 4), [7, 7, 7, 7]);
    // A broken request header ends this connection only.
    s.write_all(&[0xff; 28]).unwrap();
    assert!(closed(&mut s));

    // Writes to the read-only export: EPERM, nothing written.
    let mut s = greet(p);
    let data = [&2u32.to_be_bytes()[..], b"ro", &[0, 0]].concat();
    send_opt(&mut s, 7, &data);
    while opt_reply(&mut s).1 != 1 {}
    request(&mut s, 0, 1, 9, 0, 4);
    s.write_all(&[1, 2, 3, 4]).unwrap();
    assert_eq!(simple(&mut s), (1, 9));
    request(&mut s, 0, 6, 10, 0, 4096);
    assert_eq!(simple(&mut s), (1, 10));
    request(&mut s, 0, 2, 11, 0, 0);
    assert!(closed(&mut s), "DISC closes");

    // Structured: a read error comes as an error chunk, never simple.
    let mut s = go(p, true);
    request(&mut s, 0, 0, 12, size, 512);
    let h = read_n(&mut s, 20);
    assert_eq!(u32_at(&h, 0), 0x668e_33ef);
    assert_eq!(u16::from_be_bytes([h[6], h[7]]), 0x8001, "an error chunk");
    let body = read_n(&mut s, u32_at(&h, 16) as usize);
    assert_eq!(u32_at(&body, 0), 22);

    // The bystander saw nothing of it.
    request(&mut bystander, 0, 0, 99, 20 << 20, 4);
    assert_eq!(simple(&mut bystander), (0, 99));
    assert_eq!(read_n(&mut bystander, 4), [9, 9, 9, 9]);
    drop(bystander);
    drop(s);
    assert!(ours.stop().success());
    assert_clean(p, "d.qcow2");
    assert_clean(p, "ro.qcow2");
    qemu_io(p, "qcow2", "ro.qcow2", &["read -P 0 0 4k"]);
}

#[test]
fn a_non_loopback_address_needs_insecure() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "d.qcow2", "1M"]);
    strata(p, &["nbd", "serve", "--bind", "0.0.0.0:10809", "d.qcow2"]).one_error(1, "TLS");
    strata(p, &["nbd", "serve", "d.qcow2"]).one_error(2, "--socket");
}
