//! How a disk is exported: queues, read-only, the ID string, the block size,
//! the I/O threads, which requests run on a queue's own thread and how long
//! it polls; checked once, before anything is started.

use crate::error::{Error, Result};

/// The longest ID string `VIRTIO_BLK_T_GET_ID` returns (virtio 1.2, 5.2.6).
pub const MAX_SERIAL_LEN: usize = 20;

/// The most queues a device offers (one worker thread each; the framework
/// maps queues to threads with a 64-bit mask).
pub const MAX_QUEUES: u16 = 64;

/// The largest [`Config::inline_max`]: a request run on the queue's thread
/// holds the ring, so it stays small.
pub const MAX_INLINE: u32 = 64 << 20;

/// The longest [`Config::ring_poll_us`].
pub const MAX_RING_POLL_US: u32 = 10_000;

/// How a vhost-user-blk disk is exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Request queues offered (`VIRTIO_BLK_F_MQ`); the frontend may use
    /// fewer (QEMU's `num-queues`). One per vCPU is the usual choice.
    pub queues: u16,
    /// The largest ring the frontend may set up (QEMU's `queue-size` must
    /// not exceed it). A power of two.
    pub queue_size: u16,
    /// Export read-only (`VIRTIO_BLK_F_RO`): writes, discards and
    /// write-zeroes fail with `VIRTIO_BLK_S_IOERR`.
    pub readonly: bool,
    /// The device ID string (`VIRTIO_BLK_T_GET_ID`, the guest's
    /// `/sys/block/vdX/serial`): printable ASCII, at most 20 bytes.
    pub serial: String,
    /// The logical block size the guest sees (`blk_size`): 512 or 4096.
    /// Reads and writes must be aligned to it.
    pub block_size: u32,
    /// Segments one request may carry (`seg_max`).
    pub seg_max: u32,
    /// Threads doing image I/O for each queue, so that its long requests
    /// run concurrently. At least 1.
    pub io_threads: usize,
    /// Reads and writes of at most this many bytes run on the queue's own
    /// thread as it takes them (page-cache I/O takes microseconds, less
    /// than handing a request over); larger ones, flushes, discards,
    /// write-zeroes and writes in writethrough mode go to the I/O threads.
    /// 0 sends every request to the I/O threads. At most 64 MiB.
    pub inline_max: u32,
    /// While the driver keeps a queue busy, how long (µs) the queue's
    /// thread keeps looking at the empty ring (every 10 µs) before asking
    /// to be notified of the next request: requests added meanwhile cost
    /// the driver no notification and are taken in one batch, at the price
    /// of up to 10 µs of delay each. A queue served one request at a time
    /// never polls. 0 turns polling off. At most 10,000.
    pub ring_poll_us: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queues: 1,
            queue_size: 1024,
            readonly: false,
            serial: String::new(),
            block_size: 512,
            seg_max: 254,
            io_threads: 4,
            inline_max: 256 << 10,
            ring_poll_us: 100,
        }
    }
}

impl Config {
    /// Checks every field; an error names the first one out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(Error::Config { field, reason });
        if self.queues == 0 || self.queues > MAX_QUEUES {
            return bad(
                "queues",
                format!("{} is not between 1 and {MAX_QUEUES}", self.queues),
            );
        }
        if !self.queue_size.is_power_of_two() || self.queue_size < 4 {
            return bad(
                "queue_size",
                format!("{} is not a power of two of at least 4", self.queue_size),
            );
        }
        if self.serial.len() > MAX_SERIAL_LEN {
            return bad(
                "serial",
                format!("{:?} is longer than {MAX_SERIAL_LEN} bytes", self.serial),
            );
        }
        if !self
            .serial
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return bad(
                "serial",
                format!("{:?} is not printable ASCII", self.serial),
            );
        }
        if self.block_size != 512 && self.block_size != 4096 {
            return bad(
                "block_size",
                format!("{} is neither 512 nor 4096", self.block_size),
            );
        }
        if self.seg_max == 0 || self.seg_max > 65_535 - 2 {
            return bad(
                "seg_max",
                format!("{} is not between 1 and 65533", self.seg_max),
            );
        }
        if self.io_threads == 0 || self.io_threads > 256 {
            return bad(
                "io_threads",
                format!("{} is not between 1 and 256", self.io_threads),
            );
        }
        if self.inline_max > MAX_INLINE {
            return bad(
                "inline_max",
                format!("{} is more than {MAX_INLINE}", self.inline_max),
            );
        }
        if self.ring_poll_us > MAX_RING_POLL_US {
            return bad(
                "ring_poll_us",
                format!("{} is more than {MAX_RING_POLL_US}", self.ring_poll_us),
            );
        }
        Ok(())
    }

    /// The serial as the 20 bytes `GET_ID` returns, NUL-padded.
    pub(crate) fn serial_bytes(&self) -> [u8; MAX_SERIAL_LEN] {
        let mut id = [0u8; MAX_SERIAL_LEN];
        let n = self.serial.len().min(MAX_SERIAL_LEN);
        id[..n].copy_from_slice(&self.serial.as_bytes()[..n]);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    queues: 0,
                    ..Config::default()
                },
                "queues",
            ),
            (
                Config {
                    queues: 65,
                    ..Config::default()
                },
                "queues",
            ),
            (
                Config {
                    queue_size: 100,
                    ..Config::default()
                },
                "queue_size",
            ),
            (
                Config {
                    queue_size: 2,
                    ..Config::default()
                },
                "queue_size",
            ),
            (
                Config {
                    serial: "x".repeat(21),
                    ..Config::default()
                },
                "serial",
            ),
            (
                Config {
                    serial: "tab\there".into(),
                    ..Config::default()
                },
                "serial",
            ),
            (
                Config {
                    block_size: 1024,
                    ..Config::default()
                },
                "block_size",
            ),
            (
                Config {
                    seg_max: 0,
                    ..Config::default()
                },
                "seg_max",
            ),
            (
                Config {
                    io_threads: 0,
                    ..Config::default()
                },
                "io_threads",
            ),
            (
                Config {
                    inline_max: MAX_INLINE + 1,
                    ..Config::default()
                },
                "inline_max",
            ),
            (
                Config {
                    ring_poll_us: MAX_RING_POLL_US + 1,
                    ..Config::default()
                },
                "ring_poll_us",
            ),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field, "{config:?}"),
                other => panic!("{config:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn serial_is_nul_padded() {
        let c = Config {
            serial: "disk-1".into(),
            ..Config::default()
        };
        let id = c.serial_bytes();
        assert_eq!(&id[..6], b"disk-1");
        assert!(id[6..].iter().all(|&b| b == 0));
        let full = Config {
            serial: "a".repeat(20),
            ..Config::default()
        };
        assert_eq!(full.serial_bytes(), [b'a'; 20]);
    }
}
