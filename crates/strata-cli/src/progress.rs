//! Progress bars for long work (convert, commit, rebase): drawn on stderr
//! only when it is a terminal and neither `-q` nor `--no-progress` was given.

use std::io::IsTerminal;

use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::Output;

/// A progress bar, or nothing when none should be drawn.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// The bar is drawn from the first update on, once its length is known.
    shown: AtomicBool,
}

impl Progress {
    /// A bar labelled `what` (or none, when output settings or stderr say so).
    pub fn new(out: &Output, what: &str) -> Self {
        if !out.progress || !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                shown: AtomicBool::new(false),
            };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:40}] {percent:>3}% {bytes}/{total_bytes} ({eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Progress {
            bar: Some(bar),
            shown: AtomicBool::new(false),
        }
    }

    /// The callback the engine's operations take.
    pub fn update(&self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            if bar.length() != Some(total) {
                bar.set_length(total);
            }
            bar.set_position(done);
            if !self.shown.swap(true, Ordering::Relaxed) {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
