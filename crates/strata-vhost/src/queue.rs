//! One request queue: taking requests off its ring (on the queue's own
//! thread, under the ring's lock), handing each to the queue's I/O threads,
//! and putting the answers in the used ring, notifying the driver when it
//! asked to be (`VIRTIO_RING_F_EVENT_IDX`). Answers may complete in any
//! order, as virtio-blk allows.

use std::sync::Arc;

use parking_lot::Mutex;
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VringMutex, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::config::Config;
use crate::device::Limits;
use crate::error::Result;
use crate::execute::{answer, Context};
use crate::gate::GateInner;
use crate::pool::IoPool;
use crate::request::{parse, Parsed};

/// Guest memory as the backend maps it, with the dirty-log bitmap.
pub(crate) type Memory = GuestMemoryMmap<BitmapMmapRegion>;
/// Guest memory that the frontend may remap.
pub(crate) type AtomicMemory = GuestMemoryAtomic<Memory>;
/// A vring as the framework keeps it.
pub(crate) type Vring = VringMutex<AtomicMemory>;

/// One queue's state that outlives connections.
pub(crate) struct Queue {
    index: usize,
    /// Held while taking requests off the ring, so that stopping the ring
    /// can wait for a pass to finish counting what it took.
    taking: Mutex<()>,
    pool: IoPool,
}

/// The device-wide facts a pass over a queue needs.
pub(crate) struct Pass<'a> {
    /// The gate (in-flight counts, the image).
    pub gate: &'a Arc<GateInner>,
    /// The export's configuration.
    pub config: &'a Config,
    /// Guest memory.
    pub memory: &'a AtomicMemory,
    /// Make each write durable before answering it.
    pub writethrough: bool,
}

impl Queue {
    /// Queue `index` with its I/O threads.
    pub(crate) fn new(index: usize, config: &Config) -> Result<Queue> {
        Ok(Queue {
            index,
            taking: Mutex::new(()),
            pool: IoPool::new(&format!("vhost-blk-io{index}"), config.io_threads)?,
        })
    }

    /// Takes every available request off `vring` and hands it to the I/O
    /// threads, until the ring is empty with notifications re-enabled, or
    /// the gate is paused.
    pub(crate) fn take_requests(&self, pass: &Pass<'_>, vring: &Vring) {
        let q = self.index;
        let _taking = self.taking.lock();
        loop {
            let memory = pass.memory.memory();
            let mut chains = Vec::new();
            let more = {
                let mut state = vring.get_mut();
                // A resume may call before the frontend set the ring up; an
                // unset ring's addresses must not be touched.
                if !state.get_queue().ready() || !state.is_enabled() {
                    return;
                }
                if let Err(e) = state.disable_notification() {
                    tracing::warn!(queue = q, "virtio-blk ring unusable: {e}");
                    return;
                }
                let mut paused = false;
                loop {
                    let Some(ticket) = pass.gate.ticket(q) else {
                        paused = true;
                        break;
                    };
                    let mut ring = state.get_queue_mut().iter(memory.clone()).ok();
                    match ring.as_mut().and_then(Iterator::next) {
                        Some(chain) => {
                            pass.gate.count_taken(q);
                            chains.push((chain, ticket));
                        }
                        None => break,
                    }
                }
                // While paused, notifications stay off: resuming takes the
                // ring again and turns them back on.
                !paused && state.enable_notification().unwrap_or(false)
            };
            let image = pass.gate.image();
            let limits = Limits::new(pass.config, image.size());
            for (chain, ticket) in chains {
                let head = chain.head_index();
                let descs: Vec<_> = chain
                    .map(|d| (d.addr(), d.len(), d.is_write_only()))
                    .collect();
                match parse(&*memory, head, descs, &limits) {
                    Parsed::Request(req) => {
                        let (image, vring, memory) = (image.clone(), vring.clone(), memory.clone());
                        let serial = pass.config.serial_bytes();
                        let writethrough = pass.writethrough;
                        let job = Box::new(move |scratch: &mut Vec<u8>| {
                            let ctx = Context {
                                serial: &serial,
                                writethrough,
                            };
                            let len = answer(&*memory, &*image, &req, ctx, scratch);
                            complete(&vring, q, req.head, len);
                            drop(ticket);
                        });
                        // Refused only while the device shuts down; the
                        // ticket goes with the dropped job.
                        self.pool.submit(job);
                    }
                    Parsed::Unanswerable { head, reason } => {
                        tracing::warn!(queue = q, head, reason, "virtio-blk chain dropped");
                        complete(vring, q, head, 0);
                        drop(ticket);
                    }
                }
            }
            if !more {
                return;
            }
        }
    }

    /// Waits until a pass taking requests has finished and every request of
    /// this queue is answered (for `GET_VRING_BASE`, after the ring was
    /// marked not ready, so nothing more is taken).
    pub(crate) fn stop(&self, gate: &GateInner) {
        drop(self.taking.lock());
        gate.wait_queue_idle(self.index);
    }
}

/// Puts `head` in the used ring with `len` bytes written and notifies the
/// driver if it wants to be.
fn complete(vring: &Vring, q: usize, head: u16, len: u32) {
    let mut state = vring.get_mut();
    if let Err(e) = state.add_used(head, len) {
        tracing::warn!(
            queue = q,
            head,
            "virtio-blk answer not added to the used ring: {e}"
        );
        return;
    }
    match state.needs_notification() {
        Ok(false) => {}
        Ok(true) | Err(_) => {
            if let Err(e) = state.signal_used_queue() {
                tracing::warn!(queue = q, "virtio-blk interrupt not sent: {e}");
            }
        }
    }
}
