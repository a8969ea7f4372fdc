//! The threads that write old data into a view's scratch: a guest write
//! hands its copy to one of them and waits for the answer no longer than
//! the view's timeout, so a slow scratch breaks the view, never stalls the
//! guest beyond the bound. A few threads per view, started with it and
//! gone with it (they end when the view's last handle drops the sender).

use std::sync::{mpsc, Arc, Mutex};

use crate::error::{Error, Result};
use crate::image::Image;

/// Threads per view: copies of different guest writes overlap.
const THREADS: usize = 4;

/// Old data to write: `(offset, bytes)` runs, and where the answer goes.
struct Job {
    runs: Vec<(u64, Vec<u8>)>,
    reply: mpsc::Sender<std::result::Result<(), String>>,
}

/// The copy threads of one view.
#[derive(Debug)]
pub(crate) struct Copier {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Copier {
    /// Starts the threads writing to `scratch`.
    pub(crate) fn start(scratch: Arc<dyn Image>) -> Result<Copier> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..THREADS {
            let (rx, target) = (rx.clone(), scratch.clone());
            std::thread::Builder::new()
                .name("strata-cbw".into())
                .spawn(move || loop {
                    let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    };
                    let r = job
                        .runs
                        .iter()
                        .try_for_each(|(off, buf)| target.write_at(buf, *off))
                        .map_err(|e| format!("writing the scratch: {e}"));
                    let _ = job.reply.send(r);
                })
                .map_err(|e| {
                    Error::invalid(scratch.path(), format!("starting a copy thread: {e}"))
                })?;
        }
        Ok(Copier {
            jobs: Mutex::new(tx),
        })
    }

    /// Writes `runs` into the scratch; an error when a write fails or the
    /// answer takes longer than `timeout`.
    pub(crate) fn write(
        &self,
        runs: Vec<(u64, Vec<u8>)>,
        timeout: std::time::Duration,
    ) -> std::result::Result<(), String> {
        let (reply, answer) = mpsc::channel();
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Job { runs, reply })
            .map_err(|_| "the copy threads have ended".to_string())?;
        match answer.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "a copy into the scratch took longer than {timeout:?}"
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("the copy ended without a word".into())
            }
        }
    }
}
