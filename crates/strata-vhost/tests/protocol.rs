//! The server as a vhost-user frontend sees it, without QEMU: the test
//! speaks the protocol with rust-vmm's frontend over file-backed shared
//! memory, like QEMU's memfd. Checks the dirty log (`SET_LOG_BASE`), the
//! configuration space, `GET_VRING_BASE`, several queues, read-only
//! exports, and reconnects: after a frontend leaves, and to a server
//! stopped and started again on the same socket.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_image::raw::RawImage;
use strata_image::storage::MemoryStorage;
use strata_image::Image;
use strata_vhost::{serve, Config, ServerHandle};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM: usize = 16 << 20;
const QSIZE: u16 = 64;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;

/// Where queue `q`'s rings live in guest memory.
fn rings(q: u64) -> (u64, u64, u64) {
    let base = q * 0x4000;
    (base, base + 0x1000, base + 0x2000)
}

struct Guest {
    fe: Frontend,
    mem: GuestMemoryMmap<()>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    avail: Vec<u16>,
    _file: File,
}

impl Guest {
    /// Connects and sets up `queues` queues, as QEMU does at start.
    fn connect(sock: &Path, queues: usize, bases: &[u16]) -> Guest {
        let mut fe = connect_retry(sock, queues as u64);
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        assert_ne!(
            offered & VhostUserVirtioFeatures::LOG_ALL.bits(),
            0,
            "no dirty logging offered"
        );
        fe.set_features(offered & !VhostUserVirtioFeatures::LOG_ALL.bits())
            .unwrap();
        let pf = fe.get_protocol_features().unwrap();
        let want = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::REPLY_ACK;
        assert!(pf.contains(want), "protocol features {pf:?}");
        fe.set_protocol_features(want).unwrap();
        assert!(fe.get_queue_num().unwrap() >= queues as u64);
        let file = tempfile::tempfile().unwrap();
        file.set_len(MEM as u64).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            MEM,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        let region = mem.find_region(GuestAddress(0)).unwrap();
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
        fe.set_mem_table(&[info]).unwrap();
        let host = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
        let mut g = Guest {
            fe,
            mem: mem.clone(),
            kicks: vec![],
            calls: vec![],
            avail: vec![],
            _file: file,
        };
        for q in 0..queues {
            let (desc, avail, used) = rings(q as u64);
            let base = bases.get(q).copied().unwrap_or(0);
            g.fe.set_vring_num(q, QSIZE).unwrap();
            let config = VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: host(desc),
                used_ring_addr: host(used),
                avail_ring_addr: host(avail),
                log_addr: None,
            };
            g.fe.set_vring_addr(q, &config).unwrap();
            g.fe.set_vring_base(q, base).unwrap();
            let kick = EventFd::new(0).unwrap();
            let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            g.fe.set_vring_kick(q, &kick).unwrap();
            g.fe.set_vring_call(q, &call).unwrap();
            g.fe.set_vring_enable(q, true).unwrap();
            g.kicks.push(kick);
            g.calls.push(call);
            g.avail.push(base);
        }
        g
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(rings(q as u64).2 + 2))
            .unwrap()
    }

    /// One request on queue `q` with its buffers at `at`: header, `len` data
    /// bytes (device-writable for reads), status. Returns the status address.
    fn request(&mut self, q: usize, kind: u32, sector: u64, at: u64, len: u32) -> u64 {
        let (desc, avail, _) = rings(q as u64);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).unwrap();
        let status = at + 16 + u64::from(len);
        self.mem.write_obj(0xeeu8, GuestAddress(status)).unwrap();
        let write = if kind == T_IN { 2u16 } else { 0 };
        let descs = [
            (at, 16u32, 1u16, 1u16),
            (at + 16, len, 1 | write, 2),
            (status, 1, 2, 0),
        ];
        for (i, (addr, l, flags, next)) in descs.into_iter().enumerate() {
            let d = GuestAddress(desc + 16 * i as u64);
            self.mem.write_obj(addr, d).unwrap();
            self.mem.write_obj(l, d.unchecked_add(8)).unwrap();
            self.mem.write_obj(flags, d.unchecked_add(12)).unwrap();
            self.mem.write_obj(next, d.unchecked_add(14)).unwrap();
        }
        let slot = u64::from(self.avail[q] % QSIZE);
        self.mem
            .write_obj(0u16, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.avail[q] = self.avail[q].wrapping_add(1);
        // used_event (EVENT_IDX): interrupt me when this one is answered.
        let used_event = GuestAddress(avail + 4 + 2 * u64::from(QSIZE));
        self.mem.write_obj(self.used_idx(q), used_event).unwrap();
        self.mem
            .write_obj(self.avail[q], GuestAddress(avail + 2))
            .unwrap();
        self.kicks[q].write(1).unwrap();
        status
    }

    /// Waits for queue `q`'s used index to reach `idx` and its interrupt.
    fn wait(&self, q: usize, idx: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.used_idx(q) != idx {
            assert!(
                Instant::now() < deadline,
                "queue {q}: used index {} != {idx}",
                self.used_idx(q)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        while self.calls[q].read().is_err() {
            assert!(Instant::now() < deadline, "queue {q}: no interrupt");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn status(&self, at: u64) -> u8 {
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }
}

use vm_memory::Address;

fn connect_retry(sock: &Path, queues: u64) -> Frontend {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Frontend::connect(sock, queues) {
            Ok(fe) => return fe,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
        }
    }
}

fn image(size: usize, writable: bool) -> Arc<dyn Image> {
    let bytes: Vec<u8> = (0..size).map(|i| (i / 512) as u8).collect();
    let st = MemoryStorage::from_bytes("proto.raw", bytes);
    Arc::new(RawImage::open(Arc::new(st), writable).unwrap())
}

fn start(dir: &Path, image: Arc<dyn Image>, config: Config) -> (ServerHandle, std::path::PathBuf) {
    let sock = dir.join("vhost.sock");
    (serve(image, &sock, config).unwrap(), sock)
}

#[test]
fn dirty_log_records_what_the_device_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, sock) = start(dir.path(), image(1 << 20, true), Config::default());
    let mut g = Guest::connect(&sock, 1, &[]);
    // Migration starts: LOG_ALL, and a log of one bit per 4 KiB page.
    let log = tempfile::tempfile().unwrap();
    let log_len = (MEM / 4096 / 8) as u64;
    log.set_len(log_len).unwrap();
    let offered = g.fe.get_features().unwrap();
    g.fe.set_features(offered).unwrap();
    let region = VhostUserDirtyLogRegion {
        mmap_size: log_len,
        mmap_offset: 0,
        mmap_handle: std::os::fd::AsRawFd::as_raw_fd(&log),
    };
    g.fe.set_log_base(0, Some(region)).unwrap();
    // A read into 0x400000.. (3 pages, the last partly), status after it.
    let st = g.request(0, T_IN, 8, 0x40_0000 - 16, 3 * 4096);
    g.wait(0, 1);
    assert_eq!(g.status(st), 0);
    let mut data = vec![0u8; 3 * 4096];
    g.mem
        .read_slice(&mut data, GuestAddress(0x40_0000))
        .unwrap();
    assert!(data
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (8 + i / 512) as u8));
    let mut bits = vec![0u8; log_len as usize];
    log.read_exact_at(&mut bits, 0).unwrap();
    let dirty: Vec<usize> = (0..MEM / 4096)
        .filter(|p| bits[p / 8] & (1 << (p % 8)) != 0)
        .collect();
    // The used ring's page, the three data pages and the status byte's
    // (the fourth page: the status follows the data). The header's page
    // (0x3ff000) was only read.
    assert_eq!(dirty, vec![2, 0x400, 0x401, 0x402, 0x403]);
    // A write dirties only the used ring and its status byte.
    log.write_all_at(&vec![0u8; log_len as usize], 0).unwrap();
    let st = g.request(0, T_OUT, 0, 0x60_0000, 4096);
    g.wait(0, 2);
    assert_eq!(g.status(st), 0);
    log.read_exact_at(&mut bits, 0).unwrap();
    let dirty: Vec<usize> = (0..MEM / 4096)
        .filter(|p| bits[p / 8] & (1 << (p % 8)) != 0)
        .collect();
    assert_eq!(dirty, vec![2, 0x601]);
    drop(g);
    server.stop();
}

#[test]
fn config_space_vring_base_and_queues() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        queues: 4,
        serial: "proto".into(),
        ..Config::default()
    };
    let (server, sock) = start(dir.path(), image(3 << 20, true), config);
    let mut g = Guest::connect(&sock, 2, &[]);
    let (_, c) =
        g.fe.get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
            .unwrap();
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 6144);
    assert_eq!(u16::from_le_bytes([c[34], c[35]]), 4);
    // Both queues serve, concurrently and independently.
    let a = g.request(0, T_IN, 0, 0x10_0000, 4096);
    let b = g.request(1, T_IN, 16, 0x20_0000, 4096);
    g.wait(0, 1);
    g.wait(1, 1);
    assert_eq!((g.status(a), g.status(b)), (0, 0));
    assert_eq!(g.mem.read_obj::<u8>(GuestAddress(0x20_0010)).unwrap(), 16);
    // GET_VRING_BASE: where the frontend resumes.
    assert_eq!(g.fe.get_vring_base(1).unwrap(), 1);
    assert!(server.is_connected());
    drop(g);
    server.stop();
}

#[test]
fn read_only_export_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        readonly: true,
        ..Config::default()
    };
    let (server, sock) = start(dir.path(), image(1 << 20, false), config);
    let mut g = Guest::connect(&sock, 1, &[]);
    assert_ne!(
        g.fe.get_features().unwrap() & (1 << 5),
        0,
        "VIRTIO_BLK_F_RO"
    );
    let w = g.request(0, T_OUT, 0, 0x10_0000, 512);
    g.wait(0, 1);
    assert_eq!(g.status(w), 1, "a write must fail with IOERR");
    let r = g.request(0, T_IN, 0, 0x10_0000, 512);
    g.wait(0, 2);
    assert_eq!(g.status(r), 0);
    drop(g);
    server.stop();
    // A read-only image cannot be exported writable.
    let err = serve(
        image(4096, false),
        dir.path().join("x.sock"),
        Config::default(),
    )
    .unwrap_err();
    assert!(matches!(err, strata_vhost::Error::Image { .. }), "{err}");
}

#[test]
fn a_new_frontend_is_accepted_after_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (server, sock) = start(dir.path(), image(1 << 20, true), Config::default());
    let mut g = Guest::connect(&sock, 1, &[]);
    g.request(0, T_IN, 0, 0x10_0000, 512);
    g.wait(0, 1);
    drop(g);
    // The same guest memory comes back with its rings where it left them.
    let mut g = Guest::connect(&sock, 1, &[1]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.connections() < 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    // Fresh memory here, so the used index restarts from what the rings hold.
    let st = g.request(0, T_IN, 0, 0x10_0000, 512);
    g.wait(0, 1);
    assert_eq!(g.status(st), 0);
    drop(g);
    server.stop();
}

#[test]
fn a_restarted_server_serves_the_same_socket() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(1 << 20, true);
    let (server, sock) = start(dir.path(), img.clone(), Config::default());
    let mut g = Guest::connect(&sock, 1, &[]);
    let st = g.request(0, T_OUT, 0, 0x10_0000, 512);
    g.wait(0, 1);
    assert_eq!(g.status(st), 0);
    // Stopping ends the connection after answering what was taken.
    server.stop();
    assert!(!sock.exists(), "the socket file is removed");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The old connection is closed: a request goes unanswered, and the
        // frontend sees the end of the stream.
        if g.fe.get_features().is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "the old connection stays open");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (server, sock) = start(dir.path(), img, Config::default());
    let mut g = Guest::connect(&sock, 1, &[]);
    let st = g.request(0, T_IN, 0, 0x10_0000, 512);
    g.wait(0, 1);
    assert_eq!(g.status(st), 0);
    drop(g);
    drop(server);
}
