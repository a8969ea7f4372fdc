//! The device end to end below the socket: random requests, good and bad,
//! through a mock queue into the backend and its I/O threads, checked
//! against an in-memory model of the disk; the gate, `GET_VRING_BASE` and
//! the configuration space.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_image::Image;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::bindings::virtio_blk::*;

use crate::config::Config;
use crate::testrig::{Rig, BUFFERS};
use crate::testutil::{qcow2_image, raw_image, HeldImage, MEM_SIZE};

const DISK: u64 = 4 << 20;
const SENTINEL: u8 = 0xee;
const SERIAL: &str = "strata-model";

fn config() -> Config {
    Config {
        serial: SERIAL.into(),
        io_threads: 3,
        ..Config::default()
    }
}

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// A chain: (address, length, device-writable) per descriptor.
type Chain = Vec<(u64, u32, bool)>;

/// What a request's answer must be.
struct Expect {
    /// `None`: dropped (used length 0, status byte untouched).
    status: Option<u8>,
    status_addr: u64,
    used_len: u32,
    /// For reads: disk offset and the guest buffers the data went to.
    read: Option<(u64, Vec<(u64, u32)>)>,
    /// For GET_ID: the bytes expected at this address.
    id: Option<(u64, Vec<u8>)>,
    change: Change,
}

enum Change {
    None,
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    Discard(u64, u64),
}

/// Byte ranges of the disk a batch touches; a change may not overlap
/// anything else in the batch (the requests run concurrently).
#[derive(Default)]
struct Claims(Vec<(u64, u64, bool)>);

impl Claims {
    fn take(&mut self, off: u64, len: u64, change: bool) -> bool {
        let clash = self
            .0
            .iter()
            .any(|&(o, l, c)| (c || change) && off < o + l && o < off + len);
        if !clash {
            self.0.push((off, len, change));
        }
        !clash
    }
}

/// Guest buffer space for one batch.
struct Alloc(u64);

impl Alloc {
    fn get(&mut self, len: u64) -> u64 {
        let at = self.0;
        self.0 = (self.0 + len + 511) & !511;
        assert!(self.0 < MEM_SIZE - 0x10_0000);
        at
    }
}

/// Splits `len` bytes at `at` into 1..=4 pieces of any sizes.
fn pieces(rng: &mut StdRng, at: u64, len: u64) -> Vec<(u64, u32)> {
    if len == 0 {
        return vec![];
    }
    let n = rng.gen_range(1..=4u64).min(len);
    let mut cuts: Vec<u64> = (1..n).map(|_| rng.gen_range(1..len)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts.into_iter().chain([len]) {
        out.push((at + prev, (c - prev) as u32));
        prev = c;
    }
    out
}

struct Gen<'a> {
    rng: &'a mut StdRng,
    rig: &'a Rig,
    alloc: Alloc,
    claims: Claims,
}

impl Gen<'_> {
    /// Header descriptors, sometimes split in two.
    fn header(&mut self, kind: u32, sector: u64) -> Chain {
        let h = header(kind, sector);
        if self.rng.gen_bool(0.3) {
            let a = self.alloc.get(8);
            let b = self.alloc.get(8);
            self.rig.write(a, &h[..5]);
            self.rig.write(b, &h[5..]);
            vec![(a, 5, false), (b, 11, false)]
        } else {
            let a = self.alloc.get(16);
            self.rig.write(a, &h);
            vec![(a, 16, false)]
        }
    }

    fn status(&mut self) -> u64 {
        let a = self.alloc.get(1);
        self.rig.write(a, &[SENTINEL]);
        a
    }

    fn range(&mut self, max: u64) -> (u64, u64) {
        let len = self.rng.gen_range(0..=max / 512) * 512;
        let off = self.rng.gen_range(0..=(DISK - len) / 512) * 512;
        (off, len)
    }

    /// One random request: its chain and what must come back.
    fn request(&mut self) -> Option<(Chain, Expect)> {
        let ok = VIRTIO_BLK_S_OK as u8;
        let roll = self.rng.gen_range(0..100);
        let plain = |status: u8, status_addr: u64, change: Change| Expect {
            status: Some(status),
            status_addr,
            used_len: 1,
            read: None,
            id: None,
            change,
        };
        Some(match roll {
            0..=34 => {
                let (off, len) = self.range(96 << 10);
                if !self.claims.take(off, len, false) {
                    return None;
                }
                let mut descs = self.header(VIRTIO_BLK_T_IN, off / 512);
                let data = self.alloc.get(len + 1);
                let bufs = pieces(self.rng, data, len);
                descs.extend(bufs.iter().map(|&(a, l)| (a, l, true)));
                let status_addr = if self.rng.gen_bool(0.5) && !descs.is_empty() && len > 0 {
                    // The status byte right after the data, in its last descriptor.
                    descs.last_mut().unwrap().1 += 1;
                    self.rig.write(data + len, &[SENTINEL]);
                    data + len
                } else {
                    let s = self.status();
                    descs.push((s, 1, true));
                    s
                };
                let expect = Expect {
                    status: Some(ok),
                    status_addr,
                    used_len: len as u32 + 1,
                    read: Some((off, bufs)),
                    id: None,
                    change: Change::None,
                };
                (descs, expect)
            }
            35..=69 => {
                let (off, len) = self.range(96 << 10);
                if !self.claims.take(off, len, true) {
                    return None;
                }
                let bytes: Vec<u8> = (0..len).map(|_| self.rng.gen()).collect();
                let mut descs = self.header(VIRTIO_BLK_T_OUT, off / 512);
                let data = self.alloc.get(len);
                self.rig.write(data, &bytes);
                descs.extend(
                    pieces(self.rng, data, len)
                        .into_iter()
                        .map(|(a, l)| (a, l, false)),
                );
                let s = self.status();
                descs.push((s, 1, true));
                (descs, plain(ok, s, Change::Write(off, bytes)))
            }
            70..=73 => {
                let mut descs = self.header(VIRTIO_BLK_T_FLUSH, 0);
                let s = self.status();
                descs.push((s, 1, true));
                (descs, plain(ok, s, Change::None))
            }
            74..=77 => {
                let room = self.rng.gen_range(1..=32u32);
                let mut descs = self.header(VIRTIO_BLK_T_GET_ID, 0);
                let at = self.alloc.get(u64::from(room));
                descs.push((at, room, true));
                let s = self.status();
                descs.push((s, 1, true));
                let n = room.min(20) as usize;
                let mut id = SERIAL.as_bytes().to_vec();
                id.resize(20, 0);
                id.truncate(n);
                let mut e = plain(ok, s, Change::None);
                e.used_len = n as u32 + 1;
                e.id = Some((at, id));
                (descs, e)
            }
            78..=85 => {
                let zero = roll >= 82;
                let (off, len) = self.range(256 << 10);
                if len == 0 || !self.claims.take(off, len, true) {
                    return None;
                }
                let unmap = zero && self.rng.gen_bool(0.5);
                let kind = if zero {
                    VIRTIO_BLK_T_WRITE_ZEROES
                } else {
                    VIRTIO_BLK_T_DISCARD
                };
                let mut descs = self.header(kind, 0);
                let seg = self.alloc.get(16);
                let mut raw = (off / 512).to_le_bytes().to_vec();
                raw.extend(((len / 512) as u32).to_le_bytes());
                raw.extend(u32::from(unmap).to_le_bytes());
                self.rig.write(seg, &raw);
                descs.push((seg, 16, false));
                let s = self.status();
                descs.push((s, 1, true));
                let change = if zero {
                    Change::Zero(off, len)
                } else {
                    Change::Discard(off, len)
                };
                (descs, plain(ok, s, change))
            }
            _ => return Some(self.bad()),
        })
    }

    /// A request that breaks a rule.
    fn bad(&mut self) -> (Chain, Expect) {
        let ioerr = VIRTIO_BLK_S_IOERR as u8;
        let unsupp = VIRTIO_BLK_S_UNSUPP as u8;
        let data = self.alloc.get(4096);
        let s = self.status();
        let e = |status: Option<u8>, used_len| Expect {
            status,
            status_addr: s,
            used_len,
            read: None,
            id: None,
            change: Change::None,
        };
        let h = |g: &mut Self, kind, sector| g.header(kind, sector);
        match self.rng.gen_range(0..8) {
            0 => {
                let a = self.alloc.get(16);
                self.rig.write(a, &header(VIRTIO_BLK_T_IN, 0));
                (vec![(a, 8, false), (s, 1, true)], e(Some(ioerr), 1))
            }
            1 => {
                let mut d = h(self, VIRTIO_BLK_T_IN, 0);
                d.extend([(data, 512, true), (data + 1024, 512, false), (s, 1, true)]);
                (d, e(Some(ioerr), 1))
            }
            2 => {
                let mut d = h(self, VIRTIO_BLK_T_IN, DISK / 512);
                d.extend([(data, 512, true), (s, 1, true)]);
                (d, e(Some(ioerr), 1))
            }
            3 => {
                let mut d = h(self, VIRTIO_BLK_T_OUT, 0);
                d.extend([(data, 100, false), (s, 1, true)]);
                (d, e(Some(ioerr), 1))
            }
            4 => {
                let mut d = h(self, VIRTIO_BLK_T_IN, 0);
                d.extend([(MEM_SIZE - 256, 512, true), (s, 1, true)]);
                (d, e(Some(ioerr), 1))
            }
            5 => {
                let mut d = h(self, 99, 0);
                d.push((s, 1, true));
                (d, e(Some(unsupp), 1))
            }
            6 => {
                let mut d = h(self, VIRTIO_BLK_T_IN, 0);
                d.push((data, 512, false));
                (d, e(None, 0))
            }
            _ => {
                let mut d = h(self, VIRTIO_BLK_T_DISCARD, 0);
                let mut raw = 0u64.to_le_bytes().to_vec();
                raw.extend(8u32.to_le_bytes());
                raw.extend(1u32.to_le_bytes());
                self.rig.write(data, &raw);
                d.extend([(data, 16, false), (s, 1, true)]);
                (d, e(Some(unsupp), 1))
            }
        }
    }
}

fn check_read(rig: &Rig, model: &[Option<u8>], off: u64, bufs: &[(u64, u32)], what: &str) {
    let mut got = Vec::new();
    for &(a, l) in bufs {
        got.extend(rig.read(a, l as usize));
    }
    for (i, b) in got.iter().enumerate() {
        if let Some(want) = model[off as usize + i] {
            assert_eq!(*b, want, "{what}: read at {off} byte {i}");
        }
    }
}

fn run_model(seed: u64, image: Arc<dyn Image>, event_idx: bool, batches: usize) {
    let what = format!(
        "seed {seed}, {}, event_idx {event_idx}",
        image.format().name()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rig = Rig::new(image.clone(), config(), event_idx);
    let mut model: Vec<Option<u8>> = vec![Some(0); DISK as usize];
    for batch in 0..batches {
        let mut gen = Gen {
            rng: &mut rng,
            rig: &rig,
            alloc: Alloc(BUFFERS),
            claims: Claims::default(),
        };
        let n = gen.rng.gen_range(1..=24);
        let mut chains = Vec::new();
        for _ in 0..n * 3 {
            if chains.len() == n {
                break;
            }
            if let Some(c) = gen.request() {
                chains.push(c);
            }
        }
        let pause = rng.gen_bool(0.15);
        let mut expects = std::collections::HashMap::new();
        for (descs, e) in chains {
            if rig.free_descriptors() < descs.len() {
                break;
            }
            expects.insert(rig.submit(&descs), e);
        }
        let count = expects.len() as u16;
        if event_idx {
            // Interrupt me when the last answer is in.
            rig.set_used_event(rig.used_seen().wrapping_add(count).wrapping_sub(1));
        }
        let _ = rig.interrupts();
        if pause {
            let paused = rig.gate.pause();
            rig.kick();
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(
                rig.used_idx(),
                rig.used_seen(),
                "{what}: answered while paused"
            );
            assert_eq!(rig.gate.in_flight(), 0);
            drop(paused);
            assert!(rig.resume_event(), "{what}: resume did not wake the queue");
        } else {
            rig.kick();
        }
        let used = rig.wait_used(count);
        // Answers are in; the interrupt comes right after the last one.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !rig.interrupts() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: batch {batch}: no interrupt"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut changes = Vec::new();
        for (head, len) in used {
            let e = expects.remove(&head).expect("answer for an unknown chain");
            let ctx = format!("{what}: batch {batch} head {head}");
            assert_eq!(len, e.used_len, "{ctx}: used length");
            let status = rig.read(e.status_addr, 1)[0];
            assert_eq!(status, e.status.unwrap_or(SENTINEL), "{ctx}: status");
            if let Some((off, bufs)) = &e.read {
                check_read(&rig, &model, *off, bufs, &ctx);
            }
            if let Some((at, id)) = &e.id {
                assert_eq!(&rig.read(*at, id.len()), id, "{ctx}: ID");
            }
            changes.push(e.change);
        }
        assert!(expects.is_empty());
        for c in changes {
            match c {
                Change::None => {}
                Change::Write(off, bytes) => {
                    for (i, b) in bytes.into_iter().enumerate() {
                        model[off as usize + i] = Some(b);
                    }
                }
                Change::Zero(off, len) => model[off as usize..(off + len) as usize].fill(Some(0)),
                Change::Discard(off, len) => model[off as usize..(off + len) as usize].fill(None),
            }
        }
        assert_eq!(rig.gate.in_flight(), 0);
    }
    let mut disk = vec![0u8; DISK as usize];
    image.read_at(&mut disk, 0).unwrap();
    for (i, (b, m)) in disk.iter().zip(&model).enumerate() {
        if let Some(m) = m {
            assert_eq!(b, m, "{what}: final image byte {i}");
        }
    }
}

#[test]
fn random_requests_match_the_model_raw() {
    for seed in 1..=3 {
        run_model(seed, raw_image(DISK).0, seed % 2 == 1, 40);
    }
}

#[test]
fn random_requests_match_the_model_qcow2() {
    for seed in 11..=13 {
        run_model(seed, qcow2_image(DISK), seed % 2 == 0, 40);
    }
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
    let held = HeldImage::new(raw_image(1 << 20).0);
    let mut rig = Rig::new(held.clone(), config(), true);
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
    let held = HeldImage::new(raw_image(1 << 20).0);
    let mut rig = Rig::new(held.clone(), config(), false);
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
    let held = HeldImage::new(raw_image(1 << 20).0);
    let mut rig = Rig::new(held.clone(), config(), false);
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
