//! The gate in front of a disk's queues: pause (take no new guest requests
//! on any queue), drain (wait for the requests in flight), resume, and swap
//! the served image while paused and drained. Live snapshots quiesce every
//! disk of a machine with it; `GET_VRING_BASE` waits on the same in-flight
//! counts for one queue.
//!
//! A request is in flight from just before it is taken off the ring until
//! its answer is in the used ring. Taking one first counts it, then checks
//! for a pause (both sequentially consistent), so a drain that starts after
//! a pause never misses a request that slipped past it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use strata_image::Image;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::error::{Error, Result};

/// The shared state behind a [`Gate`], also read by the queue threads.
pub(crate) struct GateInner {
    pauses: AtomicUsize,
    in_flight: Box<[AtomicUsize]>,
    /// Requests taken per queue since the start.
    taken: Box<[AtomicU64]>,
    idle_lock: Mutex<()>,
    idle: Condvar,
    image: RwLock<Arc<dyn Image>>,
    readonly: bool,
    /// One event per queue, written on resume so the queue's thread takes
    /// the requests that arrived while paused.
    wakers: Box<[(EventConsumer, EventNotifier)]>,
}

impl std::fmt::Debug for GateInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("pauses", &self.pauses.load(Ordering::Relaxed))
            .field("in_flight", &self.total())
            .field("image", &self.image.read().path())
            .finish()
    }
}

impl GateInner {
    /// A gate for `queues` queues in front of `image`.
    pub(crate) fn new(queues: usize, image: Arc<dyn Image>, readonly: bool) -> Result<Arc<Self>> {
        let wakers = (0..queues)
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| Error::Resource {
                what: "a queue wake-up event",
                source,
            })?;
        Ok(Arc::new(GateInner {
            pauses: AtomicUsize::new(0),
            in_flight: (0..queues).map(|_| AtomicUsize::new(0)).collect(),
            taken: (0..queues).map(|_| AtomicU64::new(0)).collect(),
            idle_lock: Mutex::new(()),
            idle: Condvar::new(),
            image: RwLock::new(image),
            readonly,
            wakers: wakers.into_boxed_slice(),
        }))
    }

    /// Counts a request of queue `q` about to be taken off the ring; false
    /// (and nothing counted) while paused.
    pub(crate) fn enter(&self, q: usize) -> bool {
        self.in_flight[q].fetch_add(1, Ordering::SeqCst);
        if self.pauses.load(Ordering::SeqCst) > 0 {
            self.exit(q);
            return false;
        }
        true
    }

    /// Like [`GateInner::enter`], returning a ticket that counts the request
    /// out when dropped (answered, or lost to a panic).
    pub(crate) fn ticket(self: &Arc<Self>, q: usize) -> Option<Ticket> {
        self.enter(q).then(|| Ticket {
            gate: self.clone(),
            queue: q,
        })
    }

    /// Counts a request taken off queue `q`'s ring.
    pub(crate) fn count_taken(&self, q: usize) {
        self.taken[q].fetch_add(1, Ordering::Relaxed);
    }

    /// A request of queue `q` is answered (or was never taken).
    pub(crate) fn exit(&self, q: usize) {
        if self.in_flight[q].fetch_sub(1, Ordering::SeqCst) == 1 {
            let _g = self.idle_lock.lock();
            self.idle.notify_all();
        }
    }

    /// Requests in flight on every queue.
    pub(crate) fn total(&self) -> usize {
        self.in_flight
            .iter()
            .map(|n| n.load(Ordering::SeqCst))
            .sum()
    }

    /// Waits until `count()` is zero, at most `timeout` (`None`: forever).
    fn wait_until_zero(&self, count: impl Fn() -> usize, timeout: Option<Duration>) -> Result<()> {
        let start = Instant::now();
        let mut g = self.idle_lock.lock();
        loop {
            let n = count();
            if n == 0 {
                return Ok(());
            }
            match timeout {
                None => self.idle.wait(&mut g),
                Some(t) => {
                    let left = t.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return Err(Error::DrainTimeout {
                            in_flight: n,
                            waited: start.elapsed(),
                        });
                    }
                    self.idle.wait_for(&mut g, left);
                }
            }
        }
    }

    /// Waits for every request of queue `q` to be answered.
    pub(crate) fn wait_queue_idle(&self, q: usize) {
        let _ = self.wait_until_zero(|| self.in_flight[q].load(Ordering::SeqCst), None);
    }

    /// Waits for every request of every queue to be answered.
    pub(crate) fn wait_idle(&self, timeout: Option<Duration>) -> Result<()> {
        self.wait_until_zero(|| self.total(), timeout)
    }

    /// True while some [`Paused`] guard lives.
    pub(crate) fn paused(&self) -> bool {
        self.pauses.load(Ordering::SeqCst) > 0
    }

    /// The image served now.
    pub(crate) fn image(&self) -> Arc<dyn Image> {
        self.image.read().clone()
    }

    /// The event queue `q`'s thread listens to for a resume.
    pub(crate) fn waker(&self, q: usize) -> &EventConsumer {
        &self.wakers[q].0
    }

    fn pause(self: &Arc<Self>) -> Paused {
        self.pauses.fetch_add(1, Ordering::SeqCst);
        Paused {
            inner: self.clone(),
            drained: AtomicBool::new(false),
        }
    }

    fn resume(&self) {
        if self.pauses.fetch_sub(1, Ordering::SeqCst) == 1 {
            for (_, notifier) in self.wakers.iter() {
                if let Err(e) = notifier.notify() {
                    tracing::warn!("cannot wake a virtio-blk queue after resume: {e}");
                }
            }
        }
    }
}

/// One request in flight; dropping it counts the request out.
pub(crate) struct Ticket {
    gate: Arc<GateInner>,
    queue: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.exit(self.queue);
    }
}

/// Pauses, drains and resumes a disk's queues; cheap to clone.
#[derive(Clone, Debug)]
pub struct Gate {
    inner: Arc<GateInner>,
}

impl Gate {
    pub(crate) fn new(inner: Arc<GateInner>) -> Gate {
        Gate { inner }
    }

    /// Stops taking new guest requests on every queue until the returned
    /// guard is dropped (pauses nest: the queues run again when the last
    /// guard goes). Requests already taken still run: [`Paused::drain`]
    /// waits for them.
    pub fn pause(&self) -> Paused {
        self.inner.pause()
    }

    /// Pauses, then drains within `timeout`; on a timeout the pause is
    /// undone and the error says how many requests were still running.
    pub fn quiesce(&self, timeout: Duration) -> Result<Paused> {
        let paused = self.pause();
        paused.drain(timeout)?;
        Ok(paused)
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.inner.paused()
    }

    /// Requests taken from the guest and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inner.total()
    }

    /// The image served now.
    pub fn image(&self) -> Arc<dyn Image> {
        self.inner.image()
    }

    /// Requests taken from each queue since the disk was first served.
    pub fn requests_per_queue(&self) -> Vec<u64> {
        self.inner
            .taken
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }
}

/// A pause of the gate; dropping it (or [`Paused::resume`]) resumes.
#[derive(Debug)]
pub struct Paused {
    inner: Arc<GateInner>,
    drained: AtomicBool,
}

impl Paused {
    /// Waits until every request taken before the pause is answered, at
    /// most `timeout`.
    pub fn drain(&self, timeout: Duration) -> Result<()> {
        self.inner.wait_idle(Some(timeout))?;
        self.drained.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Serves `image` from now on and returns the one it replaces. Only
    /// after [`Paused::drain`] (no request may still use the old image). The
    /// guest sees the same disk: the new image must have the same size, and
    /// be writable unless the disk is exported read-only.
    pub fn swap_image(&self, image: Arc<dyn Image>) -> Result<Arc<dyn Image>> {
        if !self.drained.load(Ordering::SeqCst) {
            return Err(Error::NotDrained);
        }
        let mut slot = self.inner.image.write();
        let refuse = |reason: String| Error::Swap {
            old: slot.path().to_string(),
            new: image.path().to_string(),
            reason,
        };
        if image.size() != slot.size() {
            return Err(refuse(format!(
                "its size is {} bytes, the disk's is {}",
                image.size(),
                slot.size()
            )));
        }
        if !self.inner.readonly && !image.writable() {
            return Err(refuse(
                "it is read-only and the disk is exported writable".into(),
            ));
        }
        Ok(std::mem::replace(&mut *slot, image))
    }

    /// Resumes (the same as dropping the guard).
    pub fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.inner.resume();
    }
}
