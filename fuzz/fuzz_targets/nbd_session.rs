//! A whole NBD connection without a socket: the input is everything a
//! client sends (its flags, options, then requests and payloads), served
//! by strata-nbd's handshake and transmission phase against a 1 MiB
//! in-memory export. Any byte stream ends the connection cleanly or with
//! an error, never a panic or a hang.
//!
//! Input: one byte choosing the export (bit 0 read-only, bit 1 512-byte
//! minimum block size, bit 2 fragmented block status), then the client's
//! bytes.
#![no_main]

use std::sync::{Arc, LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use strata_nbd::fuzzing::serve_stream;
use strata_nbd::proto::{STATE_HOLE, STATE_ZERO};
use strata_nbd::{BlockSizes, Errno, Export, Exports, Failure, Outcome, StatusExtent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: u64 = 1 << 20;

struct Memory {
    bytes: Mutex<Vec<u8>>,
    config: u8,
}

impl Memory {
    fn range(&self, offset: u64, len: u64) -> Outcome<std::ops::Range<usize>> {
        match offset.checked_add(len) {
            Some(end) if end <= SIZE => Ok(offset as usize..end as usize),
            _ => Err(Failure::new(Errno::Inval, "out of range")),
        }
    }
}

impl Export for Memory {
    fn size(&self) -> u64 {
        SIZE
    }
    fn read_only(&self) -> bool {
        self.config & 1 != 0
    }
    fn description(&self) -> Option<String> {
        Some("fuzz".into())
    }
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: if self.config & 2 != 0 { 512 } else { 1 },
            ..BlockSizes::default()
        }
    }
    fn contexts(&self) -> Vec<String> {
        vec!["base:allocation".into()]
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Outcome<()> {
        let r = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.bytes.lock().unwrap()[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> Outcome<()> {
        let r = self.range(offset, buf.len() as u64)?;
        self.bytes.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _trim: bool,
        fast: bool,
        _fua: bool,
    ) -> Outcome<()> {
        if fast && len > 4096 {
            return Err(Failure::new(Errno::NotSup, "not fast"));
        }
        let r = self.range(offset, len)?;
        self.bytes.lock().unwrap()[r].fill(0);
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Outcome<()> {
        self.write_zeroes(offset, len, true, false, fua)
    }
    fn flush(&self) -> Outcome<()> {
        Ok(())
    }
    fn block_status(&self, _context: &str, offset: u64, len: u64) -> Outcome<Vec<StatusExtent>> {
        self.range(offset, len)?;
        if self.config & 4 == 0 {
            return Ok(vec![StatusExtent {
                length: SIZE - offset,
                flags: 0,
            }]);
        }
        // Many small extents, past the range too (the server trims).
        let mut out = Vec::new();
        let mut at = offset;
        while at < SIZE {
            let length = (4096 - at % 4096).min(SIZE - at);
            let flags = if (at / 4096).is_multiple_of(2) {
                0
            } else {
                STATE_HOLE | STATE_ZERO
            };
            out.push(StatusExtent { length, flags });
            at += length;
        }
        Ok(out)
    }
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
});

fuzz_target!(|data: &[u8]| {
    let [config, client @ ..] = data else {
        return;
    };
    let mut exports = Exports::new();
    let export = Arc::new(Memory {
        bytes: Mutex::new(vec![0x5a; SIZE as usize]),
        config: *config,
    });
    exports.add("disk", export);
    let client = client.to_vec();
    RUNTIME.block_on(async move {
        let (server_end, client_end) = tokio::io::duplex(256 << 10);
        let server = tokio::spawn(async move {
            let _ = serve_stream(server_end, &exports).await;
        });
        let (mut from_server, mut to_server) = tokio::io::split(client_end);
        let send = async move {
            let _ = to_server.write_all(&client).await;
            let _ = to_server.shutdown().await;
        };
        let receive = async move {
            let mut sink = Vec::new();
            let _ = from_server.read_to_end(&mut sink).await;
        };
        let (_, _, done) = tokio::join!(send, receive, server);
        done.expect("the connection task panicked");
    });
});
