//! One request queue: taking requests off its ring (on the queue's own
//! thread, under the ring's lock) and answering them. Small reads and
//! writes run right there, a batch at a time, with their answers put in the
//! used ring together and the driver notified once (as it asked to be,
//! `VIRTIO_RING_F_EVENT_IDX`): page-cache I/O takes microseconds, less than
//! handing a request to another thread. The rest (large requests, flushes,
//! discards, writes in writethrough mode, and whatever a batch holds past
//! its time budget) go to the queue's I/O threads.
//!
//! Answers enter the used ring in the order their requests were taken,
//! whatever order they complete in ([`Order`]): then the used index alone
//! says which requests are done — every one before it, none after. That is
//! what QEMU relies on when its backend dies: it resumes the ring at the
//! used index, so a restarted backend takes again exactly the requests that
//! had no answer (running one twice is harmless: the same data again), and
//! the guest loses none. Answered out of order, a request taken before one
//! already answered would be skipped for ever and its guest hang. For the
//! same reason writes that mapped new clusters are answered only once the
//! image's metadata is written back ([`settle`]): a daemon killed after
//! answering must not take completed writes with it.
//!
//! While the driver keeps the queue busy (a batch held more than one
//! request, or the last poll found more), the thread looks at the empty
//! ring every [`POLL_STEP`] for up to `Config::ring_poll_us` before asking
//! to be notified again: requests the driver adds meanwhile cost it no
//! notification, which is dear for an emulated guest, and are taken as one
//! batch. A queue served one request at a time never polls.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_image::Image;
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VringMutex, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::atomic::GuestMemoryLoadGuard;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::config::Config;
use crate::device::Limits;
use crate::error::Result;
use crate::execute::{answer, failed, Context};
use crate::gate::{GateInner, Ticket};
use crate::pool::{IoPool, Job};
use crate::request::{parse, Action, Op, Parsed, Request};

/// Guest memory as the backend maps it, with the dirty-log bitmap.
pub(crate) type Memory = GuestMemoryMmap<BitmapMmapRegion>;
/// Guest memory that the frontend may remap.
pub(crate) type AtomicMemory = GuestMemoryAtomic<Memory>;
/// A snapshot of guest memory, kept while requests use it.
type MemoryGuard = GuestMemoryLoadGuard<Memory>;
/// A descriptor chain taken off a ring.
type Chain = DescriptorChain<MemoryGuard>;
/// A vring as the framework keeps it.
pub(crate) type Vring = VringMutex<AtomicMemory>;

/// The deepest backing chain whose I/O runs on the queue's own thread: the
/// framework starts that thread with the standard 2 MiB stack, not the one
/// a chain of [`strata_image::chain::MAX_CHAIN_DEPTH`] needs
/// (`inline_io_through_the_deepest_inline_chain_fits_the_worker_stack`
/// runs I/O through this many qcow2 layers on such a stack; a release
/// build needs less than 96 KiB for it).
pub(crate) const INLINE_MAX_DEPTH: usize = 16;

/// How long a batch may spend running requests on the queue's thread
/// before the rest of it goes to the I/O threads: a slow image (a cache
/// miss on a disk) holds the ring for at most one request past this.
pub(crate) const INLINE_BUDGET: Duration = Duration::from_micros(500);

/// How often a busy queue's thread looks at its empty ring.
pub(crate) const POLL_STEP: Duration = Duration::from_micros(10);

/// The timer slack the queue's thread asks for, so that its sleeps of
/// [`POLL_STEP`] last about that (Linux's default slack is 50 µs).
const POLL_SLACK_NS: libc::c_ulong = 1_000;

/// One queue's state that outlives connections.
pub(crate) struct Queue {
    index: usize,
    /// Held while taking requests off the ring and running the small ones,
    /// so that stopping the ring can wait for a pass to finish.
    taking: Mutex<Taker>,
    pool: IoPool,
    /// Reads and writes up to this many bytes run on the queue's thread.
    inline_max: u64,
    /// How long a busy queue's thread polls its empty ring.
    poll: Duration,
    /// Requests taken so far: the next one's place in the answer order.
    taken: AtomicU64,
    /// Answers waiting for those of earlier requests.
    order: Arc<Mutex<Order>>,
}

/// The answers of one queue, put in the used ring in the order their
/// requests were taken.
#[derive(Debug, Default)]
pub(crate) struct Order {
    /// The place of the next answer the used ring takes.
    next: u64,
    /// Answers that came early: place → (head, used length).
    early: BTreeMap<u64, (u16, u32)>,
}

/// One answer: the request's place in the order, its head, the used length.
pub(crate) type Answer = (u64, u16, u32);

/// What a pass keeps from one batch to the next.
#[derive(Default)]
struct Taker {
    /// The bounce buffer of requests run on the queue's thread.
    scratch: Vec<u8>,
    /// Answers of this batch not yet in the used ring.
    answered: Vec<Answer>,
    /// Their in-flight tickets, released once the answers are in the ring.
    tickets: Vec<Ticket>,
    /// The driver keeps the queue busy: poll before asking for a kick.
    busy: bool,
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
            taking: Mutex::new(Taker::default()),
            pool: IoPool::new(&format!("vhost-blk-io{index}"), config.io_threads)?,
            inline_max: u64::from(config.inline_max),
            poll: Duration::from_micros(u64::from(config.ring_poll_us)),
            taken: AtomicU64::new(0),
            order: Arc::new(Mutex::new(Order::default())),
        })
    }

    /// Takes every available request off `vring` and answers it, a batch
    /// at a time, until the ring is empty with notifications re-enabled,
    /// or the gate is paused.
    pub(crate) fn take_requests(&self, pass: &Pass<'_>, vring: &Vring) {
        let q = self.index;
        let mut taker = self.taking.lock();
        let mut polled = false;
        loop {
            let memory = pass.memory.memory();
            let mut chains = Vec::new();
            let paused = {
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
                            let place = self.taken.fetch_add(1, Ordering::Relaxed);
                            chains.push((chain, ticket, place));
                        }
                        None => break,
                    }
                }
                // Notifications stay off while there is work, while polling
                // and while paused (resuming takes the ring again and turns
                // them on); they go on once the ring is found empty.
                let poll = taker.busy && !polled && !self.poll.is_zero();
                if chains.is_empty() && !paused && !poll {
                    match state.enable_notification() {
                        Ok(true) => continue,
                        _ => return,
                    }
                }
                paused
            };
            if chains.is_empty() && !paused {
                polled = true;
                taker.busy = poll_ring(vring, &memory, self.poll);
                continue;
            }
            polled = false;
            if chains.len() > 1 {
                taker.busy = true;
            }
            self.answer_batch(pass, vring, &memory, chains, &mut taker);
            if paused {
                return;
            }
        }
    }

    /// Parses a batch of chains, hands the long requests to the I/O threads
    /// and runs the short ones here (until the batch's time budget is
    /// spent), then puts their answers in the used ring together.
    fn answer_batch(
        &self,
        pass: &Pass<'_>,
        vring: &Vring,
        memory: &MemoryGuard,
        chains: Vec<(Chain, Ticket, u64)>,
        taker: &mut Taker,
    ) {
        let q = self.index;
        let image = pass.gate.image();
        let limits = Limits::new(pass.config, image.size());
        let inline = self.inline_max > 0 && chain_depth(&*image) <= INLINE_MAX_DEPTH;
        let ctx = Context {
            serial: &pass.config.serial_bytes(),
            writethrough: pass.writethrough,
        };
        let mut here = Vec::new();
        let mut jobs = Vec::new();
        let at = |place| At {
            vring: vring.clone(),
            order: self.order.clone(),
            q,
            place,
        };
        for (chain, ticket, place) in chains {
            let head = chain.head_index();
            let descs = chain.map(|d| (d.addr(), d.len(), d.is_write_only()));
            match parse(&**memory, head, descs, &limits) {
                Parsed::Request(req) if inline && self.quick(&req, ctx.writethrough) => {
                    here.push((req, ticket, place));
                }
                Parsed::Request(req) => {
                    jobs.push(job(req, ticket, &image, memory, ctx, at(place)));
                }
                Parsed::Unanswerable { head, reason } => {
                    tracing::warn!(queue = q, head, reason, "virtio-blk chain dropped");
                    taker.answered.push((place, head, 0));
                    taker.tickets.push(ticket);
                }
            }
        }
        // Long requests start first, alongside the short ones.
        if !jobs.is_empty() {
            self.pool.submit(jobs);
        }
        let started = Instant::now();
        let mut rest = here.into_iter();
        let mut wrote = false;
        for (req, ticket, place) in rest.by_ref() {
            let scratch = &mut taker.scratch;
            let len = answer_guarded(memory, &*image, &req, ctx, scratch, q);
            wrote |= changes_image(&req);
            taker.answered.push((place, req.head, len));
            taker.tickets.push(ticket);
            if started.elapsed() > INLINE_BUDGET {
                break;
            }
        }
        if wrote {
            settle(&*image, q);
        }
        let late: Vec<Job> = rest
            .map(|(req, ticket, place)| job(req, ticket, &image, memory, ctx, at(place)))
            .collect();
        if !late.is_empty() {
            self.pool.submit(late);
        }
        publish(vring, &self.order, q, &taker.answered);
        taker.answered.clear();
        // In the used ring: no longer in flight.
        taker.tickets.clear();
    }

    /// True when `req` runs on the queue's thread: a refusal, an ID, or a
    /// read or write (not in writethrough mode, which flushes) of at most
    /// `inline_max` bytes.
    fn quick(&self, req: &Request, writethrough: bool) -> bool {
        match &req.action {
            Action::Fail { .. } | Action::Run(Op::GetId { .. }) => true,
            Action::Run(Op::Read { len, .. }) => *len <= self.inline_max,
            Action::Run(Op::Write { len, .. }) => !writethrough && *len <= self.inline_max,
            Action::Run(Op::Flush | Op::Discard { .. } | Op::WriteZeroes { .. }) => false,
        }
    }

    /// Waits until a pass taking requests has finished and every request of
    /// this queue is answered (for `GET_VRING_BASE`, after the ring was
    /// marked not ready, so nothing more is taken).
    pub(crate) fn stop(&self, gate: &GateInner) {
        drop(self.taking.lock());
        gate.wait_queue_idle(self.index);
        // Every request is answered, or was dropped unrun by a device
        // shutting down: the next ring starts the order afresh.
        let mut order = self.order.lock();
        order.next = self.taken.load(Ordering::Relaxed);
        order.early.clear();
    }
}

/// True for a request that changes the image (write, write-zeroes,
/// discard).
fn changes_image(req: &Request) -> bool {
    matches!(
        req.action,
        Action::Run(Op::Write { .. } | Op::WriteZeroes { .. } | Op::Discard { .. })
    )
}

/// Before writes are answered: if they changed the image's structures
/// (a new cluster mapped) and those changes are only in memory, flush
/// them. A daemon killed after answering would otherwise lose writes the
/// guest saw complete, and the guest, which outlives the daemon, would go
/// on as if they were there (its next flush answered by the new daemon).
/// Writes into clusters already mapped need nothing.
fn settle(image: &dyn Image, q: usize) {
    if image.unwritten_metadata() {
        if let Err(e) = image.flush() {
            tracing::error!(queue = q, "writing back the image's metadata failed: {e}");
        }
    }
}

/// Where a job's answer goes: its queue's ring and order, and its place.
struct At {
    vring: Vring,
    order: Arc<Mutex<Order>>,
    q: usize,
    place: u64,
}

/// Runs `req` and returns its used length; a run that panics is answered
/// `IOERR` (its answer keeps its place in the order, so later ones are not
/// held back for ever).
fn answer_guarded(
    memory: &Memory,
    image: &dyn Image,
    req: &Request,
    ctx: Context<'_>,
    scratch: &mut Vec<u8>,
    q: usize,
) -> u32 {
    let run = std::panic::AssertUnwindSafe(|| answer(memory, image, req, ctx, scratch));
    match std::panic::catch_unwind(run) {
        Ok(len) => len,
        Err(_) => {
            tracing::error!(
                queue = q,
                head = req.head,
                "a virtio-blk request panicked; answered IOERR"
            );
            *scratch = Vec::new();
            failed(memory, req)
        }
    }
}

/// `req` as a job for an I/O thread, which answers it when done.
fn job(
    req: Request,
    ticket: Ticket,
    image: &Arc<dyn Image>,
    memory: &MemoryGuard,
    ctx: Context<'_>,
    at: At,
) -> Job {
    let (image, memory) = (image.clone(), memory.clone());
    let (serial, writethrough) = (*ctx.serial, ctx.writethrough);
    Box::new(move |scratch: &mut Vec<u8>| {
        let ctx = Context {
            serial: &serial,
            writethrough,
        };
        let len = answer_guarded(&memory, &*image, &req, ctx, scratch, at.q);
        if changes_image(&req) {
            settle(&*image, at.q);
        }
        publish(&at.vring, &at.order, at.q, &[(at.place, req.head, len)]);
        // Dropped unrun (the device shutting down), it still leaves the count.
        drop(ticket);
    })
}

/// Looks at the ring every [`POLL_STEP`] for up to `limit`, notifications
/// off; true as soon as the driver has made a request available.
fn poll_ring(vring: &Vring, memory: &Memory, limit: Duration) -> bool {
    fine_timer_slack();
    let deadline = Instant::now() + limit;
    loop {
        std::thread::sleep(POLL_STEP);
        let state = vring.get_ref();
        let queue = state.get_queue();
        if !queue.ready() || !state.is_enabled() {
            return false;
        }
        match queue.avail_idx(memory, Ordering::Acquire) {
            Ok(idx) if idx.0 != queue.next_avail() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        drop(state);
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// Asks for [`POLL_SLACK_NS`] of timer slack, once per thread. It changes
/// only how late this thread's timed sleeps may end (the framework's event
/// loop waits without a timeout).
fn fine_timer_slack() {
    thread_local!(static SET: Cell<bool> = const { Cell::new(false) });
    if !SET.get() {
        SET.set(true);
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and changes only
        // the calling thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, POLL_SLACK_NS) };
    }
}

/// Layers in `image`'s chain, itself included.
fn chain_depth(image: &dyn Image) -> usize {
    let mut depth = 1;
    let mut below = image.backing();
    while let Some(b) = below {
        depth += 1;
        below = b.backing();
    }
    depth
}

/// Takes `answers` into the order and puts every answer whose turn has
/// come in the used ring (under the order's lock, so they enter in order).
fn publish(vring: &Vring, order: &Mutex<Order>, q: usize, answers: &[Answer]) {
    if answers.is_empty() {
        return;
    }
    let mut order = order.lock();
    let mut ready = Vec::with_capacity(answers.len());
    for &(place, head, len) in answers {
        if place == order.next {
            ready.push((head, len));
            order.next += 1;
        } else {
            order.early.insert(place, (head, len));
        }
    }
    while let Some(answer) = {
        let next = order.next;
        order.early.remove(&next)
    } {
        ready.push(answer);
        order.next += 1;
    }
    complete(vring, q, &ready);
}

/// Puts answers (head, used length) in the used ring and notifies the
/// driver once, if it wants to be: with `EVENT_IDX`, when the used index
/// passed the event index it set since the last notification.
fn complete(vring: &Vring, q: usize, answers: &[(u16, u32)]) {
    if answers.is_empty() {
        return;
    }
    let mut state = vring.get_mut();
    for &(head, len) in answers {
        if let Err(e) = state.add_used(head, len) {
            tracing::warn!(
                queue = q,
                head,
                "virtio-blk answer not added to the used ring: {e}"
            );
        }
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

#[cfg(test)]
mod tests;
