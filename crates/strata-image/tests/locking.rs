//! QEMU-compatible image locking, both ways: strata refuses an image a
//! running qemu-nbd holds for writing, and QEMU refuses one strata holds.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strata_image::{ChainOptions, Error};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(path: &std::path::Path, sock: &std::path::Path, readonly: bool) -> Server {
    let mut args = vec![
        "--socket".to_string(),
        s(sock).to_string(),
        "-f".into(),
        "qcow2".into(),
    ];
    if readonly {
        args.push("-r".into());
    }
    args.push(s(path).to_string());
    let child = Command::new("qemu-nbd")
        .args(&args)
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
    Server(child)
}

#[test]
fn strata_refuses_an_image_qemu_nbd_writes() {
    let d = tmp();
    let img = at(&d, "l.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "1M"]);
    let _srv = serve(&img, &at(&d, "s.sock"), false);
    for writable in [true, false] {
        let err = strata_image::open(
            &img,
            &ChainOptions {
                writable,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::Locked { .. }),
            "writable={writable}: {err}"
        );
        assert!(err.to_string().contains("l.qcow2"), "{err}");
    }
    // Without locks (force-share) a reader may look.
    strata_image::open(
        &img,
        &ChainOptions {
            lock: false,
            ..Default::default()
        },
    )
    .expect("force-share open");
}

#[test]
fn strata_writer_allows_no_qemu_writer_or_reader() {
    let d = tmp();
    let img = at(&d, "w.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "1M"]);
    let held = open_rw(&img);
    let (code, text) = run_status("qemu-io", &["-c", "write 0 512", s(&img)]);
    assert_ne!(code, 0, "qemu-io wrote an image strata holds: {text}");
    assert!(text.contains("lock"), "{text}");
    let (code, text) = run_status("qemu-img", &["info", s(&img)]);
    assert_ne!(code, 0, "qemu-img info read an image strata writes: {text}");
    drop(held);
    run("qemu-io", &["-c", "write 0 512", s(&img)]);
}

#[test]
fn readers_share() {
    let d = tmp();
    let img = at(&d, "r.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "1M"]);
    let _srv = serve(&img, &at(&d, "r.sock"), true);
    let ro = open_ro(&img);
    assert_eq!(ro.size(), 1 << 20);
    run("qemu-img", &["info", s(&img)]);
    // But a strata writer is refused while readers hold it.
    let err = strata_image::open(
        &img,
        &ChainOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
}
