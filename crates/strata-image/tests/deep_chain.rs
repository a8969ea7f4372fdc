//! Backing chains as deep as strata opens them (`MAX_CHAIN_DEPTH`): reads,
//! writes and block status go down the chain one call per layer, so every
//! operation at that depth must fit in the stack every I/O thread gets
//! (`CHAIN_STACK`); one layer more is refused with a clear error.
//! (Regression: a chain 4,000 deep, which was allowed, overflowed a server
//! thread's stack on the first read and aborted the process.)

mod common;
use common::*;
use std::path::{Path, PathBuf};
use strata_image::chain::{io_thread, MAX_CHAIN_DEPTH};
use strata_image::ops::{convert, ConvertOptions};
use strata_image::qcow2::CreateOptions;

const SIZE: u64 = 1 << 20;

/// `l0000.qcow2` holding 0x5a in its first 64 KiB, then overlays up to
/// `l{top}.qcow2`, each backed by the one before; returns the top's path.
fn chain(dir: &Path, top: usize) -> PathBuf {
    let name = |i: usize| format!("l{i:04}.qcow2");
    create(
        &dir.join(name(0)),
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    open_rw(&dir.join(name(0)))
        .write_at(&[0x5a; 65536], 0)
        .unwrap();
    for i in 1..=top {
        create(
            &dir.join(name(i)),
            CreateOptions {
                size: SIZE,
                backing_file: Some(name(i - 1)),
                backing_format: Some("qcow2".into()),
                ..Default::default()
            },
        );
    }
    dir.join(name(top))
}

#[test]
fn every_operation_at_the_deepest_chain_fits_the_io_stack() {
    let d = tmp();
    let top = chain(d.path(), MAX_CHAIN_DEPTH - 1);
    let out = d.path().join("flat.raw");
    let worker = io_thread()
        .spawn(move || {
            let img = open_rw(&top);
            // A read through every layer.
            let mut buf = vec![0u8; 65536 + 4096];
            img.read_at(&mut buf, 0).unwrap();
            assert!(buf[..65536].iter().all(|&b| b == 0x5a));
            assert!(buf[65536..].iter().all(|&b| b == 0));
            // Block status resolved down to the base.
            let map = img.block_status(0, SIZE).unwrap();
            assert_eq!(map[0].depth as usize, MAX_CHAIN_DEPTH - 1, "{map:?}");
            assert!(map[0].data);
            // A partial write copies the rest of its cluster from the base.
            img.write_at(&[0xa5; 512], 4096).unwrap();
            img.write_zeroes(8192, 4096, false).unwrap();
            img.discard(32768, 32768).unwrap();
            img.flush().unwrap();
            img.read_at(&mut buf, 0).unwrap();
            assert!(buf[..4096].iter().all(|&b| b == 0x5a));
            assert!(buf[4096..4608].iter().all(|&b| b == 0xa5));
            assert!(buf[4608..8192].iter().all(|&b| b == 0x5a));
            assert!(buf[8192..12288].iter().all(|&b| b == 0));
            // A copy of the whole chain (on its own workers).
            std::fs::File::create(&out).unwrap().set_len(SIZE).unwrap();
            let dst = open_rw(&out);
            convert(
                img.as_ref(),
                dst.as_ref(),
                &ConvertOptions::default(),
                &|_, _| {},
            )
            .unwrap();
            let mut flat = vec![0u8; 65536 + 4096];
            dst.read_at(&mut flat, 0).unwrap();
            assert_eq!(flat, buf);
            // Dropping the chain releases every layer.
            drop(img);
        })
        .unwrap();
    worker.join().expect("the deepest chain fits the I/O stack");
    // (qemu-img takes about a minute to open a chain this deep, so the
    // bytes are checked against what was written instead.)
}

#[test]
fn one_layer_more_is_refused_naming_the_file() {
    let d = tmp();
    let top = chain(d.path(), MAX_CHAIN_DEPTH);
    let err = match strata_image::open(&top, &Default::default()) {
        Ok(_) => panic!("a chain of {} layers opened", MAX_CHAIN_DEPTH + 1),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("deeper than {MAX_CHAIN_DEPTH}")) && err.contains(".qcow2"),
        "{err}"
    );
}
