//! The vhost-user-blk device as rust-vmm's vhost-user-backend framework
//! drives it: features, configuration space, guest memory, one worker
//! thread per queue, and `GET_VRING_BASE` waiting for the queue's requests.
//!
//! Dirty logging (`VHOST_F_LOG_ALL` with `VHOST_USER_PROTOCOL_F_LOG_SHMFD`):
//! guest memory is mapped with the framework's [`BitmapMmapRegion`], which
//! `SET_LOG_BASE` points at the frontend's shared log. Every byte this
//! device writes into guest memory goes through vm-memory (read data, ID
//! strings, status bytes, the used ring), which marks the pages it touches
//! in that log, so QEMU can migrate or save a running machine. Known limit
//! of the framework: once started, logging goes on until the next
//! connection even after the frontend turns `LOG_ALL` off (harmless: the
//! pages are marked in a log QEMU no longer reads).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::VhostUserBackend;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::config::Config;
use crate::device::{self, Limits, WRITEBACK_OFFSET};
use crate::error::Result;
use crate::gate::GateInner;
use crate::queue::{AtomicMemory, Pass, Queue, Vring};

/// What one frontend connection negotiated; reset for the next.
#[derive(Default)]
struct Session {
    memory: RwLock<Option<AtomicMemory>>,
    acked: AtomicU64,
    /// The cache mode the driver asked for (`writeback` in the config
    /// space); it applies only once FLUSH is acked.
    wce: AtomicBool,
}

impl Session {
    /// Writes may be cached: the driver acked FLUSH (so it sends flushes)
    /// and did not switch the cache to writethrough (virtio 1.2, 5.2.6.4).
    fn writeback(&self) -> bool {
        self.wce.load(Ordering::SeqCst)
            && device::writeback_allowed(self.acked.load(Ordering::SeqCst))
    }

    /// The `writeback` field: the driver's choice, except 0 for a driver
    /// that acked CONFIG_WCE without FLUSH (virtio 1.2, 5.2.5.1).
    fn writeback_field(&self) -> bool {
        let acked = self.acked.load(Ordering::SeqCst);
        let forced_off = device::wce_acked(acked) && !device::writeback_allowed(acked);
        self.wce.load(Ordering::SeqCst) && !forced_off
    }
}

/// The device: shared by the framework's threads and the server.
pub(crate) struct BlkBackend {
    config: Config,
    gate: Arc<GateInner>,
    queues: Vec<Queue>,
    session: Session,
}

impl BlkBackend {
    /// A device with `config` behind `gate`, its I/O threads started.
    pub(crate) fn new(config: Config, gate: Arc<GateInner>) -> Result<BlkBackend> {
        let queues = (0..usize::from(config.queues))
            .map(|i| Queue::new(i, &config))
            .collect::<Result<Vec<_>>>()?;
        let backend = BlkBackend {
            config,
            gate,
            queues,
            session: Session::default(),
        };
        backend.new_session();
        Ok(backend)
    }

    /// Forgets what the last connection negotiated.
    pub(crate) fn new_session(&self) {
        *self.session.memory.write() = None;
        self.session.acked.store(0, Ordering::SeqCst);
        // Writeback until the driver says otherwise: the frontend reads the
        // configuration space (and shows the guest this mode) before it
        // acks any feature. QEMU also acks a first feature set without
        // FLUSH at connection, so the mode is derived, never latched.
        self.session.wce.store(true, Ordering::SeqCst);
    }

    /// The event id of a queue thread's resume event (above the queues' own
    /// and the framework's exit event).
    pub(crate) fn resume_event(&self) -> u64 {
        u64::from(self.config.queues) + 1
    }

    /// The gate.
    pub(crate) fn gate(&self) -> &Arc<GateInner> {
        &self.gate
    }

    fn limits(&self) -> Limits {
        Limits::new(&self.config, self.gate.image().size())
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = BitmapMmapRegion;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.config.queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.config.queue_size)
    }

    fn features(&self) -> u64 {
        device::virtio_features(&self.config)
    }

    fn acked_features(&self, features: u64) {
        self.session.acked.store(features, Ordering::SeqCst);
        let writeback = self.session.writeback();
        tracing::debug!(
            features = format!("{features:#x}"),
            writeback,
            "virtio features acked"
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        device::protocol_features()
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The framework sets it on each queue; the queue code reads it there.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let writeback = self.session.writeback_field();
        let space = device::config_space(&self.config, &self.limits(), writeback);
        device::config_window(&space, offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only `writeback` is writable.
        if offset == WRITEBACK_OFFSET && buf.len() == 1 {
            self.session.wce.store(buf[0] != 0, Ordering::SeqCst);
            let writeback = self.session.writeback();
            tracing::debug!(writeback, "cache mode set by the driver");
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "virtio-blk config write of {} bytes at {offset} refused",
                buf.len()
            ),
        ))
    }

    fn update_memory(&self, mem: AtomicMemory) -> io::Result<()> {
        *self.session.memory.write() = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.config.queues).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::error!("cannot create a vring worker's exit event: {e}");
                None
            }
        }
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if let Some(queue) = self.queues.get(queue_index as usize) {
            queue.stop(&self.gate);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // One queue per thread: the thread's index is the queue's.
        let (Some(queue), Some(vring)) = (self.queues.get(thread_id), vrings.first()) else {
            return Ok(());
        };
        if u64::from(device_event) == self.resume_event() {
            let _ = self.gate.waker(thread_id).consume();
        } else if device_event != 0 {
            return Ok(());
        }
        let Some(memory) = self.session.memory.read().clone() else {
            return Ok(());
        };
        let pass = Pass {
            gate: &self.gate,
            config: &self.config,
            memory: &memory,
            writethrough: !self.session.writeback(),
        };
        // Errors are logged where they happen: returning one would end the
        // framework's worker thread and with it the queue.
        queue.take_requests(&pass, vring);
        Ok(())
    }
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
