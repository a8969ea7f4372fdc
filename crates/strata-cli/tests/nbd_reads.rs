//! Reads of read-only exports, which strata sends from the image files
//! without copying (spliced through a pipe): a chain of a raw base, a
//! qcow2 with compressed and zero clusters, and a qcow2 with subclusters
//! whose file was cut short, read by libnbd at many offsets and lengths
//! (small ones copied, large ones spliced, some too large for a pipe),
//! with structured replies (hole chunks), with `DF`, and with simple
//! replies. Every read must give the bytes qemu-nbd gives for the same
//! image, and what qemu-img converts it to.

mod common;
use common::nbd::*;
use common::*;
use std::path::Path;

/// The chain: `base.raw` ← `mid.qcow2` ← `top.qcow2` (16 MiB), top's file
/// cut in the middle of its last data cluster.
fn chain(p: &Path) {
    qemu_img(p, &["create", "-q", "-f", "raw", "base.raw", "16M"]);
    qemu_io(
        p,
        "raw",
        "base.raw",
        &["write -P 1 0 4M", "write -P 2 8M 1M"],
    );
    qemu_img(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "mid.qcow2",
        ],
    );
    qemu_io(
        p,
        "qcow2",
        "mid.qcow2",
        &[
            "write -c -P 3 1M 1M",
            "write -P 4 5M 2M",
            "write -z 6M 128k",
        ],
    );
    qemu_img(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=128k",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(
        p,
        "qcow2",
        "top.qcow2",
        &[
            "write -P 5 100k 300k",
            "write -z 2M 512k",
            "write -P 6 8320k 64k",
            "write -P 7 15M 1M",
        ],
    );
    // The last cluster written is the last in the file: cut it in half, so
    // part of it reads past the end of the file (as zeros, for both).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p.join("top.qcow2"))
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - (64 << 10)).unwrap();
}

/// libnbd reading from both servers; prints a JSON summary.
const SCRIPT: &str = r#"
import json, random, sys
import nbd

ours, theirs, raw = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read()
size = len(raw)
rng = random.Random(7)
reads = [(o, 1 << 20) for o in range(0, size, 1 << 20)]
reads += [(0, 2 << 20), (14 << 20, 2 << 20), (0, size)]
for _ in range(150):
    n = rng.choice([4096, 65536, 65536 + 123, 200000, 256 << 10, 1 << 20, 3 << 20])
    reads.append((rng.randrange(0, size - n + 1), n))

def connect(uri, structured):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.connect_uri(uri)
    return h

summary = {}
for mode in ["structured", "df", "simple"]:
    a = connect(ours, mode != "simple")
    b = connect(theirs, mode != "simple")
    flags = nbd.CMD_FLAG_DF if mode == "df" else 0
    holes = 0
    def chunk(buf, offset, status, err):
        global holes
        if status == nbd.READ_HOLE:
            holes += 1
        return 0
    for (o, n) in reads:
        if mode == "simple":
            got, want = a.pread(n, o), b.pread(n, o)
        else:
            got = a.pread_structured(n, o, chunk, flags=flags)
            want = b.pread_structured(n, o, lambda *_: 0, flags=flags)
        if got != want or got != raw[o:o + n]:
            print(json.dumps({"mismatch": [mode, o, n]}))
            sys.exit(1)
    summary[mode] = {"holes": holes, "structured": a.get_structured_replies_negotiated()}
    a.shutdown()
    b.shutdown()
print(json.dumps(summary))
"#;

/// Reads spliced and copied, per connection, from the server's debug log.
fn read_counts(p: &Path) -> Vec<(u64, u64)> {
    let log = std::fs::read_to_string(p.join("server.log")).unwrap();
    let counts: Vec<(u64, u64)> = log
        .lines()
        .filter_map(|l| {
            // "reads served export= spliced=N copied=M" (the export named "").
            let rest = l.split("reads served export= ").nth(1)?;
            let mut w = rest.split_whitespace();
            let spliced = w.next()?.strip_prefix("spliced=")?.parse().ok()?;
            let copied = w.next()?.strip_prefix("copied=")?.parse().ok()?;
            Some((spliced, copied))
        })
        .collect();
    assert!(!counts.is_empty(), "no counts in the log:\n{log}");
    counts
}

#[test]
fn spliced_reads_match_qemu_nbd() {
    let d = tmp();
    let p = d.path();
    chain(p);
    qemu_img(p, &["convert", "-O", "raw", "top.qcow2", "top.raw"]);
    let theirs = qemu_nbd(p, "q.sock", "top.qcow2", true, &[]);
    let ours = strata_nbd_logged(p, &["name=,file=top.qcow2,readonly"]);
    std::fs::write(p.join("reads.py"), SCRIPT).unwrap();
    let r = run_in(
        p,
        "/usr/bin/python3",
        &["reads.py", &ours.uri(p, ""), &theirs.uri(p, ""), "top.raw"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let summary: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    // Zeros went as hole chunks unless DF asked for one data chunk.
    assert!(
        summary["structured"]["holes"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert_eq!(summary["df"]["holes"], 0, "{summary}");
    assert_eq!(summary["simple"]["structured"], false, "{summary}");
    assert!(ours.stop().success());
    // Each connection spliced its large reads and copied the others (small
    // ones, and those larger than a pipe).
    let counts = read_counts(p);
    assert_eq!(counts.len(), 3);
    for (spliced, copied) in counts {
        assert!(
            spliced > 100 && copied > 10,
            "{spliced} spliced, {copied} copied"
        );
    }
}

#[test]
fn writable_exports_copy() {
    // A writable export's clusters can move under a reply, so its reads
    // are copied. They read what the image holds.
    let d = tmp();
    let p = d.path();
    chain(p);
    qemu_img(p, &["convert", "-O", "raw", "top.qcow2", "top.raw"]);
    let ours = strata_nbd_logged(p, &["--shared", "4", "top.qcow2"]);
    let out = p.join("copy.raw").display().to_string();
    run_in(p, "nbdcopy", &[&ours.uri(p, ""), &out]).expect(0);
    assert!(ours.stop().success());
    assert_eq!(
        std::fs::read(p.join("copy.raw")).unwrap(),
        std::fs::read(p.join("top.raw")).unwrap()
    );
    let counts = read_counts(p);
    assert!(
        counts.iter().all(|&(spliced, _)| spliced == 0),
        "{counts:?}"
    );
    assert!(counts.iter().map(|&(_, copied)| copied).sum::<u64>() > 0);
}
