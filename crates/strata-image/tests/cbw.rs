//! Copy-before-write views against a model: random guest writes, zeroings
//! and discards through the filter, reads and "done" marks of the view,
//! step by step; every view read equals the disk as it was at the start,
//! every guest read the disk as the guest wrote it; only needed granules
//! are ever copied; a failed copy breaks the view, never the guest; and
//! under many threads at once the view still reads the start exactly.

mod common;
use common::*;
use std::sync::Arc;
use std::time::Duration;
use strata_image::cbw::{self, CbwOptions, CbwView, MIN_GRANULE};
use strata_image::qcow2::CreateOptions;
use strata_image::Image;

const SIZE: u64 = 4 << 20;
const G: u64 = 64 << 10;

/// A qcow2 with random data over most of it, and its contents.
fn source(d: &tempfile::TempDir, seed: u64) -> (Arc<dyn Image>, Vec<u8>) {
    let p = at(d, "disk.qcow2");
    create(
        &p,
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    let img = open_rw(&p);
    let mut model = vec![0u8; SIZE as usize];
    random_writes(img.as_ref(), &mut model, &mut Rng(seed), 40, 200_000);
    (img, model)
}

/// A view's options with a granule of a cluster ([`G`]), what the
/// figures of the tests that use it count in.
fn opts_g(d: &tempfile::TempDir) -> CbwOptions {
    CbwOptions {
        granule: Some(G),
        ..CbwOptions::new(at(d, "scratch.qcow2"))
    }
}

/// Reads `[off, off+len)` of the view and checks it against `start`.
fn check_view(view: &CbwView, start: &[u8], off: u64, len: u64, what: &str) {
    let mut buf = vec![0u8; len as usize];
    view.read_at(&mut buf, off)
        .unwrap_or_else(|e| panic!("{what}: view read {off}+{len}: {e}"));
    assert!(
        buf == start[off as usize..(off + len) as usize],
        "{what}: the view at {off}+{len} is not the start"
    );
}

#[test]
fn random_operations_keep_the_view_at_its_start_and_the_guest_at_its_writes() {
    for seed in 1..=6u64 {
        let d = tmp();
        let (img, start) = source(&d, seed);
        // Granules of a page and of a cluster.
        let gr = if seed > 3 { MIN_GRANULE } else { G };
        let mut opts = CbwOptions::new(at(&d, "scratch.qcow2"));
        opts.granule = Some(gr);
        // Half the runs: an incremental view needing some ranges only.
        let mut rng = Rng(seed * 7919);
        let needed: Option<Vec<(u64, u64)>> = (seed % 2 == 0).then(|| {
            (0..5)
                .map(|_| (rng.below(SIZE - gr), 1 + rng.below(4 * gr)))
                .collect()
        });
        opts.needed = needed.clone();
        let (filter, view) = cbw::start(img.clone(), &opts).unwrap();
        let is_needed = |g: u64| match &needed {
            None => true,
            Some(r) => r
                .iter()
                .any(|&(o, l)| o / gr <= g && g < (o + l).min(SIZE).div_ceil(gr)),
        };
        let mut guest = start.clone();
        // Granules still needed, in the model.
        let mut want: Vec<bool> = (0..SIZE / gr).map(is_needed).collect();
        let mut copied_max = 0u64;
        for step in 0..300 {
            let what = format!("seed {seed} step {step}");
            let len = 1 + rng.below(3 * gr);
            let off = rng.below(SIZE - len);
            match rng.below(10) {
                0..=3 => {
                    let data = pattern(len as usize, rng.next());
                    filter.write_at(&data, off).unwrap();
                    guest[off as usize..(off + len) as usize].copy_from_slice(&data);
                    copied_max += len.div_ceil(gr) * gr + gr;
                }
                4 => {
                    filter.write_zeroes(off, len, rng.below(2) == 0).unwrap();
                    guest[off as usize..(off + len) as usize].fill(0);
                }
                5 => {
                    // A discard may leave data or zeros: read the truth.
                    filter.discard(off, len).unwrap();
                    let mut b = vec![0u8; len as usize];
                    img.read_at(&mut b, off).unwrap();
                    guest[off as usize..(off + len) as usize].copy_from_slice(&b);
                }
                6 => {
                    view.done(off, len).unwrap();
                    let first = off.div_ceil(gr);
                    let last = (off + len) / gr;
                    for g in first..last.max(first) {
                        want[g as usize] = false;
                    }
                }
                _ => {
                    // Read whole still-needed granules of the range.
                    for g in off / gr..(off + len).div_ceil(gr) {
                        if want[g as usize] {
                            check_view(&view, &start, g * gr, gr, &what);
                        }
                    }
                }
            }
            let mut now = vec![0u8; len as usize];
            filter.read_at(&mut now, off).unwrap();
            assert!(
                now == guest[off as usize..(off + len) as usize],
                "{what}: the guest does not read what it wrote"
            );
        }
        // Every granule still needed reads as at the start.
        for g in 0..SIZE / gr {
            if want[g as usize] {
                check_view(&view, &start, g * gr, gr, &format!("seed {seed} end"));
            }
        }
        let st = view.stats();
        assert!(st.copied <= copied_max, "{st:?}");
        if needed.is_some() {
            let n: u64 = (0..SIZE / gr).filter(|&g| is_needed(g)).count() as u64;
            assert!(
                st.copied <= n * gr,
                "copied {} of {} needed",
                st.copied,
                n * gr
            );
        }
        assert!(view.broken().is_none());
        let scratch = view.scratch().to_path_buf();
        assert!(scratch.exists());
        drop((filter, view));
        assert!(!scratch.exists(), "the scratch goes with the view");
        let path = std::path::PathBuf::from(img.path());
        drop(img);
        assert_qemu_clean(&path);
    }
}

#[test]
fn writes_outside_an_incremental_view_copy_nothing_and_done_ranges_stop_copying() {
    let d = tmp();
    let (img, start) = source(&d, 11);
    let mut opts = CbwOptions::new(at(&d, "scratch.qcow2"));
    opts.granule = Some(G);
    opts.needed = Some(vec![(G, G), (10 * G, 3 * G)]);
    let (filter, view) = cbw::start(img, &opts).unwrap();
    filter.write_at(&[1u8; 4096], 5 * G).unwrap();
    filter.write_zeroes(20 * G, 4 * G, true).unwrap();
    assert_eq!(view.stats().copied, 0);
    assert_eq!(view.stats().needed, 4 * G);
    // Half of the second range is read and given up: not copied again.
    view.done(10 * G, 2 * G).unwrap();
    filter
        .write_at(&vec![2u8; (3 * G) as usize], 10 * G)
        .unwrap();
    assert_eq!(view.stats().copied, G);
    check_view(&view, &start, 12 * G, G, "after done");
    filter.write_at(&[3u8; 100], G + 10).unwrap();
    assert_eq!(view.stats().copied, 2 * G);
    check_view(&view, &start, G, G, "copied");
    // Block status: the copied granules are data.
    let ext = view.block_status(G, G).unwrap();
    assert!(ext.iter().all(|e| e.data && !e.zero), "{ext:?}");
}

#[test]
fn a_copy_that_cannot_be_made_breaks_the_view_and_never_the_guest() {
    let d = tmp();
    let (img, _) = source(&d, 5);
    let mut opts = CbwOptions::new(at(&d, "scratch.qcow2"));
    opts.timeout = Duration::ZERO;
    let (filter, view) = cbw::start(img.clone(), &opts).unwrap();
    let data = pattern(8192, 3);
    filter.write_at(&data, 3 * G).unwrap();
    let mut back = vec![0u8; 8192];
    filter.read_at(&mut back, 3 * G).unwrap();
    assert_eq!(back, data);
    let why = view.broken().expect("broken").to_string();
    assert!(why.contains("longer than"), "{why}");
    let e = view.read_at(&mut back, 0).unwrap_err().to_string();
    assert!(e.contains("broken") && e.contains("longer than"), "{e}");
    // Later writes go straight through.
    filter.write_at(&data, 0).unwrap();
}

#[test]
fn a_scratch_that_cannot_be_made_is_an_error_naming_it() {
    let d = tmp();
    let (img, _) = source(&d, 5);
    let bad = CbwOptions::new(at(&d, "no/such/dir/scratch.qcow2"));
    let e = cbw::start(img.clone(), &bad).unwrap_err().to_string();
    assert!(e.contains("scratch.qcow2"), "{e}");
    let mut odd = CbwOptions::new(at(&d, "s.qcow2"));
    odd.granule = Some(3000);
    let e = cbw::start(img, &odd).unwrap_err().to_string();
    assert!(e.contains("granule"), "{e}");
    assert!(!at(&d, "s.qcow2").exists());
}

/// An image whose reads take a while: a view reader holds its granules
/// long enough for a guest write that did not wait for it to land.
#[derive(Debug)]
struct Slow(Arc<dyn Image>, Duration);

impl Image for Slow {
    fn path(&self) -> &str {
        self.0.path()
    }
    fn format(&self) -> strata_image::Format {
        self.0.format()
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn writable(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> strata_image::Result<()> {
        // The delay is per granule read (a whole-disk read takes 64).
        std::thread::sleep(self.1 * (buf.len() as u64).div_ceil(G) as u32);
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> strata_image::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> strata_image::Result<()> {
        self.0.write_zeroes(offset, len, unmap)
    }
    fn discard(&self, offset: u64, len: u64) -> strata_image::Result<()> {
        self.0.discard(offset, len)
    }
    fn flush(&self) -> strata_image::Result<()> {
        self.0.flush()
    }
    fn resize(&self, size: u64) -> strata_image::Result<()> {
        self.0.resize(size)
    }
    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> strata_image::Result<Vec<strata_image::Extent>> {
        // A slow look, as a read.
        std::thread::sleep(self.1);
        self.0.block_status(offset, len)
    }
    fn backing(&self) -> Option<&Arc<dyn Image>> {
        None
    }
    fn actual_size(&self) -> strata_image::Result<u64> {
        self.0.actual_size()
    }
}

#[test]
fn many_threads_writing_and_reading_at_once_leave_the_view_at_its_start() {
    let d = tmp();
    let (img, start) = source(&d, 21);
    let slow: Arc<dyn Image> = Arc::new(Slow(img, Duration::from_micros(300)));
    let (filter, view) = cbw::start(slow, &opts_g(&d)).unwrap();
    let start = Arc::new(start);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let filter = filter.clone();
            s.spawn(move || {
                let mut rng = Rng(100 + t);
                for _ in 0..200 {
                    let len = 1 + rng.below(2 * G);
                    let off = rng.below(SIZE - len);
                    filter
                        .write_at(&pattern(len as usize, rng.next()), off)
                        .unwrap();
                }
            });
        }
        for t in 0..2u64 {
            let view = view.clone();
            let start = start.clone();
            s.spawn(move || {
                let mut rng = Rng(200 + t);
                for i in 0..300 {
                    let len = 1 + rng.below(3 * G);
                    let off = rng.below(SIZE - len);
                    check_view(&view, &start, off, len, &format!("reader {t} read {i}"));
                }
            });
        }
    });
    check_view(&view, &start, 0, SIZE, "after the threads");
    assert!(view.stats().scratch_bytes > 0);
}

#[test]
fn a_guest_write_never_waits_for_a_long_view_read() {
    let d = tmp();
    let (img, start) = source(&d, 31);
    // Each read takes 1 ms: the view's read of the whole disk takes 64.
    let slow: Arc<dyn Image> = Arc::new(Slow(img, Duration::from_millis(1)));
    let (filter, view) = cbw::start(slow, &opts_g(&d)).unwrap();
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut buf = vec![0u8; SIZE as usize];
            view.read_at(&mut buf, 0).unwrap();
            let ended = std::time::Instant::now();
            assert!(buf == *start, "the long read is not the start");
            ended
        });
        std::thread::sleep(Duration::from_millis(5));
        filter.write_at(&[7u8; 4096], SIZE - G).unwrap();
        let written = std::time::Instant::now();
        let read = reader.join().unwrap();
        // Held for the whole read, the write would end with it.
        assert!(
            read.saturating_duration_since(written) > Duration::from_millis(20),
            "the write ended {:?} before the read: it waited for it",
            read.saturating_duration_since(written)
        );
    });
}

#[test]
fn a_read_once_view_gives_up_what_it_read_and_refuses_a_stale_second_read() {
    let d = tmp();
    let (img, mut start) = source(&d, 41);
    // Data in granule 4 (zeros would need no copy).
    img.write_at(&[5u8; 4096], 4 * G).unwrap();
    start[4 * G as usize..4 * G as usize + 4096].fill(5);
    let opts = CbwOptions {
        read_once: true,
        ..opts_g(&d)
    };
    let (filter, view) = cbw::start(img, &opts).unwrap();
    // A guest write before the read is copied; the read gets the start.
    filter.write_at(&[1u8; 4096], G + 100).unwrap();
    assert_eq!(view.stats().copied, G);
    check_view(&view, &start, 0, 4 * G, "first read");
    // Read whole: given up, and the scratch copy of granule 1 freed. A
    // write there now copies nothing.
    filter.write_at(&[2u8; 4096], 2 * G).unwrap();
    filter.write_at(&[3u8; 4096], G).unwrap();
    assert_eq!(view.stats().copied, G, "nothing more was copied");
    // A granule read only in part is still held for the view.
    check_view(&view, &start, 4 * G + 10, 100, "part of granule 4");
    filter.write_at(&[4u8; 4096], 4 * G).unwrap();
    assert_eq!(view.stats().copied, 2 * G);
    check_view(&view, &start, 4 * G, G, "granule 4, from the scratch");
    // Granule 3 was read and is unchanged: it reads again; granule 2 was
    // written since: an error, never the guest's data.
    check_view(&view, &start, 3 * G, G, "granule 3 again");
    let mut buf = vec![0u8; G as usize];
    let e = view.read_at(&mut buf, 2 * G).unwrap_err().to_string();
    assert!(e.contains("given up"), "{e}");
    assert!(view.block_status(2 * G, G).is_err());
    // The guest's own view is its writes.
    let mut g = vec![0u8; 4096];
    filter.read_at(&mut g, 2 * G).unwrap();
    assert_eq!(g, [2u8; 4096]);
}

#[test]
fn zeros_overwritten_by_the_guest_cost_no_scratch_and_still_read_as_zeros() {
    let d = tmp();
    let p = at(&d, "empty.qcow2");
    create(
        &p,
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    let img = open_rw(&p);
    img.write_at(&[9u8; 4096], 0).unwrap();
    let (filter, view) = cbw::start(img, &opts_g(&d)).unwrap();
    // Granule 0 held data: copied. Granules 2..4 were zeros: not copied.
    filter.write_at(&[1u8; 4096], 0).unwrap();
    filter.write_at(&vec![2u8; 2 * G as usize], 2 * G).unwrap();
    assert_eq!(view.stats().copied, G);
    let mut start = vec![0u8; SIZE as usize];
    start[..4096].fill(9);
    check_view(&view, &start, 0, SIZE, "the view");
    let ext = view.block_status(2 * G, 2 * G).unwrap();
    assert!(ext.iter().all(|e| e.zero && !e.data), "{ext:?}");
}

#[test]
fn backup_reads_racing_guest_writes_read_the_start() {
    let d = tmp();
    let (img, _) = source(&d, 61);
    let slow: Arc<dyn Image> = Arc::new(Slow(img.clone(), Duration::from_micros(200)));
    for round in 0..12u64 {
        // Each round a new view of the disk as the guest has left it, read
        // once in 256 KiB pieces (as nbdcopy does) while two guest threads
        // write all over it; granules of a cluster and of a page in turn.
        let start = read_all(img.as_ref());
        let opts = CbwOptions {
            read_once: true,
            granule: Some(if round % 2 == 0 { G } else { MIN_GRANULE }),
            ..CbwOptions::new(at(&d, &format!("scratch{round}.qcow2")))
        };
        let (filter, view) = cbw::start(slow.clone(), &opts).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let (filter, stop) = (filter.clone(), &stop);
                s.spawn(move || {
                    let mut rng = Rng(round * 10 + t);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let len = 1 + rng.below(G);
                        let off = rng.below(SIZE - len);
                        match rng.below(4) {
                            // A cluster of zeros unmapped: the live image's
                            // block status says zeros there now.
                            0 => filter.write_zeroes(off / G * G, G, true).unwrap(),
                            _ => filter
                                .write_at(&pattern(len as usize, rng.next()), off)
                                .unwrap(),
                        }
                    }
                });
            }
            let piece = 4 * G;
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for off in (0..SIZE).step_by(piece as usize) {
                    // Block status, as nbdcopy asks before reading, never
                    // calls zeros what held data at the start.
                    for e in view.block_status(off, piece).unwrap() {
                        let at = &start[e.start as usize..(e.start + e.length) as usize];
                        assert!(
                            !e.zero || at.iter().all(|&b| b == 0),
                            "round {round}: {e:?} is not zeros at the start"
                        );
                    }
                    check_view(&view, &start, off, piece, &format!("round {round}"));
                }
            }));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = read {
                std::panic::resume_unwind(e);
            }
        });
        assert!(view.broken().is_none());
    }
}
