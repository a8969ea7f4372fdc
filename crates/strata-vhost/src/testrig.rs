//! A test driver for the backend: guest memory (four separately mapped
//! regions), a split queue whose descriptors are written with virtio-queue's
//! mock, the backend's worker entry point called the way the framework calls
//! it, and the used ring read back.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_image::Image;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::DescriptorTable;
use vm_memory::{Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag};

use crate::backend::BlkBackend;
use crate::config::Config;
use crate::gate::{Gate, GateInner};
use crate::queue::{AtomicMemory, Vring};
use crate::testutil::regions;

/// Entries in the test queue.
pub const QUEUE_SIZE: u16 = 256;
/// Where request buffers may go (above the rings).
pub const BUFFERS: u64 = 0x10_0000;

/// One queue of a backend, driven from the test.
pub struct Rig {
    /// Guest memory.
    pub mem: AtomicMemory,
    /// The device.
    pub backend: Arc<BlkBackend>,
    /// Queue 0 as the framework would hold it.
    pub vring: Vring,
    /// The gate.
    pub gate: Gate,
    /// Interrupts the device sent.
    pub call: EventConsumer,
    desc_table: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    used_seen: u16,
}

impl Rig {
    /// A backend serving `image` with `config`, its queue 0 ready, the
    /// driver having acked every offered feature (EVENT_IDX only if
    /// `event_idx`).
    pub fn new(image: Arc<dyn Image>, config: Config, event_idx: bool) -> Rig {
        let mem = GuestMemoryAtomic::new(regions());
        // The mock's own ring layout puts the used ring inside the upper
        // half of the available ring (it sizes the available ring in entries,
        // not bytes), so the rings get a page each here.
        let (desc_table, avail, used) =
            (GuestAddress(0), GuestAddress(0x1000), GuestAddress(0x2000));
        let gate = GateInner::new(usize::from(config.queues), image, config.readonly).unwrap();
        let backend = Arc::new(BlkBackend::new(config, gate.clone()).unwrap());
        backend.new_session();
        let mut features = backend.features();
        if !event_idx {
            features &= !(1 << virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);
        }
        backend.acked_features(features);
        backend.update_memory(mem.clone()).unwrap();
        let vring = Vring::new(mem.clone(), QUEUE_SIZE).unwrap();
        vring.set_queue_size(QUEUE_SIZE);
        vring.set_queue_info(desc_table.0, avail.0, used.0).unwrap();
        vring.set_queue_event_idx(event_idx);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let (call, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).unwrap();
        // SAFETY: the notifier's descriptor is open and handed over whole.
        vring.set_call(Some(unsafe { File::from_raw_fd(notifier.into_raw_fd()) }));
        Rig {
            mem,
            backend,
            vring,
            gate: Gate::new(gate),
            call,
            desc_table,
            avail,
            used,
            free: (0..QUEUE_SIZE).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Writes `bytes` into guest memory.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem
            .memory()
            .write_slice(bytes, GuestAddress(addr))
            .unwrap();
    }

    /// Reads `len` bytes of guest memory.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem
            .memory()
            .read_slice(&mut out, GuestAddress(addr))
            .unwrap();
        out
    }

    /// Free descriptor slots.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Makes a chain of `descs` (address, length, device-writable) available;
    /// returns its head.
    pub fn submit(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        assert!(!descs.is_empty() && descs.len() <= self.free.len());
        let ids: Vec<u16> = (0..descs.len()).map(|_| self.free.pop().unwrap()).collect();
        let m = self.mem.memory();
        let table = DescriptorTable::new(&*m, self.desc_table, QUEUE_SIZE);
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            let next = ids.get(i + 1).copied().unwrap_or(0);
            if i + 1 < ids.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            table
                .store(
                    ids[i],
                    RawDescriptor::from(Descriptor::new(addr, len, flags, next)),
                )
                .unwrap();
        }
        let head = ids[0];
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        m.write_obj(head.to_le(), self.avail.unchecked_add(4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.write_obj(self.avail_idx.to_le(), self.avail.unchecked_add(2))
            .unwrap();
        self.chains.insert(head, ids);
        head
    }

    /// The driver's `used_event` (with EVENT_IDX: interrupt me once the used
    /// index passes this).
    pub fn set_used_event(&self, idx: u16) {
        let at = self.avail.unchecked_add(4 + 2 * u64::from(QUEUE_SIZE));
        self.mem.memory().write_obj(idx.to_le(), at).unwrap();
    }

    /// The used index the device published.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(
            self.mem
                .memory()
                .read_obj(self.used.unchecked_add(2))
                .unwrap(),
        )
    }

    /// The used index already collected by `wait_used`.
    pub fn used_seen(&self) -> u16 {
        self.used_seen
    }

    /// A kick on queue 0, handled as the framework's worker handles it.
    pub fn kick(&self) {
        self.backend
            .handle_event(0, EventSet::IN, std::slice::from_ref(&self.vring), 0)
            .unwrap();
    }

    /// The resume event, handled as the worker handles it; false when the
    /// gate had not signalled it.
    pub fn resume_event(&self) -> bool {
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.backend.gate().waker(0));
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for an open eventfd; no waiting.
        let signalled = unsafe { libc::poll(&mut p, 1, 0) } == 1;
        let ev = self.backend.resume_event() as u16;
        self.backend
            .handle_event(ev, EventSet::IN, std::slice::from_ref(&self.vring), 0)
            .unwrap();
        signalled
    }

    /// Interrupts received since the last call.
    pub fn interrupts(&self) -> bool {
        self.interrupt_count() > 0
    }

    /// How many interrupts the device sent since the last call.
    pub fn interrupt_count(&self) -> u64 {
        let mut n = 0u64;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.call);
        // SAFETY: reads 8 bytes into a u64 from an open non-blocking eventfd.
        let r = unsafe { libc::read(fd, (&mut n as *mut u64).cast(), 8) };
        if r == 8 {
            n
        } else {
            0
        }
    }

    /// Waits for `n` more used entries; returns (head, len) of each and
    /// frees their descriptors.
    pub fn wait_used(&mut self, n: u16) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.used_idx().wrapping_sub(self.used_seen) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} answers came",
                self.used_idx().wrapping_sub(self.used_seen)
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let m = self.mem.memory();
        let mut out = Vec::new();
        for _ in 0..n {
            let slot = u64::from(self.used_seen % QUEUE_SIZE);
            let at = self.used.unchecked_add(4 + 8 * slot);
            let id: u32 = u32::from_le(m.read_obj(at).unwrap());
            let len: u32 = u32::from_le(m.read_obj(at.unchecked_add(4)).unwrap());
            let head = id as u16;
            let ids = self.chains.remove(&head).unwrap_or_else(|| panic!("used entry {id} (len {len}) at slot {slot} for a chain not submitted; open: {:?}", self.chains.keys().collect::<Vec<_>>()));
            self.free.extend(ids);
            out.push((head, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}
