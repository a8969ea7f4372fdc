//! The I/O threads of one queue: they run requests against the image and
//! answer them, so that a queue has many requests in flight at once while
//! its own thread only takes requests off the ring.
//! The threads get the stack image I/O through a deep backing chain needs
//! ([`strata_image::chain::io_thread`]).
//!
//! Jobs wait in one list; a thread that finishes a job takes the next
//! without sleeping, and only sleeping threads are woken, one per job
//! queued, so a busy pool costs no wake-ups.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

/// Work for an I/O thread. It gets the thread's reusable bounce buffer.
pub(crate) type Job = Box<dyn FnOnce(&mut Vec<u8>) + Send>;

/// A fixed set of threads taking jobs in order from one list.
pub(crate) struct IoPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    sleeping: usize,
    /// Of those, how many were woken and have not run yet.
    woken: usize,
    closed: bool,
}

impl IoPool {
    /// Starts `threads` threads named `name`.
    pub(crate) fn new(name: &str, threads: usize) -> Result<IoPool> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let mut pool = IoPool {
            shared: shared.clone(),
            threads: Vec::with_capacity(threads),
        };
        for _ in 0..threads {
            let shared = shared.clone();
            let handle = strata_image::chain::io_thread()
                .name(name.to_string())
                .spawn(move || worker(&shared))
                .map_err(|source| Error::Resource {
                    what: "an I/O thread",
                    source,
                })?;
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    /// Queues jobs, waking a sleeping thread for each (as many as sleep);
    /// the jobs are dropped unrun when the pool is shutting down.
    pub(crate) fn submit(&self, jobs: impl IntoIterator<Item = Job>) {
        let mut st = self.shared.state.lock();
        if st.closed {
            return;
        }
        let before = st.jobs.len();
        st.jobs.extend(jobs);
        let wanted = st.jobs.len() - before;
        let waiting = st.sleeping - st.woken;
        let wake = wanted.min(waiting);
        st.woken += wake;
        drop(st);
        for _ in 0..wake {
            self.shared.wake.notify_one();
        }
    }
}

fn worker(shared: &Shared) {
    let mut scratch = Vec::new();
    let mut st = shared.state.lock();
    loop {
        if let Some(job) = st.jobs.pop_front() {
            drop(st);
            // A job that panics loses its request (its in-flight ticket is
            // released as it unwinds), not the thread.
            let run = std::panic::AssertUnwindSafe(|| job(&mut scratch));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!("a virtio-blk request panicked; it stays unanswered");
                scratch = Vec::new();
            }
            st = shared.state.lock();
            continue;
        }
        if st.closed {
            return;
        }
        st.sleeping += 1;
        shared.wake.wait(&mut st);
        st.sleeping -= 1;
        // Woken on purpose or not, this thread now looks at the list.
        st.woken = st.woken.saturating_sub(1);
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        // Each thread ends once the queued jobs ran.
        self.shared.state.lock().closed = true;
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;

    fn counting(n: &Arc<AtomicUsize>) -> Job {
        let n = n.clone();
        Box::new(move |_| {
            n.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn every_job_runs_once_however_it_is_submitted() {
        let pool = IoPool::new("t", 3).unwrap();
        let n = Arc::new(AtomicUsize::new(0));
        // Batches while every thread is busy, single jobs while they sleep.
        let (hold, held) = channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let blockers: Vec<Job> = (0..3)
            .map(|_| {
                let held = held.clone();
                Box::new(move |_: &mut Vec<u8>| {
                    let _ = held.lock().recv_timeout(Duration::from_secs(10));
                }) as Job
            })
            .collect();
        pool.submit(blockers);
        pool.submit((0..100).map(|_| counting(&n)));
        for _ in 0..3 {
            hold.send(()).unwrap();
        }
        for i in 0..200 {
            pool.submit([counting(&n)]);
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        drop(pool);
        assert_eq!(n.load(Ordering::SeqCst), 300);
    }

    #[test]
    fn a_panicking_job_loses_itself_not_the_thread() {
        let pool = IoPool::new("t", 1).unwrap();
        let n = Arc::new(AtomicUsize::new(0));
        pool.submit([Box::new(|_: &mut Vec<u8>| panic!("job panics")) as Job]);
        pool.submit([counting(&n), counting(&n)]);
        drop(pool);
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }
}
