//! TLS (`--tls-creds`, x509 laid out as QEMU's tls-creds-x509): QEMU's
//! client (`--object tls-creds-x509`) and nbdinfo (`nbds+unix://` with
//! `tls-certificates=`) read and write through it; a client without TLS
//! is told TLS is required, and one whose certificate another CA signed is
//! refused. TLS-PSK (`--tls-psk`, a psktool keys file): QEMU's client
//! (`--object tls-creds-psk`, over TLS 1.3 and 1.2) and nbdinfo
//! (`tls-psk-file=`) get in with their username's key; a wrong key or an
//! unknown username is refused; a bad keys file stops the server at start,
//! naming the file and line.

mod common;
use common::nbd::*;
use common::*;
use std::path::Path;

/// The images both tests serve: `d.qcow2` with data (and `orig.qcow2`, a
/// copy to compare with) read-only, and an empty `w.qcow2` to write.
fn images(p: &Path) {
    qemu_img(p, &["create", "-q", "-f", "qcow2", "d.qcow2", "64M"]);
    qemu_io(
        p,
        "qcow2",
        "d.qcow2",
        &["write -P 7 1M 2M", "write -P 9 40M 64k"],
    );
    std::fs::copy(p.join("d.qcow2"), p.join("orig.qcow2")).unwrap();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "w.qcow2", "64M"]);
}

/// Checks what the clients wrote to `w.qcow2`, from the file.
fn written(p: &Path) {
    assert_clean(p, "w.qcow2");
    qemu_io(
        p,
        "qcow2",
        "w.qcow2",
        &["read -P 5 4M 1M", "read -P 0 0 4M"],
    );
}

#[test]
fn qemu_and_nbdinfo_connect_with_x509() {
    let d = tmp();
    let p = d.path();
    x509_credentials(p, "ca");
    x509_credentials(p, "other");
    images(p);
    let ours = strata_nbd(
        p,
        "s.sock",
        &[
            "--tls-creds",
            "ca/server",
            "name=d,file=d.qcow2,readonly",
            "name=w,file=w.qcow2",
        ],
    );
    let sock = p.join("s.sock").display().to_string();
    let qemu_tls = "tls-creds-x509,id=tls0,endpoint=client,dir=ca/client";
    let over_tls = |export: &str| {
        format!(
            "json:{{\"driver\":\"nbd\",\"server\":{{\"type\":\"unix\",\"path\":\"{sock}\"}},\
             \"export\":\"{export}\",\"tls-creds\":\"tls0\",\"tls-hostname\":\"localhost\"}}"
        )
    };
    // QEMU: compare, then writes read back.
    let r = qemu_img(
        p,
        &[
            "compare",
            "--object",
            qemu_tls,
            "-f",
            "qcow2",
            "orig.qcow2",
            &over_tls("d"),
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let w = over_tls("w");
    let io = run_in(
        p,
        "qemu-io",
        &[
            "--object",
            qemu_tls,
            "-c",
            "write -P 5 4M 1M",
            "-c",
            "read -P 5 4M 1M",
            &w,
        ],
    );
    assert_eq!(io.code, 0, "{}{}", io.stdout, io.stderr);
    assert!(!io.stdout.contains("fail"), "{}", io.stdout);
    // nbdinfo over TLS sees the export; without TLS it is told to use it.
    let secure = format!("nbds+unix:///d?socket={sock}&tls-certificates=ca/client");
    let info = run_in(p, "nbdinfo", &["--json", &secure]).expect(0).json();
    assert_eq!(info["TLS"], true, "{info}");
    assert_eq!(info["exports"][0]["export-size"], 64u64 << 20);
    let plain = run_in(p, "nbdinfo", &[&format!("nbd+unix:///d?socket={sock}")]);
    // (libnbd words NBD_REP_ERR_TLS_REQD as qemu-nbd's own: "not
    // supported".)
    assert_ne!(plain.code, 0);
    assert!(plain.stderr.contains("opt_go"), "{}", plain.stderr);
    // On the wire: before STARTTLS, options other than it and ABORT get
    // NBD_REP_ERR_TLS_REQD; STARTTLS with data is invalid.
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        s.write_all(&3u32.to_be_bytes()).unwrap();
        for (opt, data, want) in [
            (3u32, &[][..], 0x8000_0005u32),
            (5, &[1u8][..], 0x8000_0003),
        ] {
            let mut m = 0x4948_4156_454F_5054u64.to_be_bytes().to_vec();
            m.extend_from_slice(&opt.to_be_bytes());
            m.extend_from_slice(&(data.len() as u32).to_be_bytes());
            m.extend_from_slice(data);
            s.write_all(&m).unwrap();
            let mut h = [0u8; 20];
            s.read_exact(&mut h).unwrap();
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            assert_eq!(kind, want, "option {opt}");
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            s.read_exact(&mut vec![0u8; len]).unwrap();
        }
    }
    // A certificate from another CA is refused.
    let wrong = format!("nbds+unix:///d?socket={sock}&tls-certificates=other/client");
    assert_ne!(run_in(p, "nbdinfo", &[&wrong]).code, 0);
    // And the server goes on.
    run_in(p, "nbdinfo", &["--size", &secure]).expect(0);
    assert!(ours.stop().success());
    written(p);
}

/// Writes `keys.psk` in `dir` with `user:key` lines.
#[cfg(feature = "tls-psk")]
fn psk_file(p: &Path, dir: &str, lines: &[(&str, &str)]) {
    std::fs::create_dir_all(p.join(dir)).unwrap();
    let text: String = lines.iter().map(|(u, k)| format!("{u}:{k}\n")).collect();
    std::fs::write(p.join(dir).join("keys.psk"), text).unwrap();
}

/// A fresh random 32-byte key, in hex.
#[cfg(feature = "tls-psk")]
fn random_key(p: &Path) -> String {
    let r = run_in(p, "openssl", &["rand", "-hex", "32"]).expect(0);
    r.stdout.trim().to_string()
}

#[cfg(feature = "tls-psk")]
#[test]
fn qemu_and_nbdinfo_connect_with_psk() {
    let d = tmp();
    let p = d.path();
    let (alice, qemu, other) = (random_key(p), random_key(p), random_key(p));
    psk_file(p, "server", &[("alice", &alice), ("qemu", &qemu)]);
    psk_file(p, "alice", &[("alice", &alice)]);
    psk_file(p, "qemu", &[("qemu", &qemu)]);
    psk_file(p, "wrong", &[("alice", &other), ("mallory", &alice)]);
    images(p);
    let ours = strata_nbd_logged(
        p,
        &[
            "--tls-psk",
            "server/keys.psk",
            "name=d,file=d.qcow2,readonly",
            "name=w,file=w.qcow2",
        ],
    );
    let sock = p.join("s.sock").display().to_string();
    let over_tls = |export: &str| {
        format!(
            "json:{{\"driver\":\"nbd\",\"server\":{{\"type\":\"unix\",\"path\":\"{sock}\"}},\
             \"export\":\"{export}\",\"tls-creds\":\"tls0\"}}"
        )
    };
    // QEMU with a username (TLS 1.3, GnuTLS's default), then QEMU's
    // default username "qemu" forced down to TLS 1.2.
    let alice_creds = "tls-creds-psk,id=tls0,endpoint=client,dir=alice,username=alice";
    let r = qemu_img(
        p,
        &[
            "compare",
            "--object",
            alice_creds,
            "-f",
            "qcow2",
            "orig.qcow2",
            &over_tls("d"),
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let tls12 = "tls-creds-psk,id=tls0,endpoint=client,dir=qemu,priority=NORMAL:-VERS-TLS1.3";
    let io = run_in(
        p,
        "qemu-io",
        &[
            "--object",
            tls12,
            "-c",
            "write -P 5 4M 1M",
            "-c",
            "read -P 5 4M 1M",
            &over_tls("w"),
        ],
    );
    assert_eq!(io.code, 0, "{}{}", io.stdout, io.stderr);
    assert!(!io.stdout.contains("fail"), "{}", io.stdout);
    // nbdinfo: the username in the URI, the key from the file.
    let uri = |user: &str, dir: &str| {
        format!("nbds+unix://{user}@/d?socket={sock}&tls-psk-file={dir}/keys.psk")
    };
    let info = run_in(p, "nbdinfo", &["--json", &uri("alice", "alice")])
        .expect(0)
        .json();
    assert_eq!(info["TLS"], true, "{info}");
    assert_eq!(info["exports"][0]["export-size"], 64u64 << 20);
    // A wrong key, or a username the server does not know, is refused;
    // and the server goes on.
    for (user, dir) in [("alice", "wrong"), ("mallory", "wrong")] {
        let r = run_in(p, "nbdinfo", &["--size", &uri(user, dir)]);
        assert_ne!(r.code, 0, "{user} with {dir}/keys.psk got in");
    }
    let wrong = "tls-creds-psk,id=tls0,endpoint=client,dir=wrong,username=alice";
    let r = run_in(p, "qemu-img", &["info", "--object", wrong, &over_tls("d")]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    let size = run_in(p, "nbdinfo", &["--size", &uri("qemu", "qemu")]).expect(0);
    assert_eq!(size.stdout.trim(), (64u64 << 20).to_string());
    assert!(ours.stop().success());
    written(p);
}

#[cfg(feature = "tls-psk")]
#[test]
fn bad_psk_files_are_refused_at_start() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "d.qcow2", "1M"]);
    for (text, says) in [
        (
            "alice:0g\n",
            "keys.psk: line 1: the key is not an even number of hex digits",
        ),
        (
            "alice:00\nalice:01\n",
            "keys.psk: line 2: username 'alice' appears twice",
        ),
        ("", "keys.psk: holds no key"),
    ] {
        std::fs::write(p.join("keys.psk"), text).unwrap();
        let r = strata(
            p,
            &[
                "nbd",
                "serve",
                "--socket",
                "s.sock",
                "--tls-psk",
                ".",
                "d.qcow2",
            ],
        );
        r.one_error(1, says);
        assert!(!p.join("s.sock").exists());
    }
    let r = strata(
        p,
        &[
            "nbd",
            "serve",
            "--socket",
            "s.sock",
            "--tls-psk",
            "missing.psk",
            "d.qcow2",
        ],
    );
    r.one_error(1, "missing.psk");
}

/// Built without the tls-psk feature (no OpenSSL), `--tls-psk` is refused
/// at start, naming the file and the missing feature.
#[cfg(not(feature = "tls-psk"))]
#[test]
fn psk_is_refused_in_a_build_without_it() {
    let d = tmp();
    let p = d.path();
    images(p);
    std::fs::write(
        p.join("keys.psk"),
        "alice:00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    let r = strata(
        p,
        &[
            "nbd",
            "serve",
            "--socket",
            "s.sock",
            "--tls-psk",
            "keys.psk",
            "d.qcow2",
        ],
    );
    let line = r.one_error(1, "tls-psk feature");
    assert!(line.contains("keys.psk"), "{line}");
}
