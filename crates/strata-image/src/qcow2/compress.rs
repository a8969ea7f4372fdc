//! Compressed clusters: raw deflate ("zlib" in QEMU, no zlib header, 4 KiB
//! window as QEMU decompresses with) and zstd.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::io::Read;

use super::header::CompressionType;

/// Decompresses one cluster from `src` into `out` (exactly `out.len()` bytes).
pub(crate) fn decompress(kind: CompressionType, src: &[u8], out: &mut [u8]) -> Result<(), String> {
    match kind {
        CompressionType::Zlib => {
            let mut d = Decompress::new(false);
            match d.decompress(src, out, FlushDecompress::Finish) {
                Ok(_) if d.total_out() == out.len() as u64 => Ok(()),
                Ok(_) => Err(format!(
                    "deflate data gave {} of {} bytes",
                    d.total_out(),
                    out.len()
                )),
                Err(e) => Err(format!("deflate: {e}")),
            }
        }
        CompressionType::Zstd => {
            let mut dec =
                zstd::stream::read::Decoder::with_buffer(src).map_err(|e| format!("zstd: {e}"))?;
            dec.read_exact(out).map_err(|e| format!("zstd: {e}"))
        }
    }
}

/// Compresses one cluster; `None` when compression would not save space.
pub(crate) fn compress(kind: CompressionType, src: &[u8]) -> Option<Vec<u8>> {
    let limit = src.len() - 1;
    match kind {
        CompressionType::Zlib => {
            let mut c = Compress::new_with_window_bits(Compression::default(), false, 12);
            let mut out = Vec::with_capacity(src.len());
            match c.compress_vec(src, &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) if out.len() <= limit => Some(out),
                _ => None,
            }
        }
        CompressionType::Zstd => {
            let out = zstd::bulk::compress(src, 0).ok()?;
            (out.len() <= limit).then_some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_both_kinds() {
        let mut src = vec![0u8; 65536];
        for (i, b) in src.iter_mut().enumerate() {
            *b = (i / 100) as u8;
        }
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            let c = compress(kind, &src).expect("compressible");
            let mut padded = c.clone();
            padded.extend_from_slice(&[0xAB; 300]); // sector tail garbage
            let mut out = vec![0u8; src.len()];
            decompress(kind, &padded, &mut out).expect("decompress");
            assert_eq!(out, src);
        }
    }

    #[test]
    fn random_data_is_not_compressed() {
        let mut x = 88172645463325252u64;
        let src: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress(CompressionType::Zlib, &src).is_none());
    }
}
