//! What the device advertises: its virtio and vhost-user feature bits, the
//! limits requests are checked against, and the virtio-blk configuration
//! space (virtio 1.2, 5.2.4), byte for byte.

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

use crate::config::Config;

/// Bytes in a virtio-blk sector, the unit of `sector` and `capacity`.
pub(crate) const SECTOR: u64 = 512;
/// The most sectors one discard or write-zeroes segment may cover (1 GiB).
pub(crate) const MAX_RANGE_SECTORS: u32 = 1 << 21;
/// The most segments one discard or write-zeroes request may carry.
pub(crate) const MAX_RANGE_SEGMENTS: u32 = 32;
/// Bytes of the configuration space this device fills (up to and with
/// `unused1`); the rest of what a frontend asks for reads as zero.
pub(crate) const CONFIG_SPACE_LEN: usize = 60;
/// The largest segment a request may carry (`size_max`): any size (all
/// but the last page of 4 GiB); offered
/// (with the topology) so that a guest that booted on QEMU's own
/// vhost-user-blk export, which offers both, can move to this device: a
/// migration stream carries the features the guest took, and QEMU loads it
/// only where each of them is offered.
pub(crate) const SIZE_MAX: u32 = !4095;
/// Offset of `writeback` in the configuration space.
pub(crate) const WRITEBACK_OFFSET: u32 = 32;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// The virtio feature bits offered for `config`, vhost-user's own bits
/// (protocol features, dirty logging) included.
pub(crate) fn virtio_features(config: &Config) -> u64 {
    let mut f = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        | VhostUserVirtioFeatures::LOG_ALL.bits()
        | bit(VIRTIO_BLK_F_SIZE_MAX)
        | bit(VIRTIO_BLK_F_SEG_MAX)
        | bit(VIRTIO_BLK_F_BLK_SIZE)
        | bit(VIRTIO_BLK_F_TOPOLOGY)
        | bit(VIRTIO_BLK_F_FLUSH)
        | bit(VIRTIO_BLK_F_CONFIG_WCE)
        | bit(VIRTIO_BLK_F_MQ);
    if config.readonly {
        f |= bit(VIRTIO_BLK_F_RO);
    } else {
        f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
    }
    f
}

/// The vhost-user protocol features offered (the framework adds
/// `REPLY_ACK` itself).
pub(crate) fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::LOG_SHMFD
}

/// True when the driver acked `VIRTIO_BLK_F_FLUSH` in `features`, so it
/// sends flushes and the device may cache writes (virtio 1.2, 5.2.6.4:
/// without FLUSH every write must be stable when completed, and with
/// CONFIG_WCE but not FLUSH `writeback` starts at 0).
pub(crate) fn writeback_allowed(features: u64) -> bool {
    features & bit(VIRTIO_BLK_F_FLUSH) != 0
}

/// True when the driver acked `VIRTIO_BLK_F_CONFIG_WCE` in `features`.
pub(crate) fn wce_acked(features: u64) -> bool {
    features & bit(VIRTIO_BLK_F_CONFIG_WCE) != 0
}

/// What requests are checked against: the disk as the guest sees it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Readable and writable bytes: the image size rounded down to sectors.
    pub capacity: u64,
    /// Reads and writes must be aligned to this (512 or 4096).
    pub block_size: u32,
    /// Writes, discards and write-zeroes are refused.
    pub readonly: bool,
}

impl Limits {
    /// The limits of an image of `size` bytes exported with `config`.
    pub(crate) fn new(config: &Config, size: u64) -> Limits {
        Limits {
            capacity: size / SECTOR * SECTOR,
            block_size: config.block_size,
            readonly: config.readonly,
        }
    }
}

/// The configuration space of a disk with `limits` and the cache mode
/// `writeback`, as the frontend reads it.
pub(crate) fn config_space(
    config: &Config,
    limits: &Limits,
    writeback: bool,
) -> [u8; CONFIG_SPACE_LEN] {
    let mut c = [0u8; CONFIG_SPACE_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &(limits.capacity / SECTOR).to_le_bytes()); // capacity
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &config.seg_max.to_le_bytes()); // seg_max
    put(20, &config.block_size.to_le_bytes()); // blk_size
                                               // topology: one logical block per physical one, aligned, the smallest
                                               // I/O one block (physical_block_exp, alignment_offset 0; no opt_io_size).
    put(26, &1u16.to_le_bytes()); // min_io_size
    put(32, &[u8::from(writeback)]); // writeback
    put(34, &config.queues.to_le_bytes()); // num_queues
    if !config.readonly {
        let align = config.block_size / SECTOR as u32;
        put(36, &MAX_RANGE_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &MAX_RANGE_SEGMENTS.to_le_bytes()); // max_discard_seg
        put(44, &align.to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_RANGE_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_RANGE_SEGMENTS.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
    }
    c
}

/// The `size` bytes at `offset` of `space`, zero past its end (a frontend
/// may ask for fields this device does not fill).
pub(crate) fn config_window(space: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    let start = offset as usize;
    if start < space.len() {
        let n = (space.len() - start).min(out.len());
        out[..n].copy_from_slice(&space[start..start + n]);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use virtio_bindings::bindings::virtio_blk::virtio_blk_config;

    use super::*;

    fn le32(c: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(c[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn offsets_match_the_linux_header() {
        assert_eq!(offset_of!(virtio_blk_config, size_max), 8);
        assert_eq!(offset_of!(virtio_blk_config, seg_max), 12);
        assert_eq!(offset_of!(virtio_blk_config, min_io_size), 26);
        assert_eq!(offset_of!(virtio_blk_config, blk_size), 20);
        assert_eq!(
            offset_of!(virtio_blk_config, wce),
            WRITEBACK_OFFSET as usize
        );
        assert_eq!(offset_of!(virtio_blk_config, num_queues), 34);
        assert_eq!(offset_of!(virtio_blk_config, max_discard_sectors), 36);
        assert_eq!(offset_of!(virtio_blk_config, max_discard_seg), 40);
        assert_eq!(offset_of!(virtio_blk_config, discard_sector_alignment), 44);
        assert_eq!(offset_of!(virtio_blk_config, max_write_zeroes_sectors), 48);
        assert_eq!(offset_of!(virtio_blk_config, max_write_zeroes_seg), 52);
        assert_eq!(offset_of!(virtio_blk_config, write_zeroes_may_unmap), 56);
        assert_eq!(
            offset_of!(virtio_blk_config, max_secure_erase_sectors),
            CONFIG_SPACE_LEN
        );
    }

    #[test]
    fn fields_hold_the_disk() {
        let config = Config {
            queues: 3,
            block_size: 4096,
            ..Config::default()
        };
        let limits = Limits::new(&config, (1 << 30) + 700);
        let c = config_space(&config, &limits, true);
        assert_eq!(
            u64::from_le_bytes(c[0..8].try_into().unwrap()),
            (1 << 30) / 512 + 1
        );
        assert_eq!(le32(&c, 8), SIZE_MAX);
        assert_eq!(le32(&c, 12), 254);
        assert_eq!(&c[24..32], &[0, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(le32(&c, 20), 4096);
        assert_eq!(c[32], 1);
        assert_eq!(u16::from_le_bytes([c[34], c[35]]), 3);
        assert_eq!(le32(&c, 36), MAX_RANGE_SECTORS);
        assert_eq!(le32(&c, 40), MAX_RANGE_SEGMENTS);
        assert_eq!(le32(&c, 44), 8);
        assert_eq!(le32(&c, 48), MAX_RANGE_SECTORS);
        assert_eq!(le32(&c, 52), MAX_RANGE_SEGMENTS);
        assert_eq!(c[56], 1);
        assert_eq!(&c[57..60], &[0, 0, 0]);
        assert_eq!(config_space(&config, &limits, false)[32], 0);
    }

    #[test]
    fn read_only_offers_ro_and_no_discard() {
        let config = Config {
            readonly: true,
            ..Config::default()
        };
        let f = virtio_features(&config);
        assert_ne!(f & bit(VIRTIO_BLK_F_RO), 0);
        assert_eq!(
            f & (bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES)),
            0
        );
        let c = config_space(&config, &Limits::new(&config, 1 << 20), true);
        assert!(c[36..60].iter().all(|&b| b == 0));
        let rw = virtio_features(&Config::default());
        assert_eq!(rw & bit(VIRTIO_BLK_F_RO), 0);
        assert_ne!(rw & VhostUserVirtioFeatures::LOG_ALL.bits(), 0);
    }

    #[test]
    fn window_pads_with_zeros() {
        let space = [7u8; CONFIG_SPACE_LEN];
        assert_eq!(config_window(&space, 56, 8), vec![7, 7, 7, 7, 0, 0, 0, 0]);
        assert_eq!(config_window(&space, 100, 2), vec![0, 0]);
        assert_eq!(config_window(&space, 0, 60), space.to_vec());
    }

    #[test]
    fn writeback_needs_flush() {
        assert!(writeback_allowed(
            bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_CONFIG_WCE)
        ));
        assert!(!writeback_allowed(bit(VIRTIO_BLK_F_CONFIG_WCE)));
    }
}
