//! Protocol fuzzing: valid sessions (handshake, options, requests with
//! payloads, in simple, structured and extended form) mutated at random —
//! bytes flipped, fields set to edge values, streams cut short or padded
//! with garbage — sent to one persistent server. Whatever comes, the
//! server answers or closes that connection: it never panics, a bystander
//! connection keeps reading what the image holds, the read-only export is
//! unchanged, and both images pass `qemu-img check` at the end.

mod common;
use common::nbd::*;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const SIZE: u64 = 64 << 20;

/// An option: magic, number, length, data.
fn option(out: &mut Vec<u8>, opt: u32, data: &[u8]) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// A request, compact or extended, with its payload.
fn request(
    out: &mut Vec<u8>,
    ext: bool,
    flags: u16,
    kind: u16,
    offset: u64,
    len: u64,
    payload: &[u8],
) {
    let magic: u32 = if ext { 0x2156_0c5a } else { 0x2560_9513 };
    out.extend_from_slice(&magic.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&0x1234u64.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    if ext {
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// A whole valid session: `mode` 0 simple, 1 structured, 2 extended.
fn session(rng: &mut StdRng, mode: u8) -> Vec<u8> {
    let mut s = 3u32.to_be_bytes().to_vec(); // FIXED_NEWSTYLE | NO_ZEROES
    let name: &[u8] = if rng.gen_bool(0.3) { b"ro" } else { b"" };
    match mode {
        1 => option(&mut s, 8, &[]),
        2 => option(&mut s, 11, &[]),
        _ => {}
    }
    option(&mut s, 3, &[]);
    if mode > 0 {
        let ctx = b"base:allocation";
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&(ctx.len() as u32).to_be_bytes());
        d.extend_from_slice(ctx);
        option(&mut s, 10, &d);
    }
    let mut go = (name.len() as u32).to_be_bytes().to_vec();
    go.extend_from_slice(name);
    go.extend_from_slice(&1u16.to_be_bytes());
    go.extend_from_slice(&3u16.to_be_bytes()); // NBD_INFO_BLOCK_SIZE
    option(&mut s, 7, &go);
    let ext = mode == 2;
    for _ in 0..rng.gen_range(1..12) {
        let off = rng.gen_range(0..SIZE / 4096) * 4096;
        let len = 4096 * rng.gen_range(1..64u64);
        match rng.gen_range(0..8) {
            0 | 1 => request(&mut s, ext, 0, 0, off, len, &[]),
            2 => {
                let payload = vec![rng.gen::<u8>(); len as usize];
                request(&mut s, ext, 0, 1, off, len, &payload);
            }
            3 => request(&mut s, ext, 0, 6, off, len, &[]),
            4 => request(&mut s, ext, 0, 4, off, len, &[]),
            5 => request(&mut s, ext, 0, 3, 0, 0, &[]),
            6 => request(&mut s, ext, 0, 7, off, len, &[]),
            _ => request(&mut s, ext, 0, 5, off, len, &[]),
        }
    }
    if rng.gen_bool(0.5) {
        request(&mut s, ext, 0, 2, 0, 0, &[]);
    }
    s
}

/// `s` mutated in one of several ways.
fn mutate(rng: &mut StdRng, mut s: Vec<u8>) -> Vec<u8> {
    const EDGES: [u64; 6] = [0, 1, SIZE - 1, SIZE, u32::MAX as u64, u64::MAX];
    for _ in 0..rng.gen_range(1..4) {
        let at = rng.gen_range(0..s.len());
        match rng.gen_range(0..5) {
            0 => s[at] ^= 1 << rng.gen_range(0..8),
            1 => s[at] = rng.gen(),
            2 => {
                let v = EDGES[rng.gen_range(0..EDGES.len())].to_be_bytes();
                let w = if rng.gen_bool(0.5) { 4 } else { 8 };
                let end = (at + w).min(s.len());
                s[at..end].copy_from_slice(&v[8 - (end - at)..]);
            }
            3 => s.truncate(at),
            _ => {
                let junk: Vec<u8> = (0..rng.gen_range(1..64)).map(|_| rng.gen()).collect();
                s.splice(at..at, junk);
            }
        }
        if s.is_empty() {
            break;
        }
    }
    s
}

/// Sends `bytes` on a new connection, then reads whatever comes until the
/// server closes it or goes quiet.
fn throw(p: &Path, bytes: &[u8]) {
    let mut c = UnixStream::connect(p.join("s.sock")).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // The server may close early: a failed write is fine.
    let _ = c.write_all(bytes);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 1 << 16];
    while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
}

/// A simple read on the bystander: 4 bytes at `offset`.
fn bystander_read(s: &mut UnixStream, offset: u64) -> Vec<u8> {
    let mut m = Vec::new();
    request(&mut m, false, 0, 0, offset, 4, &[]);
    s.write_all(&m).unwrap();
    let mut head = [0u8; 16];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[4..8], &[0, 0, 0, 0], "the bystander's read failed");
    let mut data = vec![0u8; 4];
    s.read_exact(&mut data).unwrap();
    data
}

/// A bystander past the handshake (simple replies) on the export "ro".
fn bystander(p: &Path) -> UnixStream {
    let mut s = UnixStream::connect(p.join("s.sock")).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    let mut m = 3u32.to_be_bytes().to_vec();
    option(&mut m, 1, b"ro"); // EXPORT_NAME: size and flags, no zeroes
    s.write_all(&m).unwrap();
    let mut info = [0u8; 10];
    s.read_exact(&mut info).unwrap();
    s
}

#[test]
fn mutated_sessions_never_hurt_the_server() {
    let d = tmp();
    let p = d.path();
    for name in ["d.qcow2", "ro.qcow2"] {
        qemu_img(p, &["create", "-q", "-f", "qcow2", name, "64M"]);
        qemu_io(p, "qcow2", name, &["write -P 9 0 8M", "write -P 7 32M 1M"]);
    }
    std::fs::copy(p.join("ro.qcow2"), p.join("ro-before.qcow2")).unwrap();
    let ours = strata_nbd_logged(
        p,
        &["--shared", "4", "d.qcow2", "name=ro,file=ro.qcow2,readonly"],
    );
    let mut watcher = bystander(p);
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for i in 0..400 {
        let mode = (i % 3) as u8;
        let s = session(&mut rng, mode);
        let s = if i % 10 == 0 { s } else { mutate(&mut rng, s) };
        throw(p, &s);
        if i % 50 == 0 {
            assert_eq!(
                bystander_read(&mut watcher, 32 << 20),
                [7; 4],
                "session {i}"
            );
        }
    }
    assert_eq!(bystander_read(&mut watcher, 0), [9; 4]);
    drop(watcher);
    assert!(ours.stop().success());
    let log = std::fs::read_to_string(p.join("server.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    // The sessions reached every phase: requests served and refused,
    // connections dropped for broken headers.
    for (what, least) in [
        ("transmission export=", 100),
        ("protocol violation", 50),
        ("is past the end", 5),
        ("the export is read-only", 20),
    ] {
        let n = log.matches(what).count();
        assert!(n >= least, "'{what}' {n} times only:\n{log}");
    }
    assert_clean(p, "d.qcow2");
    assert_clean(p, "ro.qcow2");
    assert_same(p, "ro.qcow2", "ro-before.qcow2");
}
