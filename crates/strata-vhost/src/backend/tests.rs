//! The device below the socket: the gate, `GET_VRING_BASE`, the
//! configuration space and the cache mode (the model-based test of random
//! requests is in `model.rs`).

use std::sync::Arc;
use std::time::Duration;

use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::bindings::virtio_blk::*;

use crate::config::Config;
use crate::testrig::{Rig, BUFFERS};
use crate::testutil::{raw_image, HeldImage, Hold};

pub(super) const SENTINEL: u8 = 0xee;
pub(super) const SERIAL: &str = "strata-model";

pub(super) fn config() -> Config {
    Config {
        serial: SERIAL.into(),
        io_threads: 3,
        ..Config::default()
    }
}

/// For rigs whose image holds reads: every request goes to the I/O
/// threads, so a held read does not hold the test's thread in `kick`.
fn held_config() -> Config {
    Config {
        inline_max: 0,
        ..config()
    }
}

pub(super) fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// Submits one 4 KiB read at 0 and returns its status address.
fn one_read(rig: &mut Rig) -> u64 {
    let h = BUFFERS;
    rig.write(h, &header(VIRTIO_BLK_T_IN, 0));
    rig.write(h + 0x2000, &[SENTINEL]);
    rig.submit(&[
        (h, 16, false),
        (h + 0x1000, 4096, true),
        (h + 0x2000, 1, true),
    ]);
    h + 0x2000
}

fn wait_reads(held: &HeldImage, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while held.reads.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn get_vring_base_waits_for_requests_in_flight() {
    let held = Hold::image(raw_image(1 << 20).0);
    let mut rig = Rig::new(held.clone(), held_config(), true);
    let status = one_read(&mut rig);
    rig.kick();
    wait_reads(&held, 1);
    // What the framework does on GET_VRING_BASE: not ready, then stop_vring.
    rig.vring.set_queue_ready(false);
    let backend = rig.backend.clone();
    let stopper = std::thread::spawn(move || backend.stop_vring(0).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !stopper.is_finished(),
        "stop_vring returned with a request in flight"
    );
    assert_eq!(rig.used_idx(), 0);
    held.release();
    stopper.join().unwrap();
    // Answered before stop_vring returned.
    assert_eq!(rig.used_idx(), 1);
    assert_eq!(rig.read(status, 1)[0], VIRTIO_BLK_S_OK as u8);
}

#[test]
fn drain_waits_then_swap_serves_the_new_image() {
    let held = Hold::image(raw_image(1 << 20).0);
    let mut rig = Rig::new(held.clone(), held_config(), false);
    one_read(&mut rig);
    rig.kick();
    wait_reads(&held, 1);
    let paused = rig.gate.pause();
    let err = paused.drain(Duration::from_millis(30)).unwrap_err();
    assert!(
        matches!(err, crate::Error::DrainTimeout { in_flight: 1, .. }),
        "{err}"
    );
    let (next, _) = raw_image(1 << 20);
    next.write_at(&[0x5a; 4096], 0).unwrap();
    assert!(matches!(
        paused.swap_image(next.clone()),
        Err(crate::Error::NotDrained)
    ));
    held.release();
    paused.drain(Duration::from_secs(10)).unwrap();
    assert_eq!(rig.wait_used(1).len(), 1);
    // Another size, or read-only under a writable export: refused.
    assert!(matches!(
        paused.swap_image(raw_image(2 << 20).0),
        Err(crate::Error::Swap { .. })
    ));
    let st = strata_image::storage::MemoryStorage::from_bytes("ro", vec![0; 1 << 20]);
    let ro = Arc::new(strata_image::raw::RawImage::open(Arc::new(st), false).unwrap());
    assert!(matches!(
        paused.swap_image(ro),
        Err(crate::Error::Swap { .. })
    ));
    let old = paused.swap_image(next).unwrap();
    assert_eq!(old.path(), "held");
    // A request made while paused waits, then reads the new image.
    let status = one_read(&mut rig);
    rig.kick();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rig.used_idx(), 1);
    paused.resume();
    assert!(rig.resume_event());
    rig.wait_used(1);
    assert_eq!(rig.read(status, 1)[0], VIRTIO_BLK_S_OK as u8);
    assert_eq!(rig.read(BUFFERS + 0x1000, 4096), vec![0x5a; 4096]);
}

#[test]
fn quiesce_nests_and_times_out() {
    let held = Hold::image(raw_image(1 << 20).0);
    let mut rig = Rig::new(held.clone(), held_config(), false);
    one_read(&mut rig);
    rig.kick();
    wait_reads(&held, 1);
    assert!(rig.gate.quiesce(Duration::from_millis(20)).is_err());
    assert!(
        !rig.gate.is_paused(),
        "a failed quiesce must not stay paused"
    );
    held.release();
    let a = rig.gate.quiesce(Duration::from_secs(10)).unwrap();
    let b = rig.gate.pause();
    drop(a);
    assert!(rig.gate.is_paused());
    drop(b);
    assert!(!rig.gate.is_paused());
}

#[test]
fn an_unset_ring_is_not_touched() {
    let (image, _) = raw_image(1 << 20);
    let rig = Rig::new(image, config(), true);
    rig.vring.set_queue_ready(false);
    let before = rig.read(0, 0x3000);
    drop(rig.gate.pause());
    rig.resume_event();
    rig.kick();
    assert_eq!(rig.read(0, 0x3000), before);
}

#[test]
fn interrupts_follow_used_event() {
    let (image, _) = raw_image(1 << 20);
    let mut rig = Rig::new(image, config(), true);
    // The driver asked to hear about used index 100 only: no interrupt for 5.
    rig.set_used_event(100);
    for _ in 0..5 {
        let h = rig.free_descriptors() as u64 * 64 + BUFFERS;
        rig.write(h, &header(VIRTIO_BLK_T_FLUSH, 0));
        rig.submit(&[(h, 16, false), (h + 32, 1, true)]);
    }
    let _ = rig.interrupts();
    rig.kick();
    rig.wait_used(5);
    std::thread::sleep(Duration::from_millis(20));
    assert!(!rig.interrupts());
}

#[test]
fn config_space_and_cache_mode() {
    let (image, _) = raw_image(3 << 20);
    let rig = Rig::new(
        image,
        Config {
            queues: 2,
            ..config()
        },
        true,
    );
    let b = &rig.backend;
    let c = b.get_config(0, 60);
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 6144);
    assert_eq!(u16::from_le_bytes([c[34], c[35]]), 2);
    assert_eq!(c[32], 1, "writeback after FLUSH was acked");
    assert_eq!(b.get_config(32, 1), vec![1]);
    b.set_config(32, &[0]).unwrap();
    assert_eq!(b.get_config(32, 1), vec![0]);
    assert!(b.set_config(0, &[0; 8]).is_err());
    assert!(b.set_config(32, &[0, 0]).is_err());
    // A driver without FLUSH gets writethrough, whatever it writes; the
    // mode follows the features each time they are acked (QEMU acks a set
    // without FLUSH first, then the guest's).
    b.new_session();
    assert_eq!(b.get_config(32, 1), vec![1], "writeback before features");
    let all = b.features();
    let no_flush = all & !(1 << VIRTIO_BLK_F_FLUSH);
    b.acked_features(no_flush);
    assert_eq!(b.get_config(32, 1), vec![0]);
    b.set_config(32, &[1]).unwrap();
    assert_eq!(b.get_config(32, 1), vec![0]);
    b.acked_features(all);
    assert_eq!(b.get_config(32, 1), vec![1]);
    assert_eq!(b.num_queues(), 2);
    assert_eq!(b.queues_per_thread(), vec![1, 2]);
}

/// Regression: QEMU acks a feature set without FLUSH when it connects,
/// then the guest's with FLUSH; the first ack latched writethrough, and
/// every guest write was flushed (random writes ran at half speed).
#[test]
fn cache_mode_follows_the_last_features_acked() {
    use strata_image::storage::{FaultConfig, FaultStorage};
    let st = Arc::new(FaultStorage::new(
        "f.raw",
        vec![0; 1 << 20],
        FaultConfig::default(),
    ));
    let image = Arc::new(strata_image::raw::RawImage::open(st.clone(), true).unwrap());
    let mut rig = Rig::new(image, config(), false);
    let all = rig.backend.features()
        & !(1 << virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);
    let write = |rig: &mut Rig| {
        rig.write(BUFFERS, &header(VIRTIO_BLK_T_OUT, 0));
        rig.submit(&[
            (BUFFERS, 16, false),
            (BUFFERS + 0x1000, 512, false),
            (BUFFERS + 0x2000, 1, true),
        ]);
        rig.kick();
        rig.wait_used(1);
    };
    rig.backend.acked_features(all & !(1 << VIRTIO_BLK_F_FLUSH));
    rig.backend.acked_features(all);
    write(&mut rig);
    assert_eq!(st.flushes(), 0, "writeback: no flush per write");
    rig.backend.acked_features(all & !(1 << VIRTIO_BLK_F_FLUSH));
    write(&mut rig);
    assert_eq!(st.flushes(), 1, "without FLUSH every write is made durable");
    rig.backend.acked_features(all);
    rig.backend.set_config(32, &[0]).unwrap();
    write(&mut rig);
    assert_eq!(st.flushes(), 2, "the driver chose writethrough");
}
