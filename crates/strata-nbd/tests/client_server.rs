//! The crate's client against its server, over a unix socket, with an
//! in-memory export: reads (structured, holes as hole chunks), writes,
//! zeroes, trims, flushes, block status, errors by number, an unknown
//! export, a read-only export, and a clean shutdown with clients gone.

use std::path::Path;
use std::sync::{Arc, Mutex};

use strata_nbd::proto::{STATE_HOLE, STATE_ZERO};
use strata_nbd::{
    serve, Client, Config, Errno, Error, Export, Exports, Failure, Listener, Options, Outcome,
    StatusExtent,
};

/// A disk in memory; a 4 KiB block is a hole until written.
struct Memory {
    data: Mutex<Vec<u8>>,
    written: Mutex<Vec<bool>>,
    read_only: bool,
}

impl Memory {
    fn new(size: usize, read_only: bool) -> Memory {
        Memory {
            data: Mutex::new(vec![0; size]),
            written: Mutex::new(vec![false; size / 4096]),
            read_only,
        }
    }

    fn mark(&self, offset: u64, len: u64, on: bool) {
        let mut w = self.written.lock().unwrap();
        for b in offset / 4096..(offset + len).div_ceil(4096) {
            w[b as usize] = on;
        }
    }
}

impl Export for Memory {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn contexts(&self) -> Vec<String> {
        vec!["base:allocation".into()]
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Outcome<()> {
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> Outcome<()> {
        self.data.lock().unwrap()[offset as usize..offset as usize + buf.len()]
            .copy_from_slice(buf);
        self.mark(offset, buf.len() as u64, true);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _t: bool, _f: bool, _fua: bool) -> Outcome<()> {
        self.data.lock().unwrap()[offset as usize..(offset + len) as usize].fill(0);
        self.mark(offset, len, false);
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Outcome<()> {
        self.write_zeroes(offset, len, true, false, fua)
    }
    fn flush(&self) -> Outcome<()> {
        Ok(())
    }
    fn block_status(&self, context: &str, offset: u64, len: u64) -> Outcome<Vec<StatusExtent>> {
        if context != "base:allocation" {
            return Err(Failure::new(Errno::Inval, "unknown context"));
        }
        let w = self.written.lock().unwrap();
        let mut out: Vec<StatusExtent> = Vec::new();
        let mut at = offset;
        while at < offset + len {
            let n = (4096 - at % 4096).min(offset + len - at);
            let flags = if w[(at / 4096) as usize] {
                0
            } else {
                STATE_HOLE | STATE_ZERO
            };
            match out.last_mut() {
                Some(l) if l.flags == flags => l.length += n,
                _ => out.push(StatusExtent { length: n, flags }),
            }
            at += n;
        }
        Ok(out)
    }
}

/// Runs a server on `sock` in a background thread until the returned
/// sender is dropped or fires.
fn start(
    sock: &Path,
    exports: Exports,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(async { Listener::unix(sock).unwrap() });
    let config = Config {
        max_clients: 4,
        persistent: true,
        ..Config::default()
    };
    let h = std::thread::spawn(move || {
        rt.block_on(serve(exports, listener, config, async {
            let _ = rx.await;
        }))
        .unwrap();
    });
    (tx, h)
}

#[test]
fn client_and_server_agree() {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("s.sock");
    let disk = Arc::new(Memory::new(1 << 20, false));
    let mut exports = Exports::new();
    exports.add("disk", disk.clone());
    exports.add("ro", Arc::new(Memory::new(64 << 10, true)));
    let (stop, server) = start(&sock, exports);

    // Compact then extended headers.
    for extended_headers in [false, true] {
        let opts = Options {
            export: "disk",
            contexts: &["base:allocation", "x-none:thing"],
            extended_headers,
        };
        let mut c = Client::unix_with(&sock, &opts).unwrap();
        assert_eq!(c.size(), 1 << 20);
        assert_eq!(c.contexts(), ["base:allocation"]);
        c.write(8192, &[7u8; 8192], false).unwrap();
        c.write(65536, &[9u8; 4096], true).unwrap();
        c.flush().unwrap();
        // A read over holes and data: hole chunks fill zeros.
        let mut buf = vec![1u8; 80 << 10];
        c.read(0, &mut buf).unwrap();
        assert!(buf[..8192].iter().all(|&b| b == 0));
        assert!(buf[8192..16384].iter().all(|&b| b == 7));
        assert!(buf[16384..65536].iter().all(|&b| b == 0));
        assert!(buf[65536..69632].iter().all(|&b| b == 9));
        let ext = c.block_status("base:allocation", 0, 80 << 10).unwrap();
        let flags: Vec<(u64, u32)> = ext.iter().map(|e| (e.length, e.flags)).collect();
        assert_eq!(
            flags,
            [(8192, 3), (8192, 0), (49152, 3), (4096, 0), (12288, 3)]
        );
        c.write_zeroes(8192, 4096, false).unwrap();
        c.trim(65536, 4096).unwrap();
        let mut small = [1u8; 8];
        c.read(8192, &mut small).unwrap();
        assert_eq!(small, [0; 8]);
        assert!(disk.data.lock().unwrap()[12288] == 7, "the rest stays");
        // Errors come back by number, and the session goes on.
        let e = c.read(1 << 20, &mut small).unwrap_err();
        assert!(matches!(&e, Error::Server(s) if s.errno == 22), "{e}");
        assert!(e.to_string().contains("past the end"), "{e}");
        c.read(12288, &mut small).unwrap();
        assert_eq!(small, [7; 8]);
        c.disconnect().unwrap();
    }

    // A read-only export refuses writes with EPERM.
    let mut r = Client::unix(&sock, "ro", &[]).unwrap();
    let e = r.write(0, &[1; 512], false).unwrap_err();
    assert!(matches!(&e, Error::Server(s) if s.errno == 1), "{e}");
    assert!(matches!(
        r.block_status("base:allocation", 0, 512),
        Err(Error::Protocol(_))
    ));
    drop(r);
    // An unknown export is refused by name.
    let e = Client::unix(&sock, "nope", &[]).err().unwrap();
    assert!(e.to_string().contains("nope"), "{e}");

    stop.send(()).unwrap();
    server.join().unwrap();
}
