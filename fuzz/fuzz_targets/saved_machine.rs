//! `strata_core::live::saved::read` (a saved machine file, from
//! `domain save`, handed to `domain restore`): any bytes get an error,
//! never a panic; a file it accepts is consistent (the stream lies within
//! the file, after the XML).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use strata_core::live::saved;

fuzz_target!(|data: &[u8]| {
    let Ok(mut f) = tempfile_in_shm() else {
        return;
    };
    if f.1.write_all(data).is_err() {
        return;
    }
    if let Ok(s) = saved::read(&f.0) {
        assert_eq!(s.stream_offset + s.stream_len, data.len() as u64);
        assert!(s.stream_offset >= 64 + s.xml.len() as u64);
        assert_eq!(s.stream_offset % 4096, 0);
    }
    let _ = std::fs::remove_file(&f.0);
});

/// A new file of this process's own in /dev/shm (or the temp folder).
fn tempfile_in_shm() -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let dir = match std::path::Path::new("/dev/shm").is_dir() {
        true => std::path::PathBuf::from("/dev/shm"),
        false => std::env::temp_dir(),
    };
    let path = dir.join(format!("strata-fuzz-saved-{}", std::process::id()));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}
