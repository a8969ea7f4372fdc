//! Helpers shared by strata-core's integration tests.
#![allow(dead_code)]

use std::process::Command;

/// Runs qemu-img; panics with its output when it fails; returns stdout.
pub fn qemu_img(args: &[&str]) -> Vec<u8> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
