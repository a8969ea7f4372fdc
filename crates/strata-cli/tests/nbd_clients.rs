//! More real clients against `strata nbd serve`: fio's nbd engine writing
//! with verification (every block read back and checked), and libnbd
//! (nbdsh's Python module) with many requests in flight, replies out of
//! order, block status and errors.

mod common;
use common::nbd::*;
use common::*;
use std::path::Path;

/// `strata nbd serve --socket s.sock --persistent EXPORT`, ready.
fn serve(p: &Path, export: &str) -> Server {
    strata_nbd(p, "s.sock", &[export])
}

fn stop(server: Server) {
    assert!(server.stop().success());
}

fn uri(p: &Path) -> String {
    format!("nbd+unix:///?socket={}", p.join("s.sock").display())
}

#[test]
fn fio_writes_and_verifies_cleanly() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "d.qcow2", "256M"]);
    let server = serve(p, "d.qcow2");
    for (rw, bs, depth) in [("randwrite", "4k", "32"), ("write", "1M", "8")] {
        let r = run_in(
            p,
            "fio",
            &[
                "--name=v",
                "--ioengine=nbd",
                &format!("--uri={}", uri(p)),
                &format!("--rw={rw}"),
                &format!("--bs={bs}"),
                &format!("--iodepth={depth}"),
                "--size=64M",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
            ],
        );
        assert_eq!(r.code, 0, "fio {rw}: {}{}", r.stdout, r.stderr);
        assert!(
            !r.stdout.contains("verify:") || r.stdout.contains("err= 0"),
            "{}",
            r.stdout
        );
    }
    stop(server);
    assert_clean(p, "d.qcow2");
}

#[test]
fn libnbd_sees_structured_out_of_order_replies() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "d.qcow2", "64M"]);
    let server = serve(p, "d.qcow2");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nbd_client.py");
    // nbdsh is `python3 -m nbd`; the system Python has the module.
    let r = run_in(p, "/usr/bin/python3", &[script.to_str().unwrap(), &uri(p)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "ok\n");
    stop(server);
    assert_clean(p, "d.qcow2");
    qemu_io(
        p,
        "qcow2",
        "d.qcow2",
        &["read -P 3 128k 64k", "read -P 0 1M 4M"],
    );
}
