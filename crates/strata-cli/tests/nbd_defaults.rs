//! `strata nbd serve` as a user types it: no options beyond the socket and
//! the export. One client at a time, multi-conn not offered (so nbdcopy and
//! other libnbd programs that honour it open one connection, not several
//! that would wait forever), the server ending when its last client leaves,
//! and a client that never finishes its handshake dropped after the
//! default 10 s, freeing the slot. Judged by qemu-nbd run the same way.
//! (Regression: the default server offered multi-conn while taking one
//! client at a time, and every nbdcopy hung.)

mod common;
use common::nbd::*;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// Longest a client may take here before the test calls it hung.
const CLIENT_LIMIT: &str = "120";

/// `strata nbd serve --socket s.sock EXPORT`, and nothing else.
fn serve_default(p: &Path, export: &str) -> Server {
    serve_with(p, &[], export)
}

/// `strata nbd serve --socket s.sock OPTIONS… EXPORT`.
fn serve_with(p: &Path, options: &[&str], export: &str) -> Server {
    let mut args = vec!["nbd", "serve", "--socket", "s.sock"];
    args.extend_from_slice(options);
    args.push(export);
    Server::start(p, STRATA, &args, "s.sock")
}

fn uri(p: &Path, socket: &str) -> String {
    format!("nbd+unix:///?socket={}", p.join(socket).display())
}

/// Runs `program args…` under `timeout`, so a hang fails the test.
fn client(p: &Path, program: &str, args: &[&str]) -> Run {
    let mut all = vec!["--kill-after=5", CLIENT_LIMIT, program];
    all.extend_from_slice(args);
    let r = run_in(p, "timeout", &all);
    assert_ne!(r.code, 124, "{program} hung: {}{}", r.stdout, r.stderr);
    r
}

/// A server without `--persistent` ends by itself once its client left.
fn ends_by_itself(server: Server) {
    let st = server.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "server exit status {st}");
}

/// One client run against a default strata server on `s.sock` serving
/// `export`, which must then end by itself. `{}` in `args` stands for the
/// server's URI.
fn once(p: &Path, export: &str, program: &str, args: &[&str]) -> Run {
    let server = serve_default(p, export);
    let u = uri(p, "s.sock");
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "{}" { u.as_str() } else { a })
        .collect();
    let r = client(p, program, &args);
    ends_by_itself(server);
    r
}

/// qemu-nbd on `q.sock` serving d.qcow2 with its defaults (one client,
/// not persistent) but for `extra`.
fn qemu_default(p: &Path, extra: &[&str]) -> Server {
    let sock = p.join("q.sock").display().to_string();
    // A killed qemu-nbd leaves its socket: the start must not take that
    // for the new one listening.
    let _ = std::fs::remove_file(&sock);
    let mut args = vec!["-f", "qcow2", "-k", &sock];
    args.extend_from_slice(extra);
    args.push("d.qcow2");
    Server::start(p, "qemu-nbd", &args, "q.sock")
}

/// The three kinds of export a user serves, as `EXPORT` arguments, and the
/// qemu-nbd arguments that serve the same thing.
const KINDS: [(&str, &str, &[&str]); 3] = [
    ("writable", "d.qcow2", &[]),
    ("readonly", "file=d.qcow2,readonly", &["-r"]),
    ("snapshot", "file=d.qcow2,snapshot=s1", &["-l", "s1"]),
];

/// d.qcow2 with data, a hole and zeroes, an internal snapshot s1, then
/// different data on top; `expected-writable.raw` and
/// `expected-snapshot.raw` hold what each state reads as.
fn disk(p: &Path) {
    qemu_img(p, &["create", "-q", "-f", "qcow2", "d.qcow2", "64M"]);
    qemu_io(
        p,
        "qcow2",
        "d.qcow2",
        &[
            "write -P 0x11 0 4M",
            "write -z 8M 1M",
            "write -P 0x22 20M 3M",
        ],
    );
    qemu_img(p, &["snapshot", "-c", "s1", "d.qcow2"]);
    qemu_io(
        p,
        "qcow2",
        "d.qcow2",
        &[
            "write -P 0x33 1M 2M",
            "discard 20M 1M",
            "write -P 0x44 40M 64k",
        ],
    );
    qemu_img(
        p,
        &["convert", "-O", "raw", "d.qcow2", "expected-writable.raw"],
    );
    qemu_img(
        p,
        &[
            "convert",
            "-l",
            "snapshot.name=s1",
            "-O",
            "raw",
            "d.qcow2",
            "expected-snapshot.raw",
        ],
    );
}

fn expected(kind: &str) -> &'static str {
    if kind == "snapshot" {
        "expected-snapshot.raw"
    } else {
        "expected-writable.raw"
    }
}

#[test]
fn nbdcopy_completes_against_a_default_server() {
    let d = tmp();
    let p = d.path();
    disk(p);
    for (kind, export, _) in KINDS {
        let out = format!("copy-{kind}.raw");
        once(p, export, "nbdcopy", &["{}", &out]).expect(0);
        assert_same(p, expected(kind), &out);
        // To null too, the command in the report.
        once(p, export, "nbdcopy", &["{}", "null:"]).expect(0);
    }
    assert_clean(p, "d.qcow2");
}

#[test]
fn nbdinfo_map_of_a_default_server_matches_qemu_nbd() {
    let d = tmp();
    let p = d.path();
    disk(p);
    for (kind, export, qemu_args) in KINDS {
        let ours = once(p, export, "nbdinfo", &["--map", "{}"]).expect(0);
        let qemu = qemu_default(p, qemu_args);
        let theirs = client(p, "nbdinfo", &["--map", &uri(p, "q.sock")]).expect(0);
        ends_by_itself(qemu);
        assert_eq!(
            ours.stdout, theirs.stdout,
            "{kind}: map differs from qemu-nbd's"
        );
        assert!(ours.stdout.lines().count() > 2, "{kind}: {}", ours.stdout);
    }
}

#[test]
fn qemu_img_convert_from_a_default_server() {
    let d = tmp();
    let p = d.path();
    disk(p);
    for (kind, export, _) in KINDS {
        let out = format!("conv-{kind}.qcow2");
        once(
            p,
            export,
            "qemu-img",
            &["convert", "-f", "raw", "{}", "-O", "qcow2", &out],
        )
        .expect(0);
        qemu_img(
            p,
            &["compare", "-f", "raw", "-F", "qcow2", expected(kind), &out],
        );
    }
}

/// fio's nbd engine on `socket`: random reads, or for a writable export
/// random writes read back and verified.
fn fio(p: &Path, socket: &str, writable: bool) -> Run {
    let uri = format!("--uri={}", uri(p, socket));
    let mut args = vec![
        "--name=v",
        "--ioengine=nbd",
        &uri,
        "--bs=4k",
        "--iodepth=16",
        "--size=16M",
    ];
    if writable {
        args.extend([
            "--rw=randwrite",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
        ]);
    } else {
        args.push("--rw=randread");
    }
    client(p, "fio", &args)
}

#[test]
fn fio_against_a_default_server() {
    let d = tmp();
    let p = d.path();
    disk(p);
    // fio's nbd engine connects once to learn the size, leaves, then
    // connects again: a server that ends with its last client (qemu-nbd's
    // default, and strata's) is gone by then. Both fail alike.
    let server = serve_default(p, "file=d.qcow2,readonly");
    let ours = fio(p, "s.sock", false);
    ends_by_itself(server);
    let sock = p.join("q.sock").display().to_string();
    let qemu = Server::start(
        p,
        "qemu-nbd",
        &["-r", "-f", "qcow2", "-k", &sock, "d.qcow2"],
        "q.sock",
    );
    let theirs = fio(p, "q.sock", false);
    ends_by_itself(qemu);
    assert_eq!(
        ours.code != 0,
        theirs.code != 0,
        "strata: {}\nqemu-nbd: {}",
        ours.stderr,
        theirs.stderr
    );
    // With --persistent alone (still one client at a time, no multi-conn):
    // read-only exports first, the writable one last.
    for (kind, export, _) in [KINDS[1], KINDS[2], KINDS[0]] {
        let server = serve_with(p, &["--persistent"], export);
        let r = fio(p, "s.sock", kind == "writable");
        assert_eq!(r.code, 0, "fio on {kind}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("err= 0"), "{kind}: {}", r.stdout);
        assert!(server.stop().success());
    }
    assert_clean(p, "d.qcow2");
}

/// `can_multi_conn` as nbdinfo reports it for a server on `socket`.
fn multi_conn(p: &Path, socket: &str) -> bool {
    let r = client(p, "nbdinfo", &["--json", &uri(p, socket)]).expect(0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["exports"][0]["can_multi_conn"]
        .as_bool()
        .unwrap_or_else(|| panic!("no can_multi_conn in {}", r.stdout))
}

#[test]
fn multi_conn_is_offered_as_qemu_nbd_offers_it() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "d.qcow2", "16M"]);
    for shared in ["1", "2", "0"] {
        for (ro_export, ro_qemu) in [("d.qcow2", None), ("file=d.qcow2,readonly", Some("-r"))] {
            let ours = serve_with(p, &["--persistent", "--shared", shared], ro_export);
            let mine = multi_conn(p, "s.sock");
            assert!(ours.stop().success());
            let shared_arg = format!("--shared={shared}");
            let mut extra = vec!["-t", &shared_arg];
            extra.extend(ro_qemu);
            let qemu = qemu_default(p, &extra);
            let theirs = multi_conn(p, "q.sock");
            drop(qemu);
            assert_eq!(mine, theirs, "--shared {shared} {ro_export}");
        }
    }
}

#[test]
fn more_clients_than_shared_wait_for_a_slot() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "d.qcow2", "16M"]);
    let server = serve_with(p, &["--persistent", "--shared", "2"], "d.qcow2");
    // Two clients hold both slots in transmission (nbdsh waits on stdin).
    let hold = |n: u8| {
        std::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import nbd,sys; h=nbd.NBD(); h.connect_uri(sys.argv[1]); print('in', flush=True); sys.stdin.read()",
                &uri(p, "s.sock"),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("holder {n}: {e}"))
    };
    let mut a = hold(1);
    let mut b = hold(2);
    for h in [&mut a, &mut b] {
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(h.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "in\n");
    }
    // A third waits: nbdinfo does not finish while both are held.
    let mut third = std::process::Command::new("nbdinfo")
        .arg(uri(p, "s.sock"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(third.try_wait().unwrap().is_none(), "a third client got in");
    // One leaves: the third gets its slot.
    drop(a.stdin.take());
    a.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = third.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < until,
            "the waiting client never got a slot"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success());
    drop(b.stdin.take());
    b.wait().unwrap();
    assert!(server.stop().success());
}

#[test]
fn a_silent_client_is_dropped_after_the_handshake_limit() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "d.qcow2", "16M"]);
    qemu_io(p, "qcow2", "d.qcow2", &["write -P 0x5a 0 1M"]);
    let server = serve_default(p, "d.qcow2");
    // Connects and says nothing, holding the one slot.
    let silent = std::os::unix::net::UnixStream::connect(p.join("s.sock")).unwrap();
    let start = Instant::now();
    let r = client(p, "nbdinfo", &["--size", &uri(p, "s.sock")]).expect(0);
    let waited = start.elapsed();
    assert_eq!(r.stdout.trim(), "16777216");
    // It waited for the default limit (10 s), not forever.
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(60),
        "nbdinfo waited {waited:?}"
    );
    // The dropped client did not end the server; the served one did.
    ends_by_itself(server);
    drop(silent);
}

/// `l0000.qcow2` (64 KiB of 0x5a, 1 MiB) and overlays up to `l{top}.qcow2`,
/// each backed by the one before: one overlay made by qemu-img, copied
/// with its backing name patched (names of equal length).
fn deep_chain(p: &Path, top: usize) {
    qemu_img(p, &["create", "-q", "-f", "qcow2", "l0000.qcow2", "1M"]);
    qemu_io(p, "qcow2", "l0000.qcow2", &["write -P 0x5a 0 64k"]);
    qemu_img(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "l0000.qcow2",
            "-F",
            "qcow2",
            "t.qcow2",
        ],
    );
    let template = std::fs::read(p.join("t.qcow2")).unwrap();
    let at = template
        .windows(11)
        .position(|w| w == b"l0000.qcow2")
        .expect("backing name in the header");
    for i in 1..=top {
        let mut img = template.clone();
        img[at..at + 11].copy_from_slice(format!("l{:04}.qcow2", i - 1).as_bytes());
        std::fs::write(p.join(format!("l{i:04}.qcow2")), img).unwrap();
    }
}

/// Regression: a chain 4,000 deep (then allowed) overflowed a server
/// thread's stack on the first read, aborting the server and every client.
/// The deepest chain strata opens (1,024 layers) is served; one deeper is
/// refused at start with a clear error.
#[test]
fn the_deepest_chain_is_served_and_a_deeper_one_refused() {
    let d = tmp();
    let p = d.path();
    deep_chain(p, 1024);
    let r = once(p, "l1023.qcow2", "nbdinfo", &["--map", "{}"]).expect(0);
    assert_eq!(
        r.stdout.split_whitespace().collect::<Vec<_>>(),
        [
            "0",
            "65536",
            "0",
            "data",
            "65536",
            "983040",
            "3",
            "hole,zero"
        ],
        "{}",
        r.stdout
    );
    once(p, "l1023.qcow2", "nbdcopy", &["{}", "copy.raw"]).expect(0);
    let copy = std::fs::read(p.join("copy.raw")).unwrap();
    assert!(copy[..65536].iter().all(|&b| b == 0x5a) && copy[65536..].iter().all(|&b| b == 0));
    let r = strata(
        p,
        &[
            "img",
            "read",
            "l1023.qcow2",
            "--offset",
            "0",
            "--length",
            "4096",
        ],
    );
    assert!(
        r.code == 0 && r.raw_stdout == vec![0x5a; 4096],
        "{}",
        r.stderr
    );
    // One layer more: refused before anything is served.
    let r = strata(p, &["nbd", "serve", "--socket", "s.sock", "l1024.qcow2"]);
    let line = r.one_error(1, "deeper than 1024");
    assert!(line.contains("l1024.qcow2"), "{line}");
    assert!(!p.join("s.sock").exists());
}
