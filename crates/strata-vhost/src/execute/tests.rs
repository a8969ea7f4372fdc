//! Running requests: data lands where the descriptors say, big requests go
//! through in chunks, failures become IOERR, writethrough flushes, and every
//! byte the device writes into guest memory is in the dirty log.

use std::sync::Arc;

use strata_image::raw::RawImage;
use strata_image::storage::{FaultConfig, FaultStorage};
use strata_image::Image;
use virtio_bindings::bindings::virtio_blk::*;
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, MmapRegion};

use super::*;
use crate::request::{Action, Buf, Op, Range, Request};
use crate::testutil::{memory, raw_image, regions};

const SERIAL: [u8; 20] = *b"serial-number-0001\0\0";
const WB: Context<'static> = Context {
    serial: &SERIAL,
    writethrough: false,
};
const S: u64 = 0x3000;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn req(op: Op) -> Request {
    Request {
        head: 1,
        status: GuestAddress(S),
        action: Action::Run(op),
    }
}

fn status<M: GuestMemory>(mem: &M) -> u8 {
    mem.read_obj(GuestAddress(S)).unwrap()
}

fn buf(addr: u64, len: u32) -> Buf {
    Buf {
        addr: GuestAddress(addr),
        len,
    }
}

/// Pages of guest memory marked dirty.
fn dirty_pages(mem: &GuestMemoryMmap<AtomicBitmap>) -> Vec<u64> {
    let region = vm_memory::GuestMemoryBackend::find_region(mem, GuestAddress(0)).unwrap();
    (0..crate::testutil::MEM_SIZE / 4096)
        .filter(|p| vm_memory::GuestMemoryRegion::bitmap(region).dirty_at((p * 4096) as usize))
        .collect()
}

fn clear_dirty(mem: &GuestMemoryMmap<AtomicBitmap>) {
    let region = vm_memory::GuestMemoryBackend::find_region(mem, GuestAddress(0)).unwrap();
    MmapRegion::bitmap(region).reset();
}

#[test]
fn read_scatters_and_logs_exactly_what_it_writes() {
    let mem = memory::<AtomicBitmap>();
    let (image, _) = raw_image(1 << 20);
    let data = pattern(12288, 3);
    image.write_at(&data, 8192).unwrap();
    clear_dirty(&mem);
    let bufs = vec![
        buf(0x10_0000, 512),
        buf(0x20_0800, 7680),
        buf(0x30_0000, 4096),
    ];
    let used = answer(
        &mem,
        &*image,
        &req(Op::Read {
            offset: 8192,
            len: 12288,
            bufs,
        }),
        WB,
        &mut Vec::new(),
    );
    assert_eq!(used, 12288 + 1);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
    let mut got = vec![0u8; 12288];
    mem.read_slice(&mut got[..512], GuestAddress(0x10_0000))
        .unwrap();
    mem.read_slice(&mut got[512..8192], GuestAddress(0x20_0800))
        .unwrap();
    mem.read_slice(&mut got[8192..], GuestAddress(0x30_0000))
        .unwrap();
    assert_eq!(got, data);
    // 0x100000 (1 page), 0x200800..0x202800 (3 pages), 0x300000 (1), status.
    assert_eq!(
        dirty_pages(&mem),
        vec![3, 0x100, 0x200, 0x201, 0x202, 0x300]
    );
}

#[test]
fn write_gathers_and_logs_only_the_status() {
    let mem = memory::<AtomicBitmap>();
    let (image, _) = raw_image(1 << 20);
    let data = pattern(8192, 9);
    mem.write_slice(&data[..1000], GuestAddress(0x10_0000))
        .unwrap();
    mem.write_slice(&data[1000..], GuestAddress(0x20_0000))
        .unwrap();
    clear_dirty(&mem);
    let bufs = vec![buf(0x10_0000, 1000), buf(0x20_0000, 7192)];
    let used = answer(
        &mem,
        &*image,
        &req(Op::Write {
            offset: 4096,
            len: 8192,
            bufs,
        }),
        WB,
        &mut Vec::new(),
    );
    assert_eq!((used, status(&mem)), (1, VIRTIO_BLK_S_OK as u8));
    let mut back = vec![0u8; 8192];
    image.read_at(&mut back, 4096).unwrap();
    assert_eq!(back, data);
    assert_eq!(dirty_pages(&mem), vec![3]);
}

#[test]
fn bounced_requests_bigger_than_a_chunk_go_through_in_pieces() {
    // Buffers across the boundaries of separately mapped regions go through
    // the bounce buffer; the last one lies in one region and goes in place.
    let mem = regions::<()>();
    let (image, _) = raw_image(8 << 20);
    let len = 3 * CHUNK + 4096;
    let data = pattern(len, 1);
    // Odd-sized buffers so chunk edges fall inside them.
    let mib = 1u64 << 20;
    let layout = [
        (4 * mib - 50_000, 100_000u32),
        (8 * mib - 700_000, 1_500_000),
        (12 * mib - 500_000, 1_000_000),
        (12 * mib + 600_000, (len - 2_600_000) as u32),
    ];
    let mut bufs = Vec::new();
    let mut at = 0usize;
    for (addr, s) in layout {
        mem.write_slice(&data[at..at + s as usize], GuestAddress(addr))
            .unwrap();
        bufs.push(buf(addr, s));
        at += s as usize;
    }
    let mut scratch = Vec::new();
    let w = Op::Write {
        offset: 1 << 20,
        len: len as u64,
        bufs: bufs.clone(),
    };
    assert_eq!(answer(&mem, &*image, &req(w), WB, &mut scratch), 1);
    assert_eq!(scratch.len(), CHUNK);
    let mut back = vec![0u8; len];
    image.read_at(&mut back, 1 << 20).unwrap();
    assert!(back == data);
    for b in &bufs {
        mem.write_slice(&vec![0u8; b.len as usize], b.addr).unwrap();
    }
    let r = Op::Read {
        offset: 1 << 20,
        len: len as u64,
        bufs: bufs.clone(),
    };
    assert_eq!(
        answer(&mem, &*image, &req(r), WB, &mut scratch),
        len as u32 + 1
    );
    let mut got = Vec::new();
    for b in &bufs {
        let mut piece = vec![0u8; b.len as usize];
        mem.read_slice(&mut piece, b.addr).unwrap();
        got.extend(piece);
    }
    assert!(got == data);
}

#[test]
fn get_id_copies_at_most_twenty_bytes() {
    let mem = memory::<()>();
    let (image, _) = raw_image(4096);
    let used = answer(
        &mem,
        &*image,
        &req(Op::GetId {
            bufs: vec![buf(0x1000, 8)],
        }),
        WB,
        &mut Vec::new(),
    );
    assert_eq!(used, 9);
    let mut id = [0u8; 9];
    mem.read_slice(&mut id, GuestAddress(0x1000)).unwrap();
    assert_eq!(&id, b"serial-n\0");
    let used = answer(
        &mem,
        &*image,
        &req(Op::GetId {
            bufs: vec![buf(0x1000, 64)],
        }),
        WB,
        &mut Vec::new(),
    );
    assert_eq!(used, 21);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(0x1000)).unwrap();
    assert_eq!(id, SERIAL);
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeros() {
    let mem = memory::<()>();
    let (image, _) = raw_image(1 << 20);
    image.write_at(&pattern(1 << 20, 5), 0).unwrap();
    let d = Op::Discard {
        ranges: vec![Range {
            offset: 0,
            len: 65536,
            unmap: false,
        }],
    };
    assert_eq!(answer(&mem, &*image, &req(d), WB, &mut Vec::new()), 1);
    let z = Op::WriteZeroes {
        ranges: vec![
            Range {
                offset: 131072,
                len: 4096,
                unmap: false,
            },
            Range {
                offset: 200704,
                len: 8192,
                unmap: true,
            },
        ],
    };
    assert_eq!(answer(&mem, &*image, &req(z), WB, &mut Vec::new()), 1);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
    let mut back = vec![1u8; 8192];
    image.read_at(&mut back, 200704).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    image.read_at(&mut back[..4096], 131072).unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0));
}

fn fault_image(config: FaultConfig) -> (Arc<dyn Image>, Arc<FaultStorage>) {
    let st = Arc::new(FaultStorage::new("fault.raw", vec![0u8; 1 << 20], config));
    (Arc::new(RawImage::open(st.clone(), true).unwrap()), st)
}

#[test]
fn image_failures_are_io_errors() {
    let mem = memory::<()>();
    let (image, st) = fault_image(FaultConfig {
        fail_write: Some(0),
        fail_flush: true,
        ..Default::default()
    });
    let w = Op::Write {
        offset: 0,
        len: 512,
        bufs: vec![buf(0x10_0000, 512)],
    };
    assert_eq!(answer(&mem, &*image, &req(w), WB, &mut Vec::new()), 1);
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR as u8);
    assert!(st.failed());
    mem.write_obj(0xffu8, GuestAddress(S)).unwrap();
    answer(&mem, &*image, &req(Op::Flush), WB, &mut Vec::new());
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR as u8);
    let z = Op::WriteZeroes {
        ranges: vec![Range {
            offset: 0,
            len: 4096,
            unmap: true,
        }],
    };
    mem.write_obj(0xffu8, GuestAddress(S)).unwrap();
    answer(&mem, &*image, &req(z), WB, &mut Vec::new());
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn writethrough_flushes_every_change_and_writeback_none() {
    let mem = memory::<()>();
    let (image, st) = fault_image(FaultConfig::default());
    let w = || {
        req(Op::Write {
            offset: 0,
            len: 512,
            bufs: vec![buf(0x10_0000, 512)],
        })
    };
    let wt = Context {
        serial: &SERIAL,
        writethrough: true,
    };
    answer(&mem, &*image, &w(), WB, &mut Vec::new());
    assert_eq!(st.flushes(), 0);
    answer(&mem, &*image, &w(), wt, &mut Vec::new());
    assert_eq!(st.flushes(), 1);
    let z = Op::WriteZeroes {
        ranges: vec![Range {
            offset: 0,
            len: 4096,
            unmap: false,
        }],
    };
    answer(&mem, &*image, &req(z), wt, &mut Vec::new());
    assert_eq!(st.flushes(), 2);
    answer(&mem, &*image, &req(Op::Flush), WB, &mut Vec::new());
    assert_eq!(st.flushes(), 3);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn refused_requests_get_their_status() {
    let mem = memory::<()>();
    let (image, _) = raw_image(4096);
    let r = Request {
        head: 1,
        status: GuestAddress(S),
        action: Action::Fail {
            status: VIRTIO_BLK_S_UNSUPP as u8,
            reason: "test",
        },
    };
    assert_eq!(answer(&mem, &*image, &r, WB, &mut Vec::new()), 1);
    assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP as u8);
}
