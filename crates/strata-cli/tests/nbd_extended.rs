//! Extended headers (`NBD_OPT_EXTENDED_HEADERS`): QEMU's own client
//! negotiates them with strata and reads, writes and maps what qemu-nbd
//! gives; and the same raw 32-byte requests sent to strata and to qemu-nbd
//! serving the same image get the same replies, chunk for chunk (64-bit
//! block status beyond 4 GiB, the payload form filtering contexts, errors),
//! error messages aside.

mod common;
use common::nbd::*;
use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// An 8 GiB image: data, zeroes, a bitmap tracking writes past 4 GiB.
fn sample(p: &Path) {
    qemu_img(p, &["create", "-q", "-f", "qcow2", "d.qcow2", "8G"]);
    qemu_io(
        p,
        "qcow2",
        "d.qcow2",
        &["write -P 7 1M 2M", "write -z 8M 1M", "write -P 9 5G 64k"],
    );
    qemu_img(p, &["bitmap", "--add", "d.qcow2", "b1"]);
    qemu_io(
        p,
        "qcow2",
        "d.qcow2",
        &["write -P 3 6G 1M", "write -P 4 7G 64k"],
    );
}

#[test]
fn qemu_clients_use_extended_headers_with_strata() {
    let d = tmp();
    let p = d.path();
    sample(p);
    let theirs = qemu_nbd(p, "q.sock", "d.qcow2", true, &[]);
    let map_q = qemu_img(p, &["map", "--output=json", &theirs.uri(p, "")]).stdout;
    drop(theirs);

    qemu_img(p, &["create", "-q", "-f", "qcow2", "w.qcow2", "8G"]);
    let args = [
        "nbd",
        "serve",
        "--socket",
        "s.sock",
        "--persistent",
        "name=d,file=d.qcow2,readonly",
        "name=w,file=w.qcow2",
    ];
    let bin = env!("CARGO_BIN_EXE_strata");
    let ours = Server::start_logging(p, bin, &args, "s.sock", Some("log"));
    // Extents past 4 GiB come whole, as with qemu-nbd.
    let map_s = qemu_img(p, &["map", "--output=json", &ours.uri(p, "d")]).stdout;
    assert_eq!(map_s, map_q);
    assert!(map_s.contains("\"length\": 5365563392"), "{map_s}");
    let r = qemu_img(p, &["compare", "-f", "qcow2", "d.qcow2", &ours.uri(p, "d")]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // Writes, zeroes and discards beyond 4 GiB, read back through NBD.
    let w = ours.uri(p, "w");
    let io = |cmds: &[&str]| {
        let mut args = vec!["-f", "raw"];
        for c in cmds {
            args.extend_from_slice(&["-c", c]);
        }
        args.push(&w);
        let r = run_in(p, "qemu-io", &args);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        assert!(!r.stdout.contains("failed"), "{}", r.stdout);
    };
    io(&[
        "write -P 5 0 1M",
        "write -P 6 6G 3M",
        "write -z 6G 1M",
        "discard 7G 1M",
        "flush",
    ]);
    io(&["read -P 5 0 1M", "read -P 0 6G 1M", "read -P 6 6145M 2M"]);
    drop(ours);
    let log = std::fs::read_to_string(p.join("log")).unwrap();
    let used = log
        .lines()
        .filter(|l| l.contains("transmission") && l.contains("headers=Extended"))
        .count();
    assert!(used >= 4, "every QEMU client negotiated them:\n{log}");
    assert_clean(p, "w.qcow2");
    qemu_io(
        p,
        "qcow2",
        "w.qcow2",
        &["read -P 6 6145M 2M", "read -P 0 6G 1M"],
    );
}

// ---- raw extended requests --------------------------------------------------

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;

/// One reply chunk, as compared between servers.
#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    /// Flags, type, cookie, offset and payload of a non-error chunk; block
    /// status context ids are replaced by the context's name.
    Content(u16, u16, u64, u64, Vec<u8>),
    /// An error chunk: flags, cookie, offset, error number (the message
    /// differs between servers).
    Error(u16, u64, u64, u32),
}

/// A raw connection with extended headers negotiated.
struct Ext {
    s: UnixStream,
    /// Context id → name, as the server assigned them.
    contexts: BTreeMap<u32, String>,
    flags: u16,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

impl Ext {
    fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    fn opt(&mut self, opt: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
        let mut out = Vec::new();
        loop {
            let h = self.read_n(20);
            let (kind, len) = (be32(&h[12..]), be32(&h[16..]) as usize);
            let data = self.read_n(len);
            out.push((kind, data));
            if kind == 1 || kind & 0x8000_0000 != 0 {
                return out;
            }
        }
    }

    /// Connects to the default export, extended headers, `contexts`.
    fn connect(p: &Path, socket: &str, contexts: &[&str]) -> Ext {
        let s = UnixStream::connect(p.join(socket)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Ext {
            s,
            contexts: BTreeMap::new(),
            flags: 0,
        };
        c.read_n(18);
        c.s.write_all(&3u32.to_be_bytes()).unwrap();
        assert_eq!(c.opt(11, &[]), vec![(1, vec![])], "extended headers");
        // Structured replies cannot follow: EXT_HEADER_REQD.
        assert_eq!(c.opt(8, &[])[0].0, 0x8000_000a);
        let mut q = 0u32.to_be_bytes().to_vec();
        q.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
        for n in contexts {
            q.extend_from_slice(&(n.len() as u32).to_be_bytes());
            q.extend_from_slice(n.as_bytes());
        }
        for (kind, data) in c.opt(10, &q) {
            if kind == 4 {
                let name = String::from_utf8(data[4..].to_vec()).unwrap();
                c.contexts.insert(be32(&data), name);
            } else {
                assert_eq!(kind, 1);
            }
        }
        for (kind, data) in c.opt(7, &[0, 0, 0, 0, 0, 0]) {
            if kind == 3 && data[..2] == [0, 0] {
                c.flags = u16::from_be_bytes([data[10], data[11]]);
            } else {
                assert!(kind == 1 || kind == 3, "GO: {kind:#x}");
            }
        }
        c
    }

    fn id(&self, name: &str) -> u32 {
        *self.contexts.iter().find(|(_, n)| *n == name).unwrap().0
    }

    /// Sends a 32-byte request, then `payload`.
    fn send(&mut self, flags: u16, kind: u16, cookie: u64, offset: u64, len: u64, payload: &[u8]) {
        let mut m = 0x21e4_1c71u32.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(payload);
        self.s.write_all(&m).unwrap();
    }

    /// The chunks of one reply, up to the one flagged done.
    fn reply(&mut self) -> Vec<Chunk> {
        let mut out = Vec::new();
        loop {
            let h = self.read_n(32);
            assert_eq!(be32(&h), 0x6e8a_278c, "an extended reply");
            let flags = u16::from_be_bytes([h[4], h[5]]);
            let kind = u16::from_be_bytes([h[6], h[7]]);
            let (cookie, offset) = (be64(&h[8..]), be64(&h[16..]));
            let mut body = self.read_n(be64(&h[24..]) as usize);
            if kind & 0x8000 != 0 {
                out.push(Chunk::Error(flags, cookie, offset, be32(&body)));
            } else {
                if kind == 6 {
                    // BLOCK_STATUS_EXT: the id becomes the context's name.
                    let name = self.contexts[&be32(&body)].clone();
                    body.splice(0..4, name.into_bytes());
                }
                out.push(Chunk::Content(flags, kind, cookie, offset, body));
            }
            if flags & 1 != 0 {
                return out;
            }
        }
    }
}

#[test]
fn extended_replies_match_qemu_nbd() {
    let d = tmp();
    let p = d.path();
    sample(p);
    let contexts = ["base:allocation", "qemu:dirty-bitmap:b1"];
    let theirs = qemu_nbd(p, "q.sock", "d.qcow2", true, &["-B", "b1"]);
    let ours = strata_nbd(p, "s.sock", &["name=,file=d.qcow2,readonly,bitmap=b1"]);
    let mut q = Ext::connect(p, "q.sock", &contexts);
    let mut s = Ext::connect(p, "s.sock", &contexts);
    assert_eq!(s.contexts.len(), 2);
    // Read-only, flush, DF and the block status payload form, as qemu-nbd.
    let shown = 0x1000 | 0x0080 | 0x0002 | 0x0004;
    assert_eq!(s.flags & shown, q.flags & shown);
    assert_ne!(s.flags & 0x1000, 0, "NBD_FLAG_BLOCK_STATUS_PAYLOAD");

    let size = 8u64 << 30;
    let bitmap_only = move |c: &Ext| {
        let mut b = (size - (4 << 20)).to_be_bytes().to_vec();
        b.extend_from_slice(&c.id("qemu:dirty-bitmap:b1").to_be_bytes());
        b
    };
    let both_reversed = |c: &Ext| {
        let mut b = (9u64 << 30).to_be_bytes().to_vec();
        b.extend_from_slice(&c.id("qemu:dirty-bitmap:b1").to_be_bytes());
        b.extend_from_slice(&c.id("base:allocation").to_be_bytes());
        b
    };
    type Payload = Box<dyn Fn(&Ext) -> Vec<u8>>;
    // (flags, command, offset, effect length, payload)
    let cases: Vec<(u16, u16, u64, u64, Payload)> = vec![
        // Block status over the whole 8 GiB: one effect length over 32 bits.
        (0, 7, 0, size, Box::new(|_| vec![])),
        (0, 7, 4 << 20, size - (4 << 20), Box::new(|_| vec![])),
        // REQ_ONE.
        (8, 7, 0, size, Box::new(|_| vec![])),
        // The payload form: only the bitmap, from 4 MiB.
        (0x20, 7, 4 << 20, 0, Box::new(bitmap_only)),
        // Both contexts, effect length past the end: EINVAL.
        (0x20, 7, 0, 0, Box::new(both_reversed)),
        // A payload form that is not 8 + 4n: EINVAL, payload consumed.
        (0x20, 7, 0, 0, Box::new(|_| vec![0; 10])),
        // Reads: data and holes, 64 KiB over the 5 GiB data.
        (0, 0, 0, 4 << 20, Box::new(|_| vec![])),
        (
            0,
            0,
            (5 << 30) - (32 << 10),
            128 << 10,
            Box::new(|_| vec![]),
        ),
        (4, 0, 6 << 30, 64 << 10, Box::new(|_| vec![])),
        // A read carrying a payload: consumed, EINVAL.
        (0x20, 0, 0, 0, Box::new(|_| vec![1; 16])),
        // A read past the end.
        (0, 0, size - 512, 1024, Box::new(|_| vec![])),
        // Trim and zero with 64-bit lengths past the end.
        (0, 4, 0, size + 4096, Box::new(|_| vec![])),
        (0, 3, 0, 0, Box::new(|_| vec![])),
        // Still in step.
        (0, 0, 7 << 30, 4096, Box::new(|_| vec![])),
    ];
    for (i, (flags, kind, offset, len, payload)) in cases.iter().enumerate() {
        let cookie = 100 + i as u64;
        let mut got = Vec::new();
        for c in [&mut q, &mut s] {
            let body = payload(c);
            let len = if body.is_empty() {
                *len
            } else {
                body.len() as u64
            };
            c.send(*flags, *kind, cookie, *offset, len, &body);
            got.push(c.reply());
        }
        assert_eq!(
            got[1], got[0],
            "case {i}: command {kind} flags {flags:#x} at {offset}"
        );
    }
    // A write to the read-only export, as QEMU's client sends writes
    // (without NBD_CMD_FLAG_PAYLOAD_LEN) and with the flag: the payload is
    // consumed and the answer is EPERM, as the protocol asks (qemu-nbd
    // says EINVAL).
    for (i, flags) in [0u16, 0x20].into_iter().enumerate() {
        s.send(flags, 1, 500 + i as u64, 0, 512, &[7; 512]);
        assert_eq!(s.reply(), vec![Chunk::Error(1, 500 + i as u64, 0, 1)]);
    }
    s.send(0, 0, 600, 5 << 30, 512, &[]);
    assert_eq!(
        s.reply()[0],
        Chunk::Content(1, 1, 600, 5 << 30, {
            let mut b = (5u64 << 30).to_be_bytes().to_vec();
            b.extend_from_slice(&[9; 512]);
            b
        })
    );
    drop(ours);
    drop(theirs);
    assert_clean(p, "d.qcow2");
}
