//! Block jobs against a model, with a guest writing at the same time on
//! another thread: a stream (blockpull) never lands old data over what
//! the guest wrote and leaves the top holding everything; an active
//! commit that copies, then converges over what the guest wrote, leaves
//! the base equal to the guest's disk; a handle handed over with
//! `reopen_over` writes nothing more, and the file stays clean for
//! `qemu-img check`.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use strata_image::jobs::{self, Control, Tracked};
use strata_image::qcow2::CreateOptions;
use strata_image::{ChainOptions, Image};

const SIZE: u64 = 8 << 20;

/// `base.qcow2` with random data and `top.qcow2` on it (random writes of
/// its own); the chain opened writable at the top, and the guest's model.
fn chain(d: &tempfile::TempDir, seed: u64) -> (Arc<dyn Image>, Vec<u8>) {
    let base = at(d, "base.qcow2");
    create(
        &base,
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    let mut model = vec![0u8; SIZE as usize];
    let b = open_rw(&base);
    random_writes(b.as_ref(), &mut model, &mut Rng(seed), 30, 400_000);
    b.close().unwrap();
    drop(b);
    create(
        &at(d, "top.qcow2"),
        CreateOptions {
            size: SIZE,
            backing_file: Some(s(&base).to_string()),
            backing_format: Some("qcow2".into()),
            ..Default::default()
        },
    );
    let top = open_rw(&at(d, "top.qcow2"));
    random_writes(top.as_ref(), &mut model, &mut Rng(seed * 31), 10, 200_000);
    (top, model)
}

/// The guest: random writes through `img` into `model` until `stop`.
fn guest(img: Arc<Tracked>, model: Arc<Mutex<Vec<u8>>>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng(seed);
    while !stop.load(Ordering::SeqCst) {
        let len = 1 + rng.below(150_000);
        let off = rng.below(SIZE - len);
        let data = pattern(len as usize, rng.next());
        // The model changes with the write, under its lock: a reader of
        // the model sees the write done or not yet begun.
        let mut m = model.lock().unwrap();
        img.write_at(&data, off).unwrap();
        m[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
}

#[test]
fn a_stream_never_overwrites_the_guest_and_leaves_the_top_whole() {
    for seed in 1..=4u64 {
        let d = tmp();
        let (top, model) = chain(&d, seed);
        let tracked = Arc::new(Tracked::new(top.clone(), true));
        let model = Arc::new(Mutex::new(model));
        let stop = Arc::new(AtomicBool::new(false));
        let g = {
            let (t, m, s) = (tracked.clone(), model.clone(), stop.clone());
            std::thread::spawn(move || guest(t, m, s, seed * 7))
        };
        let ctl = Control::new(0);
        jobs::stream(&tracked, 2, &ctl).unwrap();
        stop.store(true, Ordering::SeqCst);
        g.join().unwrap();
        let want = model.lock().unwrap().clone();
        assert!(
            read_all(top.as_ref()) == want,
            "seed {seed}: the guest's disk changed"
        );
        // The top alone holds it all now.
        let p = top.placement().unwrap();
        p.set_backing(None, None).unwrap();
        let alone = p.reopen_over(None).unwrap();
        assert!(
            read_all(alone.as_ref()) == want,
            "seed {seed}: the top alone differs"
        );
        // The old handle is retired: it writes nothing more.
        assert!(top.write_at(&[1], 0).is_err());
        alone.close().unwrap();
        drop((alone, top, tracked));
        assert_qemu_clean(&at(&d, "top.qcow2"));
    }
}

#[test]
fn an_active_commit_converges_to_the_guests_disk() {
    for seed in 1..=4u64 {
        let d = tmp();
        let (top, model) = chain(&d, seed + 100);
        let tracked = Arc::new(Tracked::new(top.clone(), false));
        let base_rw = strata_image::open(
            &at(&d, "base.qcow2"),
            &ChainOptions {
                writable: true,
                lock: false,
                ..Default::default()
            },
        )
        .unwrap();
        let model = Arc::new(Mutex::new(model));
        let stop = Arc::new(AtomicBool::new(false));
        let g = {
            let (t, m, s) = (tracked.clone(), model.clone(), stop.clone());
            std::thread::spawn(move || guest(t, m, s, seed * 13))
        };
        let ctl = Control::new(0);
        jobs::copy_above(top.as_ref(), 1, base_rw.as_ref(), &ctl).unwrap();
        for _ in 0..3 {
            let dirty = tracked.take_dirty();
            jobs::copy_ranges(top.as_ref(), &dirty, base_rw.as_ref(), &ctl).unwrap();
        }
        // The pivot's instant: the guest stopped, the rest copied.
        stop.store(true, Ordering::SeqCst);
        g.join().unwrap();
        let dirty = tracked.take_dirty();
        jobs::copy_ranges(top.as_ref(), &dirty, base_rw.as_ref(), &ctl).unwrap();
        let want = model.lock().unwrap().clone();
        assert!(
            read_all(base_rw.as_ref()) == want,
            "seed {seed}: the base is not the guest's disk"
        );
        let (done, total) = ctl.progress();
        assert!(
            done > 0 && done == total,
            "seed {seed}: progress {done}/{total}"
        );
        base_rw.close().unwrap();
        drop(base_rw);
        top.close().unwrap();
        drop((top, tracked));
        assert_qemu_clean(&at(&d, "base.qcow2"));
    }
}
