//! A model-based test of the device below the socket: random requests,
//! good and bad, through a mock queue into the backend and its I/O threads,
//! checked against an in-memory model of the disk, with pauses, EVENT_IDX
//! on and off, raw and qcow2 images.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_image::Image;
use virtio_bindings::bindings::virtio_blk::*;

use super::tests::{config, header, SENTINEL, SERIAL};
use crate::testrig::{Rig, BUFFERS};
use crate::testutil::{qcow2_image, raw_image, MEM_SIZE};

const DISK: u64 = 4 << 20;

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
    // Everything to the I/O threads, a few requests on the queue's thread,
    // most of them, or all.
    let inline_max = [0, 4096, 32 << 10, 1 << 20][seed as usize % 4];
    let what = format!("{what}, inline_max {inline_max}");
    let config = crate::config::Config {
        inline_max,
        ..config()
    };
    let mut rig = Rig::new(image.clone(), config, event_idx);
    let mut model: Vec<Option<u8>> = vec![Some(0); DISK as usize];
    for batch in 0..batches {
        // Buffers start anywhere below 3.5 MiB, so that a batch often
        // straddles the rig's memory regions at 4 MiB.
        let start = BUFFERS + rng.gen_range(0..(5 << 10)) * 512;
        let mut gen = Gen {
            rng: &mut rng,
            rig: &rig,
            alloc: Alloc(start),
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
        // A request's ticket is released just after its answer is
        // published: wait for the last ones rather than race them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while rig.gate.in_flight() != 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
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
        // A request leaves the count just after its answer is in the used
        // ring, where this thread may already have read it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while rig.gate.in_flight() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: batch {batch}: answered, still in flight"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
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
    for seed in 1..=4 {
        run_model(seed, raw_image(DISK).0, seed % 2 == 1, 40);
    }
}

#[test]
fn random_requests_match_the_model_qcow2() {
    for seed in 11..=14 {
        run_model(seed, qcow2_image(DISK), seed % 2 == 0, 40);
    }
}
