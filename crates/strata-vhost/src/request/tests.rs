//! Parsing: every layout the spec allows, every malformed chain answered
//! (or dropped when even the status byte is unusable), never a panic.

use virtio_bindings::bindings::virtio_blk::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::config::Config;
use crate::testutil::{header, limits, memory, segments, MEM_SIZE};

type Mem = GuestMemoryMmap<()>;

const H: u64 = 0x1000; // header
const D: u64 = 0x10_0000; // data
const S: u64 = 0x2000; // status

fn r(addr: u64, len: u32) -> (GuestAddress, u32, bool) {
    (GuestAddress(addr), len, false)
}
fn w(addr: u64, len: u32) -> (GuestAddress, u32, bool) {
    (GuestAddress(addr), len, true)
}

fn parse_on(mem: &Mem, descs: Vec<(GuestAddress, u32, bool)>, limits: &Limits) -> Parsed {
    parse(mem, 7, descs, limits)
}

fn op(p: Parsed) -> Op {
    match p {
        Parsed::Request(Request {
            head: 7,
            action: Action::Run(op),
            ..
        }) => op,
        other => panic!("expected a request to run, got {other:?}"),
    }
}

fn status(p: Parsed) -> (u32, &'static str) {
    match p {
        Parsed::Request(Request {
            action: Action::Fail { status, reason },
            ..
        }) => (u32::from(status), reason),
        other => panic!("expected a refused request, got {other:?}"),
    }
}

fn ioerr(p: Parsed) -> &'static str {
    let (s, reason) = status(p);
    assert_eq!(s, VIRTIO_BLK_S_IOERR, "{reason}");
    reason
}

fn unsupp(p: Parsed) -> &'static str {
    let (s, reason) = status(p);
    assert_eq!(s, VIRTIO_BLK_S_UNSUPP, "{reason}");
    reason
}

#[test]
fn read_in_the_usual_layout() {
    let mem = memory();
    header(&mem, H, VIRTIO_BLK_T_IN, 8);
    let p = parse_on(&mem, vec![r(H, 16), w(D, 4096), w(S, 1)], &limits());
    let Parsed::Request(req) = p.clone() else {
        panic!()
    };
    assert_eq!(req.status, GuestAddress(S));
    assert_eq!(
        op(p),
        Op::Read {
            offset: 4096,
            len: 4096,
            bufs: vec![Buf {
                addr: GuestAddress(D),
                len: 4096
            }]
        }
    );
}

#[test]
fn any_layout_header_split_and_status_merged() {
    let mem = memory();
    // Write: the header split in 10 + 6 bytes, the second piece followed by
    // data in the same descriptor; the status shares nothing.
    header(&mem, H, VIRTIO_BLK_T_OUT, 2);
    let mut h = [0u8; 16];
    vm_memory::Bytes::read_slice(&mem, &mut h, GuestAddress(H)).unwrap();
    vm_memory::Bytes::write_slice(&mem, &h[10..], GuestAddress(D - 6)).unwrap();
    let p = parse_on(&mem, vec![r(H, 10), r(D - 6, 6 + 1024), w(S, 1)], &limits());
    assert_eq!(
        op(p),
        Op::Write {
            offset: 1024,
            len: 1024,
            bufs: vec![Buf {
                addr: GuestAddress(D),
                len: 1024
            }]
        }
    );
    // Read: data and status in one writable descriptor.
    header(&mem, H, VIRTIO_BLK_T_IN, 0);
    let p = parse_on(&mem, vec![r(H, 16), w(D, 512 + 1)], &limits());
    let Parsed::Request(req) = p.clone() else {
        panic!()
    };
    assert_eq!(req.status, GuestAddress(D + 512));
    assert_eq!(
        op(p),
        Op::Read {
            offset: 0,
            len: 512,
            bufs: vec![Buf {
                addr: GuestAddress(D),
                len: 512
            }]
        }
    );
    // Zero-length descriptors anywhere are harmless.
    let p = parse_on(
        &mem,
        vec![r(H, 16), r(0, 0), w(D, 512), w(0, 0), w(S, 1)],
        &limits(),
    );
    assert!(matches!(op(p), Op::Read { len: 512, .. }));
}

#[test]
fn unusable_status_drops_the_chain() {
    let mem = memory();
    header(&mem, H, VIRTIO_BLK_T_IN, 0);
    let cases = vec![
        vec![],
        vec![r(H, 16)],
        vec![r(H, 16), w(D, 512), r(S, 1)],
        vec![r(H, 16), w(D, 512), w(S, 0)],
        vec![r(H, 16), w(MEM_SIZE, 1)],
        vec![r(H, 16), w(u64::MAX, 1)],
        vec![r(H, 16), w(u64::MAX - 2, 10)],
    ];
    for descs in cases {
        assert!(
            matches!(
                parse_on(&mem, descs.clone(), &limits()),
                Parsed::Unanswerable { head: 7, .. }
            ),
            "{descs:?}"
        );
    }
}

#[test]
fn short_header_is_an_io_error() {
    let mem = memory();
    header(&mem, H, VIRTIO_BLK_T_IN, 0);
    ioerr(parse_on(&mem, vec![r(H, 15), w(S, 1)], &limits()));
    ioerr(parse_on(&mem, vec![w(D, 512), w(S, 1)], &limits()));
    ioerr(parse_on(&mem, vec![w(S, 1)], &limits()));
}

#[test]
fn wrong_directions_are_io_errors() {
    let mem = memory();
    header(&mem, H, VIRTIO_BLK_T_IN, 0);
    // Readable after writable.
    ioerr(parse_on(
        &mem,
        vec![r(H, 16), w(D, 512), r(D + 512, 512), w(S, 1)],
        &limits(),
    ));
    // A read carrying device-readable data.
    ioerr(parse_on(
        &mem,
        vec![r(H, 16), r(D, 512), w(S, 1)],
        &limits(),
    ));
    // A write carrying device-writable data.
    header(&mem, H, VIRTIO_BLK_T_OUT, 0);
    ioerr(parse_on(
        &mem,
        vec![r(H, 16), w(D, 512), w(S, 1)],
        &limits(),
    ));
}

#[test]
fn ranges_and_alignment_are_checked() {
    let mem = memory();
    let l = limits(); // 1 MiB
    for (kind, data) in [
        (VIRTIO_BLK_T_IN, w(D, 4096)),
        (VIRTIO_BLK_T_OUT, r(D, 4096)),
    ] {
        header(&mem, H, kind, 2048 - 8); // the last 4 KiB: fine
        op(parse_on(&mem, vec![r(H, 16), data, w(S, 1)], &l));
        header(&mem, H, kind, 2048 - 7); // one sector past the end
        ioerr(parse_on(&mem, vec![r(H, 16), data, w(S, 1)], &l));
        header(&mem, H, kind, u64::MAX / 512 + 1); // offset overflows
        ioerr(parse_on(&mem, vec![r(H, 16), data, w(S, 1)], &l));
        header(&mem, H, kind, u64::MAX / 512); // end overflows
        ioerr(parse_on(&mem, vec![r(H, 16), data, w(S, 1)], &l));
    }
    header(&mem, H, VIRTIO_BLK_T_IN, 0);
    ioerr(parse_on(&mem, vec![r(H, 16), w(D, 100), w(S, 1)], &l));
    // 4 KiB blocks: offset and length must be 4 KiB multiples.
    let l4 = Limits::new(
        &Config {
            block_size: 4096,
            ..Config::default()
        },
        1 << 20,
    );
    header(&mem, H, VIRTIO_BLK_T_IN, 8);
    op(parse_on(&mem, vec![r(H, 16), w(D, 4096), w(S, 1)], &l4));
    ioerr(parse_on(&mem, vec![r(H, 16), w(D, 512), w(S, 1)], &l4));
    header(&mem, H, VIRTIO_BLK_T_IN, 1);
    ioerr(parse_on(&mem, vec![r(H, 16), w(D, 4096), w(S, 1)], &l4));
    // A zero-length read or write is fine.
    header(&mem, H, VIRTIO_BLK_T_IN, 0);
    assert!(matches!(
        op(parse_on(&mem, vec![r(H, 16), w(S, 1)], &l)),
        Op::Read { len: 0, .. }
    ));
}

#[test]
fn buffers_beyond_guest_memory_are_io_errors() {
    let mem = memory();
    header(&mem, H, VIRTIO_BLK_T_IN, 0);
    ioerr(parse_on(
        &mem,
        vec![r(H, 16), w(MEM_SIZE - 256, 512), w(S, 1)],
        &limits(),
    ));
    ioerr(parse_on(
        &mem,
        vec![r(H, 16), w(u64::MAX - 100, 512), w(S, 1)],
        &limits(),
    ));
    ioerr(parse_on(&mem, vec![r(MEM_SIZE, 16), w(S, 1)], &limits()));
}

#[test]
fn read_only_refuses_changes() {
    let mem = memory();
    let ro = Limits::new(
        &Config {
            readonly: true,
            ..Config::default()
        },
        1 << 20,
    );
    header(&mem, H, VIRTIO_BLK_T_OUT, 0);
    ioerr(parse_on(&mem, vec![r(H, 16), r(D, 512), w(S, 1)], &ro));
    header(&mem, H, VIRTIO_BLK_T_IN, 0);
    op(parse_on(&mem, vec![r(H, 16), w(D, 512), w(S, 1)], &ro));
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        header(&mem, H, kind, 0);
        segments(&mem, D, &[(0, 8, 0)]);
        unsupp(parse_on(&mem, vec![r(H, 16), r(D, 16), w(S, 1)], &ro));
    }
    header(&mem, H, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(op(parse_on(&mem, vec![r(H, 16), w(S, 1)], &ro)), Op::Flush);
}

#[test]
fn unknown_types_are_unsupported() {
    let mem = memory();
    for kind in [2, 3, 5, 10, VIRTIO_BLK_T_SECURE_ERASE, 15, 16, 99, u32::MAX] {
        header(&mem, H, kind, 0);
        unsupp(parse_on(
            &mem,
            vec![r(H, 16), w(D, 512), w(S, 1)],
            &limits(),
        ));
    }
}

#[test]
fn flush_and_get_id() {
    let mem = memory();
    header(&mem, H, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        op(parse_on(&mem, vec![r(H, 16), w(S, 1)], &limits())),
        Op::Flush
    );
    header(&mem, H, VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(
        op(parse_on(&mem, vec![r(H, 16), w(D, 20), w(S, 1)], &limits())),
        Op::GetId {
            bufs: vec![Buf {
                addr: GuestAddress(D),
                len: 20
            }]
        }
    );
}

#[test]
fn discard_and_write_zeroes_segments() {
    let mem = memory();
    let l = limits();
    let req = |kind, segs: &[(u64, u32, u32)]| {
        header(&mem, H, kind, 0);
        segments(&mem, D, segs);
        parse_on(
            &mem,
            vec![r(H, 16), r(D, 16 * segs.len() as u32), w(S, 1)],
            &l,
        )
    };
    assert_eq!(
        op(req(VIRTIO_BLK_T_DISCARD, &[(8, 16, 0), (100, 1, 0)])),
        Op::Discard {
            ranges: vec![
                Range {
                    offset: 4096,
                    len: 8192,
                    unmap: false
                },
                Range {
                    offset: 51200,
                    len: 512,
                    unmap: false
                }
            ]
        }
    );
    assert_eq!(
        op(req(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 2048, 1)])),
        Op::WriteZeroes {
            ranges: vec![Range {
                offset: 0,
                len: 1 << 20,
                unmap: true
            }]
        }
    );
    unsupp(req(VIRTIO_BLK_T_DISCARD, &[(0, 8, 1)]));
    unsupp(req(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 2)]));
    unsupp(req(VIRTIO_BLK_T_DISCARD, &[(0, 8, 0x8000_0000)]));
    ioerr(req(VIRTIO_BLK_T_DISCARD, &[(2048, 1, 0)]));
    ioerr(req(
        VIRTIO_BLK_T_WRITE_ZEROES,
        &[(0, MAX_RANGE_SECTORS + 1, 0)],
    ));
    ioerr(req(VIRTIO_BLK_T_DISCARD, &[(u64::MAX, 1, 0)]));
    let many = vec![(0u64, 1u32, 0u32); MAX_RANGE_SEGMENTS as usize + 1];
    ioerr(req(VIRTIO_BLK_T_DISCARD, &many));
    let most = vec![(0u64, 1u32, 0u32); MAX_RANGE_SEGMENTS as usize];
    assert!(matches!(
        op(req(VIRTIO_BLK_T_DISCARD, &most)),
        Op::Discard { .. }
    ));
    // Segment data that is empty or not a whole number of segments.
    header(&mem, H, VIRTIO_BLK_T_DISCARD, 0);
    ioerr(parse_on(&mem, vec![r(H, 16), w(S, 1)], &l));
    ioerr(parse_on(&mem, vec![r(H, 16), r(D, 20), w(S, 1)], &l));
    // Segments may be split across descriptors too.
    segments(&mem, D, &[(8, 8, 0)]);
    let mut seg = [0u8; 16];
    vm_memory::Bytes::read_slice(&mem, &mut seg, GuestAddress(D)).unwrap();
    vm_memory::Bytes::write_slice(&mem, &seg[5..], GuestAddress(D + 0x1000)).unwrap();
    assert_eq!(
        op(parse_on(
            &mem,
            vec![r(H, 16), r(D, 5), r(D + 0x1000, 11), w(S, 1)],
            &l
        )),
        Op::Discard {
            ranges: vec![Range {
                offset: 4096,
                len: 4096,
                unmap: false
            }]
        }
    );
}

#[test]
fn too_many_descriptors_is_an_io_error() {
    let mem = memory();
    header(&mem, H, VIRTIO_BLK_T_IN, 0);
    let mut descs = vec![r(H, 16)];
    descs.extend((0..MAX_DESCRIPTORS).map(|i| w(D + 512 * (i as u64 % 16), 512)));
    descs.push(w(S, 1));
    ioerr(parse_on(&mem, descs, &limits()));
}
