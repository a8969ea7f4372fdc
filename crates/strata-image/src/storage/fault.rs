//! A fault-injecting backend for crash and error tests.
//!
//! It keeps two images: the *live* bytes every read sees, and the *durable*
//! bytes a power cut would leave (what was flushed). Writes since the last
//! flush are kept in order, so a test can build the image a crash leaves with
//! none, all or any subset of them applied (a disk cache may reorder).
//! It can also fail the Nth write or every flush; after an injected failure
//! every later write and flush fails too, as if the process had died there.

use parking_lot::Mutex;
use std::sync::Arc;

use super::Storage;
use crate::error::{Error, Result};

/// What to inject.
#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    /// Fail the write with this 0-based index (counting every write_at,
    /// write_zeroes, punch_hole and set_len), and everything after it.
    pub fail_write: Option<u64>,
    /// Fail every flush.
    pub fail_flush: bool,
    /// The injected write failure is transient: that one write fails, the
    /// storage stays alive and later writes succeed.
    pub transient: bool,
    /// Fail the flush with this 0-based index (its writes stay unflushed),
    /// and everything after it: a power cut just before that flush.
    pub fail_flush_at: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    writes: u64,
    flushes: u64,
    dead: bool,
    config: FaultConfig,
}

#[derive(Clone, Debug)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn apply(image: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write(off, bytes) => {
            let end = *off as usize + bytes.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*off as usize..end].copy_from_slice(bytes);
        }
        Pending::SetLen(len) => image.resize(*len as usize, 0),
    }
}

/// A storage in memory that can fail and crash on demand. Clones share state.
#[derive(Clone, Debug)]
pub struct FaultStorage {
    state: Arc<Mutex<State>>,
    name: String,
}

impl FaultStorage {
    /// A storage starting with `bytes` (taken as durable).
    pub fn new(name: &str, bytes: Vec<u8>, config: FaultConfig) -> Self {
        let state = State {
            live: bytes.clone(),
            durable: bytes,
            config,
            ..State::default()
        };
        FaultStorage {
            state: Arc::new(Mutex::new(state)),
            name: name.to_string(),
        }
    }

    /// Number of writes issued so far (including the failed one).
    pub fn writes(&self) -> u64 {
        self.state.lock().writes
    }

    /// Number of flushes issued so far (including a failed one).
    pub fn flushes(&self) -> u64 {
        self.state.lock().flushes
    }

    /// True once a fault has been injected.
    pub fn failed(&self) -> bool {
        self.state.lock().dead
    }

    /// Changes what to inject from now on (the write counter is kept).
    pub fn set_config(&self, config: FaultConfig) {
        self.state.lock().config = config;
    }

    /// The image a crash leaves now: the durable bytes plus the unflushed
    /// writes for which `keep(index)` is true, applied in order.
    pub fn crash_image(&self, mut keep: impl FnMut(usize) -> bool) -> Vec<u8> {
        let st = self.state.lock();
        let mut image = st.durable.clone();
        for (i, op) in st.pending.iter().enumerate() {
            if keep(i) {
                apply(&mut image, op);
            }
        }
        image
    }

    /// The live bytes (what a reader sees now).
    pub fn live_image(&self) -> Vec<u8> {
        self.state.lock().live.clone()
    }

    fn record(&self, op: Pending, offset: u64) -> Result<()> {
        let mut st = self.state.lock();
        let index = st.writes;
        st.writes += 1;
        if st.dead || st.config.fail_write == Some(index) {
            st.dead = !st.config.transient;
            return Err(Error::io(&self.name, "write", offset, injected()));
        }
        apply(&mut st.live, &op);
        st.pending.push(op);
        Ok(())
    }
}

fn injected() -> std::io::Error {
    std::io::Error::other("injected fault")
}

impl Storage for FaultStorage {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let st = self.state.lock();
        buf.fill(0);
        let len = st.live.len() as u64;
        if offset < len {
            let n = ((len - offset) as usize).min(buf.len());
            buf[..n].copy_from_slice(&st.live[offset as usize..offset as usize + n]);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.record(Pending::Write(offset, buf.to_vec()), offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.record(Pending::Write(offset, vec![0; len as usize]), offset)
    }

    fn flush(&self) -> Result<()> {
        let mut st = self.state.lock();
        let index = st.flushes;
        st.flushes += 1;
        if st.dead || st.config.fail_flush || st.config.fail_flush_at == Some(index) {
            st.dead = true;
            return Err(Error::io(&self.name, "flush", 0, injected()));
        }
        let pending = std::mem::take(&mut st.pending);
        for op in &pending {
            apply(&mut st.durable, op);
        }
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        Ok(self.state.lock().live.len() as u64)
    }

    fn set_len(&self, len: u64) -> Result<()> {
        self.record(Pending::SetLen(len), len)
    }
}
