//! A block job's progress, cancel and bandwidth limit, shared between the
//! thread that copies and whoever asks about the job.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// The longest sleep between two looks at the cancel flag.
const NAP: Duration = Duration::from_millis(50);

/// Progress, cancel and pacing of one job.
#[derive(Debug)]
pub struct Control {
    cancelled: AtomicBool,
    done: AtomicU64,
    total: AtomicU64,
    /// Bytes per second (0: no limit), with when pacing (re)started and
    /// the bytes moved since.
    pace: Mutex<(u64, Instant, u64)>,
}

impl Control {
    /// A job limited to `bandwidth` bytes per second (0: no limit).
    pub fn new(bandwidth: u64) -> Control {
        Control {
            cancelled: AtomicBool::new(false),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            pace: Mutex::new((bandwidth, Instant::now(), 0)),
        }
    }

    /// Asks the copy to stop at its next chunk.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// True once [`Control::cancel`] was called.
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Changes the bandwidth limit (bytes per second, 0: none).
    pub fn set_bandwidth(&self, bandwidth: u64) {
        *self.pace.lock() = (bandwidth, Instant::now(), 0);
    }

    /// The bandwidth limit (bytes per second, 0: none).
    pub fn bandwidth(&self) -> u64 {
        self.pace.lock().0
    }

    /// `(bytes done, bytes known to do)`, as `virsh blockjob --info` shows.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    /// Adds `bytes` to what the job has to do.
    pub fn add_total(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Fails (naming `path`) once the job was cancelled.
    pub fn check(&self, path: &str) -> Result<()> {
        if self.cancelled() {
            return Err(Error::invalid(path, "the block job was cancelled"));
        }
        Ok(())
    }

    /// Counts `bytes` done that cost no copy (zeros): not paced.
    pub fn skip(&self, path: &str, bytes: u64) -> Result<()> {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        self.check(path)
    }

    /// Counts `bytes` moved, then sleeps as long as the bandwidth limit
    /// asks (waking to look at the cancel flag); fails once cancelled.
    pub fn advance(&self, path: &str, bytes: u64) -> Result<()> {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        let due = {
            let mut p = self.pace.lock();
            p.2 += bytes;
            match p.0 {
                0 => None,
                rate => Some(p.1 + Duration::from_secs_f64(p.2 as f64 / rate as f64)),
            }
        };
        if let Some(due) = due {
            loop {
                self.check(path)?;
                let now = Instant::now();
                if now >= due {
                    break;
                }
                std::thread::sleep((due - now).min(NAP));
            }
        }
        self.check(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_paces_and_cancel_stops() {
        let c = Control::new(10 << 20);
        let t = Instant::now();
        for _ in 0..4 {
            c.advance("x", 1 << 20).unwrap();
        }
        // 4 MiB at 10 MiB/s: 0.4 s at least.
        assert!(
            t.elapsed() >= Duration::from_millis(380),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(c.progress().0, 4 << 20);
        c.cancel();
        assert!(c.advance("x", 1).is_err());
        let free = Control::new(0);
        let t = Instant::now();
        free.advance("x", 1 << 40).unwrap();
        assert!(t.elapsed() < Duration::from_millis(100));
    }
}
