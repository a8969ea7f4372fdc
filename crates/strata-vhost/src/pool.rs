//! The I/O threads of one queue: they run requests against the image and
//! answer them, so that a queue has many requests in flight at once while
//! its own thread only takes requests off the ring. The threads get the
//! stack image I/O through a deep backing chain needs
//! ([`strata_image::chain::io_thread`]).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Work for an I/O thread. It gets the thread's reusable bounce buffer.
pub(crate) type Job = Box<dyn FnOnce(&mut Vec<u8>) + Send>;

/// A fixed set of threads taking jobs in order from one channel.
pub(crate) struct IoPool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl IoPool {
    /// Starts `threads` threads named `name`.
    pub(crate) fn new(name: &str, threads: usize) -> Result<IoPool> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut pool = IoPool {
            tx: Some(tx),
            threads: Vec::with_capacity(threads),
        };
        for _ in 0..threads {
            let rx = rx.clone();
            let handle = strata_image::chain::io_thread()
                .name(name.to_string())
                .spawn(move || worker(&rx))
                .map_err(|source| Error::Resource {
                    what: "an I/O thread",
                    source,
                })?;
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    /// Queues a job; false when the pool is shutting down.
    pub(crate) fn submit(&self, job: Job) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    let mut scratch = Vec::new();
    loop {
        let job = rx.lock().recv();
        match job {
            Ok(job) => {
                // A job that panics loses its request (its in-flight ticket
                // is released as it unwinds), not the thread.
                let run = std::panic::AssertUnwindSafe(|| job(&mut scratch));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("a virtio-blk request panicked; it stays unanswered");
                    scratch = Vec::new();
                }
            }
            Err(_) => return,
        }
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        // Closing the channel ends each thread once the queued jobs ran.
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
