//! Helpers shared by the unit tests: guest memory, request headers,
//! images in memory.

use std::sync::Arc;

use strata_image::qcow2::{self, Qcow2};
use strata_image::raw::RawImage;
use strata_image::storage::{MemoryStorage, Storage};
use strata_image::Image;
use vm_memory::bitmap::Bitmap;
use vm_memory::mmap::NewBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::Config;
use crate::device::Limits;

/// Guest memory size of the tests' single region at 0.
pub const MEM_SIZE: u64 = 16 << 20;

/// Guest memory: one region of 16 MiB at address 0.
pub fn memory<B: Bitmap + NewBitmap>() -> GuestMemoryMmap<B> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// Guest memory of the same size as [`memory`] in four separately mapped
/// 4 MiB regions, contiguous in guest-physical space: a buffer across 4, 8
/// or 12 MiB lies in two host mappings.
pub fn regions<B: Bitmap + NewBitmap>() -> GuestMemoryMmap<B> {
    let ranges: Vec<_> = (0..4u64)
        .map(|i| (GuestAddress(i * (MEM_SIZE / 4)), (MEM_SIZE / 4) as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

/// Writes a request header (type, sector) at `addr`.
pub fn header<M: Bytes<GuestAddress>>(mem: &M, addr: u64, kind: u32, sector: u64)
where
    M::E: std::fmt::Debug,
{
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
}

/// Writes discard/write-zeroes segments (sector, sectors, flags) at `addr`.
pub fn segments<M: Bytes<GuestAddress>>(mem: &M, addr: u64, segs: &[(u64, u32, u32)])
where
    M::E: std::fmt::Debug,
{
    let mut raw = Vec::new();
    for &(sector, n, flags) in segs {
        raw.extend_from_slice(&sector.to_le_bytes());
        raw.extend_from_slice(&n.to_le_bytes());
        raw.extend_from_slice(&flags.to_le_bytes());
    }
    mem.write_slice(&raw, GuestAddress(addr)).unwrap();
}

/// Limits of a 1 MiB writable disk with 512-byte blocks.
pub fn limits() -> Limits {
    Limits::new(&Config::default(), 1 << 20)
}

/// A writable raw image of `size` bytes in memory, and its storage.
pub fn raw_image(size: u64) -> (Arc<dyn Image>, MemoryStorage) {
    let st = MemoryStorage::from_bytes("mem.raw", vec![0u8; size as usize]);
    let image = RawImage::open(Arc::new(st.clone()), true).unwrap();
    (Arc::new(image), st)
}

/// A writable qcow2 image of `size` bytes in memory (64 KiB clusters).
pub fn qcow2_image(size: u64) -> Arc<dyn Image> {
    let st = MemoryStorage::new("mem.qcow2");
    qcow2::create(
        &st,
        &qcow2::CreateOptions {
            size,
            ..Default::default()
        },
    )
    .unwrap();
    let st: Arc<dyn Storage> = Arc::new(st);
    let opts = qcow2::OpenOptions {
        writable: true,
        lock: false,
        ..Default::default()
    };
    Arc::new(Qcow2::open(st, None, &opts).unwrap())
}

/// One call a [`Tapped`] image sees before passing it on.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    /// `read`, `write`, `zero`, `discard` or `flush`.
    pub op: &'static str,
    /// The disk offset (0 for a flush).
    pub offset: u64,
    /// Bytes concerned.
    pub len: u64,
    /// The host address of the caller's buffer (reads and writes; else 0).
    pub buf: usize,
}

/// What a [`Tapped`] image does besides passing calls on.
pub trait Tap: Send + Sync + std::fmt::Debug {
    /// Sees each data call before the image runs it (may record it, wait,
    /// sleep or panic).
    fn seen(&self, call: Call);

    /// The image's backing chain (none by default).
    fn below(&self) -> Option<&Arc<dyn Image>> {
        None
    }
}

/// An image that shows every data call to its [`Tap`], then runs it on
/// `inner`: the tests' spies, slow, held and panicking images. Derefs to
/// its tap.
#[derive(Debug)]
pub struct Tapped<T: Tap> {
    name: &'static str,
    inner: Arc<dyn Image>,
    tap: T,
}

impl<T: Tap> Tapped<T> {
    /// `inner` as `name`, calls shown to `tap`.
    pub fn new(name: &'static str, inner: Arc<dyn Image>, tap: T) -> Tapped<T> {
        Tapped { name, inner, tap }
    }

    /// The image below the tap.
    pub fn inner(&self) -> &Arc<dyn Image> {
        &self.inner
    }
}

impl<T: Tap> std::ops::Deref for Tapped<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.tap
    }
}

impl<T: Tap> std::ops::DerefMut for Tapped<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.tap
    }
}

impl<T: Tap> Tapped<T> {
    fn see(&self, op: &'static str, offset: u64, len: u64, buf: usize) {
        self.tap.seen(Call {
            op,
            offset,
            len,
            buf,
        });
    }
}

impl<T: Tap> Image for Tapped<T> {
    fn path(&self) -> &str {
        self.name
    }
    fn format(&self) -> strata_image::Format {
        self.inner.format()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn writable(&self) -> bool {
        self.inner.writable()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> strata_image::Result<()> {
        self.see("read", offset, buf.len() as u64, buf.as_ptr() as usize);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> strata_image::Result<()> {
        self.see("write", offset, buf.len() as u64, buf.as_ptr() as usize);
        self.inner.write_at(buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> strata_image::Result<()> {
        self.see("zero", offset, len, 0);
        self.inner.write_zeroes(offset, len, unmap)
    }
    fn discard(&self, offset: u64, len: u64) -> strata_image::Result<()> {
        self.see("discard", offset, len, 0);
        self.inner.discard(offset, len)
    }
    fn flush(&self) -> strata_image::Result<()> {
        self.see("flush", 0, 0, 0);
        self.inner.flush()
    }
    fn resize(&self, new_size: u64) -> strata_image::Result<()> {
        self.inner.resize(new_size)
    }
    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> strata_image::Result<Vec<strata_image::Extent>> {
        self.inner.block_status(offset, len)
    }
    fn backing(&self) -> Option<&Arc<dyn Image>> {
        self.tap.below()
    }
    fn actual_size(&self) -> strata_image::Result<u64> {
        self.inner.actual_size()
    }
}

/// Holds reads while held: for tests of what waits for requests in flight.
#[derive(Debug)]
pub struct Hold {
    held: parking_lot::Mutex<bool>,
    released: parking_lot::Condvar,
    /// Reads that started.
    pub reads: std::sync::atomic::AtomicUsize,
}

/// An image whose reads wait while it is held.
pub type HeldImage = Tapped<Hold>;

impl Tap for Hold {
    fn seen(&self, call: Call) {
        if call.op != "read" {
            return;
        }
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut held = self.held.lock();
        while *held {
            self.released.wait(&mut held);
        }
    }
}

impl Hold {
    /// `inner`, held.
    pub fn image(inner: Arc<dyn Image>) -> Arc<HeldImage> {
        let hold = Hold {
            held: parking_lot::Mutex::new(true),
            released: parking_lot::Condvar::new(),
            reads: Default::default(),
        };
        Arc::new(Tapped::new("held", inner, hold))
    }

    /// Lets every waiting and future read go.
    pub fn release(&self) {
        *self.held.lock() = false;
        self.released.notify_all();
    }
}
