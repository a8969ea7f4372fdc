//! A saved machine (`domain save FILE`, as `virsh save`): the domain's
//! definition and QEMU's migration stream of its memory and devices, in
//! one file, checked whole before anything is restored from it.
//!
//! The layout (integers big-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 0..16 | magic `strata-saved-vm\n` |
//! | 16..20 | format version, 1 |
//! | 20..24 | flags: bit 0, the machine ran when it was saved |
//! | 24..32 | length of the domain XML |
//! | 32..40 | where the stream starts: a multiple of 4096 past the XML |
//! | 40..48 | length of the stream |
//! | 48..52 | CRC-32C of the XML |
//! | 52..56 | CRC-32C of the stream |
//! | 56..60 | CRC-32C of bytes 0..56 |
//! | 60..64 | zero |
//! | 64.. | the domain XML (UTF-8), then zeros up to the stream |
//!
//! QEMU writes the stream first (it creates the file, truncating it, and
//! writes from the stream's offset on); the header goes in last, so a save
//! that did not finish never passes [`read`]. Callers write into a
//! temporary name and rename it into place when it is whole.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The file's first bytes.
const MAGIC: &[u8; 16] = b"strata-saved-vm\n";
/// The format this code writes and reads.
const VERSION: u32 = 1;
/// The header's length; the XML follows it.
const HEADER: u64 = 64;
/// The stream starts on a multiple of this.
const ALIGN: u64 = 4096;
/// The longest domain XML accepted.
const MAX_XML: u64 = 16 << 20;
/// Flag: the machine ran when it was saved.
const RAN: u32 = 1;

/// What a saved machine file holds, besides the stream itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The domain's definition when it was saved.
    pub xml: String,
    /// The machine ran (else it was paused) when it was saved.
    pub running: bool,
    /// Where the stream starts.
    pub stream_offset: u64,
    /// The stream's length.
    pub stream_len: u64,
}

/// Where the stream of a file holding `xml` starts.
pub fn stream_offset(xml: &str) -> u64 {
    (HEADER + xml.len() as u64).div_ceil(ALIGN) * ALIGN
}

/// Finishes a saved machine file whose stream QEMU has written at
/// [`stream_offset`]`(xml)`: checksums the stream, writes the header and
/// the XML before it and makes it durable.
pub fn finish(path: &Path, xml: &str, running: bool) -> Result<Saved> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        op: "finish the saved machine",
        source,
    };
    let offset = stream_offset(xml);
    let f = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len <= offset {
        return Err(invalid(path, "the saved state is empty"));
    }
    let stream_crc = crc_of(&f, offset, len - offset).map_err(io)?;
    let saved = Saved {
        xml: xml.to_string(),
        running,
        stream_offset: offset,
        stream_len: len - offset,
    };
    let mut head = Vec::with_capacity(offset as usize);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_be_bytes());
    head.extend_from_slice(&(if running { RAN } else { 0 }).to_be_bytes());
    head.extend_from_slice(&(xml.len() as u64).to_be_bytes());
    head.extend_from_slice(&offset.to_be_bytes());
    head.extend_from_slice(&saved.stream_len.to_be_bytes());
    head.extend_from_slice(&crc32c::crc32c(xml.as_bytes()).to_be_bytes());
    head.extend_from_slice(&stream_crc.to_be_bytes());
    let own = crc32c::crc32c(&head);
    head.extend_from_slice(&own.to_be_bytes());
    head.extend_from_slice(&[0; 4]);
    head.extend_from_slice(xml.as_bytes());
    head.resize(offset as usize, 0);
    f.write_all_at(&head, 0).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(saved)
}

/// Reads and checks a saved machine file: its header, its XML and every
/// byte of its stream against their checksums. An error names the file
/// and what in it is wrong.
pub fn read(path: &Path) -> Result<Saved> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        op: "read the saved machine",
        source,
    };
    let f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut head = [0u8; HEADER as usize];
    if len < HEADER {
        return Err(invalid(path, "too short for a saved machine"));
    }
    f.read_exact_at(&mut head, 0).map_err(io)?;
    if &head[..16] != MAGIC {
        return Err(invalid(
            path,
            "not a saved machine (no strata-saved-vm header)",
        ));
    }
    let be32 = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let be64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_be_bytes(b)
    };
    if crc32c::crc32c(&head[..56]) != be32(56) {
        return Err(invalid(path, "the header (bytes 0..64) is damaged"));
    }
    let version = be32(16);
    if version != VERSION {
        return Err(invalid(
            path,
            format!("format version {version}; this strata reads version {VERSION}"),
        ));
    }
    let (xml_len, offset, stream_len) = (be64(24), be64(32), be64(40));
    if xml_len > MAX_XML || offset < HEADER + xml_len || offset % ALIGN != 0 {
        return Err(invalid(
            path,
            format!("the header says the XML is {xml_len} bytes and the stream starts at {offset}: impossible"),
        ));
    }
    if offset.checked_add(stream_len) != Some(len) {
        return Err(invalid(
            path,
            format!(
                "the file is {len} bytes, the header says {}: it was cut short or added to",
                offset.saturating_add(stream_len)
            ),
        ));
    }
    let mut xml = vec![0u8; xml_len as usize];
    f.read_exact_at(&mut xml, HEADER).map_err(io)?;
    if crc32c::crc32c(&xml) != be32(48) {
        return Err(invalid(
            path,
            format!(
                "the domain XML (bytes {HEADER}..{}) is damaged",
                HEADER + xml_len
            ),
        ));
    }
    let xml = String::from_utf8(xml).map_err(|_| invalid(path, "the domain XML is not UTF-8"))?;
    if crc_of(&f, offset, stream_len).map_err(io)? != be32(52) {
        return Err(invalid(
            path,
            format!("the saved memory (bytes {offset}..{len}) is damaged"),
        ));
    }
    Ok(Saved {
        xml,
        running: be32(20) & RAN != 0,
        stream_offset: offset,
        stream_len,
    })
}

/// The temporary name a save writes into before it is renamed to `path`.
pub fn partial(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// The CRC-32C of `len` bytes of `f` from `offset` on.
fn crc_of(f: &File, offset: u64, len: u64) -> std::io::Result<u32> {
    let mut crc = 0u32;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], at)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        at += n as u64;
    }
    Ok(crc)
}

/// An error about saved machine file `path`.
fn invalid(path: &Path, problem: impl Into<String>) -> Error {
    Error::invalid(path.display().to_string(), problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as QEMU leaves it: zeros, then a stream at the offset.
    fn streamed(dir: &Path, xml: &str, stream: &[u8]) -> PathBuf {
        let p = dir.join("m.save");
        let f = File::create(&p).unwrap();
        f.write_all_at(stream, stream_offset(xml)).unwrap();
        p
    }

    #[test]
    fn a_finished_file_reads_back_and_any_damage_is_named() {
        let d = tempfile::tempdir().unwrap();
        let xml = "<domain><name>vm</name></domain>";
        let stream: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let p = streamed(d.path(), xml, &stream);
        let saved = finish(&p, xml, true).unwrap();
        assert_eq!(read(&p).unwrap(), saved);
        assert!(saved.running && saved.stream_offset == 4096);
        assert_eq!(saved.stream_len, stream.len() as u64);
        let good = std::fs::read(&p).unwrap();
        // One flipped byte anywhere that counts, each named.
        for (at, says) in [
            (3, "not a saved machine"),
            (30, "header"),
            (70, "domain XML"),
            (4096 + 500, "saved memory (bytes 4096.."),
            (good.len() - 1, "saved memory"),
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&p, &bad).unwrap();
            let e = read(&p).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("m.save"), "byte {at}: {e}");
        }
        // Cut short, or grown.
        std::fs::write(&p, &good[..good.len() - 10]).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("cut short"));
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&p, &longer).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("cut short"));
        std::fs::write(&p, &good[..10]).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("too short"));
    }

    #[test]
    fn files_written_by_the_fuzz_seed_maker_are_read() {
        // fuzz/make-seeds writes the format on its own (Python): the two
        // agree on every byte.
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/saved_machine");
        let running = read(&seeds.join("running")).unwrap();
        assert!(running.running && running.xml.contains("<name>vm</name>"));
        assert_eq!(running.stream_len, 8 + 1024);
        let paused = read(&seeds.join("paused")).unwrap();
        assert!(!paused.running && paused.stream_len == 100);
        assert!(read(&seeds.join("header-only")).is_err());
    }

    #[test]
    fn a_stream_never_written_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = streamed(d.path(), "<domain/>", b"");
        assert!(finish(&p, "<domain/>", false).is_err());
        assert_eq!(partial(&p), d.path().join("m.save.part"));
    }
}
