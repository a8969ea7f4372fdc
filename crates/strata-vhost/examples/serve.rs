//! Serves an image as a vhost-user-blk device until SIGINT or SIGTERM:
//!
//! ```text
//! serve IMAGE SOCKET [--queues N] [--readonly] [--io-threads N]
//!       [--inline-max BYTES] [--ring-poll-us N] [--serial ID]
//!       [--block-size 512|4096] [--stats FILE]
//! ```
//!
//! It prints `ready` once the socket listens. On exit it stops serving,
//! closes the image and, with `--stats`, writes the process's CPU time
//! (`user_s sys_s`, from getrusage) to FILE. Benchmarks and manual tests
//! use it until the daemon serves disks.

use std::path::PathBuf;

use anyhow::{bail, Context};
use strata_image::ChainOptions;
use strata_vhost::Config;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut config = Config::default();
    let mut stats: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--queues" => config.queues = value("--queues")?.parse()?,
            "--io-threads" => config.io_threads = value("--io-threads")?.parse()?,
            "--inline-max" => config.inline_max = value("--inline-max")?.parse()?,
            "--ring-poll-us" => config.ring_poll_us = value("--ring-poll-us")?.parse()?,
            "--serial" => config.serial = value("--serial")?,
            "--block-size" => config.block_size = value("--block-size")?.parse()?,
            "--stats" => stats = Some(value("--stats")?.into()),
            "--readonly" => config.readonly = true,
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ => positional.push(a),
        }
    }
    let [image, socket] = positional.as_slice() else {
        bail!("usage: serve IMAGE SOCKET [--queues N] [--readonly] [--io-threads N] [--inline-max BYTES] [--ring-poll-us N] [--serial ID] [--block-size N] [--stats FILE]");
    };
    config.validate()?;
    let signals = block_signals();
    let opts = ChainOptions {
        writable: !config.readonly,
        ..ChainOptions::default()
    };
    let image =
        strata_image::open(image.as_ref(), &opts).with_context(|| format!("opening {image}"))?;
    let server = strata_vhost::serve(image.clone(), socket, config)?;
    println!("ready");
    wait_for(&signals);
    server.stop();
    image.close().context("closing the image")?;
    if let Some(path) = stats {
        let (user, sys) = cpu_times();
        std::fs::write(&path, format!("{user:.6} {sys:.6}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread started
/// after), to take them with sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the
    // calls get valid pointers to it and change only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for(set: &libc::sigset_t) {
    let mut sig = 0;
    // SAFETY: `set` was initialised by block_signals and `sig` is a valid
    // place for the signal number.
    unsafe { libc::sigwait(set, &mut sig) };
}

/// User and system CPU seconds of this process.
fn cpu_times() -> (f64, f64) {
    // SAFETY: rusage is plain data getrusage fills in.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}
