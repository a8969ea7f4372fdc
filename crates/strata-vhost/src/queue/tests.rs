//! Where requests run: small reads and writes on the queue's own thread
//! (here, the test's thread, which plays the framework's worker), the rest
//! on the I/O threads; the time budget, the chain-depth limit and its
//! stack, panics, and one interrupt per batch.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_image::qcow2::{self, Qcow2};
use strata_image::storage::{MemoryStorage, Storage};
use strata_image::Image;
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::bindings::virtio_blk::*;

use super::INLINE_MAX_DEPTH;
use crate::config::Config;
use crate::testrig::{Rig, BUFFERS};
use crate::testutil::{raw_image, Call, Tap, Tapped};

/// Records which thread ran each call, and can be slow, panic at one
/// offset, or sit on a chain of a given depth.
#[derive(Debug, Default)]
struct Watch {
    below: Option<Arc<dyn Image>>,
    delay: Duration,
    panic_at: Option<u64>,
    calls: Mutex<Vec<(&'static str, u64, String)>>,
}

type Watched = Tapped<Watch>;

impl Tap for Watch {
    fn seen(&self, call: Call) {
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        self.calls.lock().push((call.op, call.offset, thread));
        if self.panic_at == Some(call.offset) {
            panic!("a request that panics");
        }
        std::thread::sleep(self.delay);
    }

    fn below(&self) -> Option<&Arc<dyn Image>> {
        self.below.as_ref()
    }
}

fn watched(inner: Arc<dyn Image>) -> Watched {
    Tapped::new("watched", inner, Watch::default())
}

/// A chain of `depth` layers in all (`image` included) below nothing
/// real: only `backing()` sees them.
fn on_chain(mut image: Watched, depth: usize) -> Watched {
    let mut below: Option<Arc<dyn Image>> = None;
    for _ in 1..depth {
        let mut layer = watched(image.inner().clone());
        layer.below = below;
        below = Some(Arc::new(layer));
    }
    image.below = below;
    image
}

impl Watch {
    /// (call, offset) of each call made on a thread named `thread`.
    fn on(&self, thread: &str) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .calls
            .lock()
            .iter()
            .filter(|c| c.2 == thread)
            .map(|c| (c.0, c.1))
            .collect();
        v.sort_unstable();
        v
    }

    fn clear(&self) {
        self.calls.lock().clear();
    }
}

const IO: &str = "vhost-blk-io0";
const SENTINEL: u8 = 0xee;

fn config() -> Config {
    Config {
        io_threads: 2,
        ..Config::default()
    }
}

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

fn here() -> String {
    std::thread::current().name().unwrap().to_string()
}

/// Guest memory for one request: header, segment, status, then data from
/// 4 KiB in.
const SLOT: u64 = 0x8_0000;

/// Submits a request of `kind` at `offset` with `len` data bytes in one
/// buffer (device-writable for reads); returns its status address. `slot`
/// keeps the buffers of requests in one batch apart.
fn submit(rig: &mut Rig, slot: u64, kind: u32, offset: u64, len: u32) -> u64 {
    let h = BUFFERS + slot * SLOT;
    rig.write(h, &header(kind, offset / 512));
    let status = h + 0x800;
    rig.write(status, &[SENTINEL]);
    let mut descs = vec![(h, 16, false)];
    if kind == VIRTIO_BLK_T_DISCARD {
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&(offset / 512).to_le_bytes());
        seg[8..12].copy_from_slice(&(len / 512).to_le_bytes());
        rig.write(h + 0x100, &seg);
        descs.push((h + 0x100, 16, false));
    } else if len > 0 {
        descs.push((h + 0x1000, len, kind == VIRTIO_BLK_T_IN));
    }
    descs.push((status, 1, true));
    rig.submit(&descs);
    status
}

#[test]
fn small_reads_and_writes_run_on_the_queue_thread_the_rest_on_the_io_threads() {
    let image = Arc::new(watched(raw_image(16 << 20).0));
    let cfg = config();
    let max = cfg.inline_max;
    let mut rig = Rig::new(image.clone(), cfg, false);
    let reqs = [
        (VIRTIO_BLK_T_IN, 0, 4096),
        (VIRTIO_BLK_T_OUT, 1 << 20, max),
        (VIRTIO_BLK_T_IN, 2 << 20, max + 512),
        (VIRTIO_BLK_T_OUT, 3 << 20, max + 512),
        (VIRTIO_BLK_T_FLUSH, 0, 0),
        (VIRTIO_BLK_T_DISCARD, 4 << 20, 4096),
    ];
    // The queue thread hands what is left of its share to the io threads
    // once it has spent INLINE_BUDGET (500 µs): on a loaded machine the
    // first read alone may take that long, so a few tries are allowed.
    for _ in 0..5 {
        image.clear();
        for (i, &(kind, off, len)) in reqs.iter().enumerate() {
            submit(&mut rig, i as u64, kind, off, len);
        }
        rig.kick();
        rig.wait_used(reqs.len() as u16);
        if image.on(&here()).len() == 2 {
            break;
        }
    }
    assert_eq!(image.on(&here()), vec![("read", 0), ("write", 1 << 20)]);
    assert_eq!(
        image.on(IO),
        vec![
            ("discard", 4 << 20),
            ("flush", 0),
            ("read", 2 << 20),
            ("write", 3 << 20)
        ]
    );
    // Writethrough: every write flushes, so none runs on the queue thread.
    image.clear();
    rig.backend.set_config(32, &[0]).unwrap();
    submit(&mut rig, 0, VIRTIO_BLK_T_OUT, 0, 4096);
    submit(&mut rig, 1, VIRTIO_BLK_T_IN, 0, 4096);
    rig.kick();
    rig.wait_used(2);
    assert_eq!(image.on(&here()), vec![("read", 0)]);
    assert_eq!(image.on(IO), vec![("flush", 0), ("write", 0)]);
}

#[test]
fn inline_max_zero_sends_everything_to_the_io_threads() {
    let image = Arc::new(watched(raw_image(1 << 20).0));
    let cfg = Config {
        inline_max: 0,
        ..config()
    };
    let mut rig = Rig::new(image.clone(), cfg, true);
    submit(&mut rig, 0, VIRTIO_BLK_T_IN, 0, 512);
    submit(&mut rig, 1, VIRTIO_BLK_T_OUT, 4096, 512);
    rig.kick();
    rig.wait_used(2);
    assert!(image.on(&here()).is_empty());
    assert_eq!(image.on(IO), vec![("read", 0), ("write", 4096)]);
}

#[test]
fn a_chain_deeper_than_the_inline_limit_goes_to_the_io_threads() {
    for (depth, inline) in [(INLINE_MAX_DEPTH, true), (INLINE_MAX_DEPTH + 1, false)] {
        let image = Arc::new(on_chain(watched(raw_image(1 << 20).0), depth));
        let mut rig = Rig::new(image.clone(), config(), true);
        submit(&mut rig, 0, VIRTIO_BLK_T_IN, 0, 512);
        rig.kick();
        rig.wait_used(1);
        let thread = if inline { here() } else { IO.to_string() };
        assert_eq!(image.on(&thread), vec![("read", 0)], "depth {depth}");
    }
}

#[test]
fn past_its_time_budget_a_batch_goes_to_the_io_threads() {
    let mut watched = watched(raw_image(1 << 20).0);
    watched.delay = super::INLINE_BUDGET * 2;
    let image = Arc::new(watched);
    let mut rig = Rig::new(image.clone(), config(), true);
    for i in 0..4 {
        submit(&mut rig, i, VIRTIO_BLK_T_IN, i * 4096, 4096);
    }
    rig.kick();
    rig.wait_used(4);
    assert_eq!(image.on(&here()), vec![("read", 0)]);
    assert_eq!(image.on(IO).len(), 3);
}

#[test]
fn a_request_that_panics_on_the_queue_thread_is_answered_ioerr_in_its_turn() {
    let mut watched = watched(raw_image(1 << 20).0);
    watched.panic_at = Some(8192);
    let image = Arc::new(watched);
    let mut rig = Rig::new(image.clone(), config(), true);
    submit(&mut rig, 0, VIRTIO_BLK_T_IN, 0, 4096);
    let panics = submit(&mut rig, 1, VIRTIO_BLK_T_IN, 8192, 4096);
    let last = submit(&mut rig, 2, VIRTIO_BLK_T_IN, 16384, 4096);
    rig.kick();
    let used = rig.wait_used(3);
    // In order: the panicked one answered IOERR (status byte only).
    assert_eq!(
        used.iter().map(|u| u.1).collect::<Vec<_>>(),
        [4097, 1, 4097]
    );
    assert_eq!(rig.read(panics, 1)[0], VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(rig.read(last, 1)[0], VIRTIO_BLK_S_OK as u8);
    // A request leaves the count just after its answer is published (on a
    // loaded machine, a moment after the test sees the answer).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rig.gate.in_flight() != 0 {
        assert!(std::time::Instant::now() < until, "still in flight");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let status = submit(&mut rig, 3, VIRTIO_BLK_T_IN, 0, 512);
    rig.kick();
    rig.wait_used(1);
    assert_eq!(rig.read(status, 1)[0], VIRTIO_BLK_S_OK as u8);
}

#[test]
fn a_batch_is_answered_with_one_interrupt() {
    // Without EVENT_IDX every answer may interrupt; a batch run on the
    // queue's thread goes into the used ring at once, with one.
    let (image, _) = raw_image(1 << 20);
    let mut rig = Rig::new(image, config(), false);
    for i in 0..8 {
        submit(&mut rig, i, VIRTIO_BLK_T_IN, i * 4096, 4096);
    }
    let _ = rig.interrupt_count();
    rig.kick();
    assert_eq!(rig.used_idx(), 8, "answered before the kick returned");
    rig.wait_used(8);
    assert_eq!(rig.interrupt_count(), 1);
}

/// A chain of `depth` qcow2 layers in memory, each but the top empty over
/// the bottom's data: reads of the data go through every layer.
fn qcow2_chain(depth: usize, size: u64, data: &[u8]) -> Arc<dyn Image> {
    let mut below: Option<Arc<dyn Image>> = None;
    for layer in 0..depth {
        let st = MemoryStorage::new(&format!("layer{layer}.qcow2"));
        qcow2::create(
            &st,
            &qcow2::CreateOptions {
                size,
                backing_file: below.as_ref().map(|b| b.path().to_string()),
                backing_format: below.as_ref().map(|_| "qcow2".to_string()),
                ..Default::default()
            },
        )
        .unwrap();
        let st: Arc<dyn Storage> = Arc::new(st);
        let opts = qcow2::OpenOptions {
            writable: true,
            lock: false,
            ..Default::default()
        };
        let image = Qcow2::open(st, below.take(), &opts).unwrap();
        if layer == 0 {
            image.write_at(data, 0).unwrap();
        }
        below = Some(Arc::new(image));
    }
    below.unwrap()
}

#[test]
fn inline_io_through_the_deepest_inline_chain_fits_the_worker_stack() {
    // The framework's worker threads have Rust's default stack.
    const WORKER_STACK: usize = 2 << 20;
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    let image = qcow2_chain(INLINE_MAX_DEPTH, 1 << 20, &data);
    let mut rig = Rig::new(image.clone(), config(), true);
    // A read down to the bottom layer, and a partial-cluster write whose
    // copy-on-write reads the rest of the cluster from there.
    let read = submit(&mut rig, 0, VIRTIO_BLK_T_IN, 0, 8192);
    rig.write(BUFFERS + SLOT + 0x1000, &[0xab; 4096]);
    let write = submit(&mut rig, 1, VIRTIO_BLK_T_OUT, 16384, 4096);
    let (backend, vring) = (rig.backend.clone(), rig.vring.clone());
    std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || {
            backend
                .handle_event(
                    0,
                    vmm_sys_util::epoll::EventSet::IN,
                    std::slice::from_ref(&vring),
                    0,
                )
                .unwrap();
        })
        .unwrap()
        .join()
        .expect("the worker thread overflowed its stack");
    rig.wait_used(2);
    assert_eq!(rig.read(read, 1)[0], VIRTIO_BLK_S_OK as u8);
    assert_eq!(rig.read(write, 1)[0], VIRTIO_BLK_S_OK as u8);
    assert_eq!(rig.read(BUFFERS + 0x1000, 8192), &data[..8192]);
    let mut back = vec![0u8; 65536];
    image.read_at(&mut back, 0).unwrap();
    let mut want = data.clone();
    want[16384..20480].fill(0xab);
    assert!(back == want);
}

/// Runs one pass of the queue's thread (a kick) on another thread.
fn kick_elsewhere(rig: &Rig) -> std::thread::JoinHandle<()> {
    let (backend, vring) = (rig.backend.clone(), rig.vring.clone());
    std::thread::spawn(move || {
        backend
            .handle_event(
                0,
                vmm_sys_util::epoll::EventSet::IN,
                std::slice::from_ref(&vring),
                0,
            )
            .unwrap();
    })
}

fn polling(us: u32) -> Config {
    Config {
        ring_poll_us: us,
        ..config()
    }
}

#[test]
fn a_busy_queue_takes_requests_added_while_it_polls() {
    let (image, _) = raw_image(1 << 20);
    let mut rig = Rig::new(image, polling(10_000), true);
    // Timing decides whether the third request comes while the thread
    // polls: some attempt out of many must see it taken without a kick.
    let mut taken_without_kick = false;
    for attempt in 0..20 {
        submit(&mut rig, 0, VIRTIO_BLK_T_IN, 0, 4096);
        submit(&mut rig, 1, VIRTIO_BLK_T_IN, 4096, 4096);
        let seen = rig.used_seen();
        let pass = kick_elsewhere(&rig);
        while rig.used_idx().wrapping_sub(seen) < 2 {
            std::hint::spin_loop();
        }
        submit(&mut rig, 2, VIRTIO_BLK_T_IN, 8192, 4096);
        pass.join().unwrap();
        if rig.used_idx().wrapping_sub(seen) == 3 {
            taken_without_kick = true;
            rig.wait_used(3);
            break;
        }
        // Too late: the poll was over. Its kick.
        rig.kick();
        rig.wait_used(3);
        eprintln!("attempt {attempt}: the request came after the poll");
    }
    assert!(taken_without_kick);
}

#[test]
fn a_poll_that_finds_nothing_ends_and_the_queue_stops_polling() {
    let (image, _) = raw_image(1 << 20);
    let poll = Duration::from_millis(5);
    let mut rig = Rig::new(image, polling(5_000), true);
    submit(&mut rig, 0, VIRTIO_BLK_T_IN, 0, 4096);
    submit(&mut rig, 1, VIRTIO_BLK_T_IN, 4096, 4096);
    let t = std::time::Instant::now();
    rig.kick();
    assert!(t.elapsed() >= poll, "a busy queue polls before it stops");
    assert_eq!(rig.wait_used(2).len(), 2);
    // The poll found nothing: one request at a time is not busy.
    let t = std::time::Instant::now();
    for i in 0..10 {
        submit(&mut rig, 0, VIRTIO_BLK_T_IN, i * 4096, 4096);
        rig.kick();
        rig.wait_used(1);
    }
    assert!(
        t.elapsed() < poll * 5,
        "one request at a time polled: {:?}",
        t.elapsed()
    );
}

#[test]
fn ring_poll_zero_never_polls() {
    let (image, _) = raw_image(1 << 20);
    let mut rig = Rig::new(image, polling(0), true);
    submit(&mut rig, 0, VIRTIO_BLK_T_IN, 0, 4096);
    submit(&mut rig, 1, VIRTIO_BLK_T_IN, 4096, 4096);
    rig.kick();
    rig.wait_used(2);
    // Nothing looks at the ring until the next kick.
    submit(&mut rig, 2, VIRTIO_BLK_T_IN, 8192, 4096);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rig.used_idx(), 2);
    rig.kick();
    rig.wait_used(1);
}

#[test]
fn answers_enter_the_used_ring_in_the_order_their_requests_were_taken() {
    // A large read, held in an I/O thread, then a small write that the
    // queue's thread runs at once: the write's answer waits for the read's,
    // so the used index never passes a request without an answer (QEMU
    // resumes a dead backend's ring there).
    let held = crate::testutil::Hold::image(raw_image(4 << 20).0);
    let mut rig = Rig::new(held.clone(), config(), true);
    submit(&mut rig, 0, VIRTIO_BLK_T_IN, 0, 512 << 10);
    let write = submit(&mut rig, 1, VIRTIO_BLK_T_OUT, 1 << 20, 4096);
    rig.kick();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rig.read(write, 1)[0] == SENTINEL {
        assert!(std::time::Instant::now() < deadline, "the write never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    let early = rig.used_idx();
    // Released before asserting: a held read would hold the rig's end.
    held.release();
    assert_eq!(early, 0, "the write was answered before the read");
    let used = rig.wait_used(2);
    assert_eq!(
        used.iter().map(|u| u.1).collect::<Vec<_>>(),
        [(512 << 10) + 1, 1]
    );
}
