//! Data moving in place: which guest buffers the image reads into and
//! writes from directly (one host mapping, big enough or alone), which go
//! through the bounce buffer (spanning two memory regions, small among
//! many), the data either way, and the dirty log of reads in place.

use std::sync::Arc;

use parking_lot::Mutex;
use strata_image::Image;
use virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_S_OK;
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::mmap::NewBitmap;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MmapRegion,
};

use super::*;
use crate::request::{Action, Buf, Op, Request};
use crate::testutil::{raw_image, regions, Call, Tap, Tapped};

const STATUS: u64 = 0x3000;
const SERIAL: [u8; 20] = [0; 20];
const WB: Context<'static> = Context {
    serial: &SERIAL,
    writethrough: false,
};

/// One image call: read or write, disk offset, length, and whether its
/// buffer was guest memory itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    write: bool,
    offset: u64,
    len: usize,
    in_place: bool,
}

/// Records each read and write, and where its buffer was.
#[derive(Debug)]
struct SpyTap {
    /// Host address ranges of guest memory.
    guest: Vec<(usize, usize)>,
    calls: Mutex<Vec<Seen>>,
}

type Spy = Tapped<SpyTap>;

impl Tap for SpyTap {
    fn seen(&self, call: Call) {
        if call.op != "read" && call.op != "write" {
            return;
        }
        let (p, len) = (call.buf, call.len as usize);
        let in_place = self
            .guest
            .iter()
            .any(|&(start, n)| p >= start && p + len <= start + n);
        self.calls.lock().push(Seen {
            write: call.op == "write",
            offset: call.offset,
            len,
            in_place,
        });
    }
}

/// `inner`, its reads and writes recorded against `mem`'s host mappings.
fn spy<B: Bitmap + NewBitmap>(inner: Arc<dyn Image>, mem: &GuestMemoryMmap<B>) -> Spy {
    let guest = mem
        .iter()
        .map(|r| {
            let start = r.get_host_address(vm_memory::MemoryRegionAddress(0));
            (start.unwrap() as usize, r.len() as usize)
        })
        .collect();
    let tap = SpyTap {
        guest,
        calls: Mutex::new(Vec::new()),
    };
    Tapped::new("spy", inner, tap)
}

impl SpyTap {
    fn calls(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.calls.lock())
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

fn buf(addr: u64, len: u32) -> Buf {
    Buf {
        addr: GuestAddress(addr),
        len,
    }
}

fn answer_ok<M: GuestMemory>(mem: &M, image: &dyn Image, op: Op, scratch: &mut Vec<u8>) -> u32 {
    let r = Request {
        head: 0,
        status: GuestAddress(STATUS),
        action: Action::Run(op),
    };
    let used = answer(mem, image, &r, WB, scratch);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK as u8
    );
    used
}

/// Writes `data` across `bufs` in guest memory.
fn scatter_into<M: GuestMemory>(mem: &M, bufs: &[Buf], data: &[u8]) {
    let mut at = 0;
    for b in bufs {
        mem.write_slice(&data[at..at + b.len as usize], b.addr)
            .unwrap();
        at += b.len as usize;
    }
}

/// Reads `bufs` back from guest memory.
fn gather_from<M: GuestMemory>(mem: &M, bufs: &[Buf]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bufs {
        let mut piece = vec![0u8; b.len as usize];
        mem.read_slice(&mut piece, b.addr).unwrap();
        out.extend(piece);
    }
    out
}

/// Dirty pages of the 4 MiB region at `start`.
fn dirty_pages(mem: &GuestMemoryMmap<AtomicBitmap>, start: u64) -> Vec<usize> {
    let region = mem.find_region(GuestAddress(start)).unwrap();
    (0..1024)
        .filter(|p| MmapRegion::bitmap(region).dirty_at(p * 4096))
        .collect()
}

fn call(write: bool, offset: u64, len: usize, in_place: bool) -> Seen {
    Seen {
        write,
        offset,
        len,
        in_place,
    }
}

#[test]
fn a_lone_buffer_is_read_into_and_written_from_in_place() {
    let mem = regions::<()>();
    let spy = spy(raw_image(1 << 20).0, &mem);
    let bufs = vec![buf(0x10_0000, 4096)];
    let data = pattern(4096, 1);
    scatter_into(&mem, &bufs, &data);
    let w = Op::Write {
        offset: 8192,
        len: 4096,
        bufs: bufs.clone(),
    };
    let mut scratch = Vec::new();
    assert_eq!(answer_ok(&mem, &spy, w, &mut scratch), 1);
    scatter_into(&mem, &bufs, &[0u8; 4096]);
    let r = Op::Read {
        offset: 8192,
        len: 4096,
        bufs: bufs.clone(),
    };
    assert_eq!(answer_ok(&mem, &spy, r, &mut scratch), 4097);
    assert_eq!(gather_from(&mem, &bufs), data);
    assert_eq!(
        spy.calls(),
        vec![call(true, 8192, 4096, true), call(false, 8192, 4096, true)]
    );
    assert!(scratch.is_empty(), "the bounce buffer was used");
}

#[test]
fn a_buffer_across_two_memory_regions_goes_through_the_bounce_buffer() {
    let mem = regions::<AtomicBitmap>();
    let spy = spy(raw_image(1 << 20).0, &mem);
    // 8 KiB from 4 KiB below the 4 MiB boundary: one guest range, two mappings.
    let bufs = vec![buf((4 << 20) - 4096, 8192)];
    let data = pattern(8192, 2);
    scatter_into(&mem, &bufs, &data);
    let w = Op::Write {
        offset: 0,
        len: 8192,
        bufs: bufs.clone(),
    };
    answer_ok(&mem, &spy, w, &mut Vec::new());
    scatter_into(&mem, &bufs, &[0u8; 8192]);
    for r in mem.iter() {
        MmapRegion::bitmap(r).reset();
    }
    let r = Op::Read {
        offset: 0,
        len: 8192,
        bufs: bufs.clone(),
    };
    answer_ok(&mem, &spy, r, &mut Vec::new());
    assert_eq!(gather_from(&mem, &bufs), data);
    assert_eq!(
        spy.calls(),
        vec![call(true, 0, 8192, false), call(false, 0, 8192, false)]
    );
    // The two pages written through vm-memory are in the log, each in its
    // region (with the status byte's page).
    assert_eq!(dirty_pages(&mem, 0), vec![3, 1023]);
    assert_eq!(dirty_pages(&mem, 4 << 20), vec![0]);
}

#[test]
fn big_buffers_go_in_place_and_small_ones_among_many_share_the_bounce_buffer() {
    let mem = regions::<()>();
    let spy = spy(raw_image(4 << 20).0, &mem);
    let k = 1024u32;
    // A 4 KiB buffer, then 128 KiB, two of 512 bytes, 64 KiB, and 128 KiB
    // across the 8 MiB boundary: in-place, bounced, in-place, bounced.
    let bufs = vec![
        buf(0x10_0000, 4 * k),
        buf(0x20_0000, 128 * k),
        buf(0x30_0000, 512),
        buf(0x30_1000, 512),
        buf(0x31_0000, 64 * k),
        buf((8 << 20) - 0x1_0000, 128 * k),
    ];
    let len: u32 = bufs.iter().map(|b| b.len).sum();
    let data = pattern(len as usize, 3);
    scatter_into(&mem, &bufs, &data);
    let w = Op::Write {
        offset: 1 << 20,
        len: u64::from(len),
        bufs: bufs.clone(),
    };
    answer_ok(&mem, &spy, w, &mut Vec::new());
    let (m, k) = (1u64 << 20, 1024usize);
    let expect = |write| {
        vec![
            call(write, m, 4 * k, false),
            call(write, m + 4 * k as u64, 128 * k, true),
            call(write, m + 132 * k as u64, 1024, false),
            call(write, m + 133 * k as u64, 64 * k, true),
            call(write, m + 197 * k as u64, 128 * k, false),
        ]
    };
    assert_eq!(spy.calls(), expect(true));
    let mut back = vec![0u8; len as usize];
    spy.inner().read_at(&mut back, 1 << 20).unwrap();
    assert!(back == data, "written data differs");
    scatter_into(&mem, &bufs, &vec![0u8; len as usize]);
    let r = Op::Read {
        offset: 1 << 20,
        len: u64::from(len),
        bufs: bufs.clone(),
    };
    assert_eq!(answer_ok(&mem, &spy, r, &mut Vec::new()), len + 1);
    assert!(gather_from(&mem, &bufs) == data, "read data differs");
    assert_eq!(spy.calls(), expect(false));
}

#[test]
fn reads_in_place_are_in_the_dirty_log() {
    let mem = regions::<AtomicBitmap>();
    let spy = spy(raw_image(1 << 20).0, &mem);
    spy.inner().write_at(&pattern(1 << 20, 4), 0).unwrap();
    for r in mem.iter() {
        MmapRegion::bitmap(r).reset();
    }
    // 12 KiB from 2 KiB into page 0x90 of the region at 8 MiB: four pages.
    let at = (8 << 20) + 0x9_0800;
    let bufs = vec![buf(at, 12288)];
    let r = Op::Read {
        offset: 4096,
        len: 12288,
        bufs,
    };
    answer_ok(&mem, &spy, r, &mut Vec::new());
    assert!(spy.calls()[0].in_place);
    let region = mem.find_region(GuestAddress(8 << 20)).unwrap();
    let dirty: Vec<usize> = (0..1024)
        .filter(|p| MmapRegion::bitmap(region).dirty_at(p * 4096))
        .collect();
    assert_eq!(dirty, vec![0x90, 0x91, 0x92, 0x93]);
}
