//! The `strata` command line: parses arguments, sets up logging, dispatches
//! to a command and turns its outcome into an exit status. The commands
//! live in [`img`], [`domain`], [`snapshot`], [`checkpoint`], [`backup`] and [`nbd`]; the work itself lives in `strata-image`
//! and `strata-core`.

mod backup;
mod blockjob;
mod checkpoint;
mod cli;
mod daemon;
mod domain;
mod exit;
mod img;
mod lifecycle;
mod live;
mod live_args;
mod nbd;
mod output;
mod progress;
mod repo;
mod repo_args;
mod repo_mount;
mod repo_prune;
mod save;
mod size;
mod snapshot;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, GlobalArgs};
use output::Output;

/// Logs on stderr at the level `-q`/`-v` (or `RUST_LOG`) ask for; the
/// daemon logs from `info` up by default, with times.
fn init_tracing(global: &GlobalArgs, daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) if daemon => "info",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = if daemon {
        fmt.try_init()
    } else {
        fmt.without_time().try_init()
    };
}

fn main() -> ExitCode {
    // Commands do image I/O down backing chains, one call per layer: they
    // run on a thread with the stack the deepest chain is proven to fit.
    match strata_image::chain::io_thread().spawn(run) {
        // A panic was reported by the hook; exit as Rust does after one.
        Ok(t) => t.join().unwrap_or_else(|_| ExitCode::from(101)),
        Err(e) => {
            eprintln!("strata: error: cannot start the command thread: {e}");
            ExitCode::from(exit::ERROR)
        }
    }
}

fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return exit::clap_failure(e),
    };
    init_tracing(&cli.global, matches!(cli.command, Command::Daemon(_)));
    let out = Output::new(&cli.global);
    let result = match cli.command {
        Command::Img(cmd) => img::run(cmd, &out),
        Command::Domain(cmd) => domain::run(cmd, cli.global.state_dir.as_deref(), &out),
        Command::Snapshot(cmd) => snapshot::run(cmd, cli.global.state_dir.as_deref(), &out),
        Command::Checkpoint(cmd) => checkpoint::run(cmd, cli.global.state_dir.as_deref(), &out),
        Command::Backup(cmd) => backup::run(cmd, cli.global.state_dir.as_deref(), &out),
        Command::Blockcommit(args) => blockjob::commit(args, &cli.global, &out),
        Command::Blockpull(args) => blockjob::pull(args, &cli.global, &out),
        Command::Blockjob(args) => blockjob::job(args, cli.global.state_dir.as_deref(), &out),
        Command::Repo(cmd) => repo::run(cmd, cli.global.state_dir.as_deref(), &out),
        Command::Nbd(cmd) => nbd::run(cmd),
        Command::Daemon(args) => daemon::run(args, cli.global.state_dir.as_deref()),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(e) => exit::report(&e),
    }
}
