//! What goes to stdout: human text or JSON (`--output`), and the number
//! formats qemu-img uses in its human output (`324 KiB`, `1.5 GiB`).

use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::{GlobalArgs, OutputFormat};

/// How a command reports: the output format and how chatty to be.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// Human text or JSON.
    pub format: OutputFormat,
    /// `-q`: no informational messages, no progress bars.
    pub quiet: bool,
    /// Progress bars are allowed (they are still drawn only on a terminal).
    pub progress: bool,
}

impl Output {
    /// The output settings the global options ask for.
    pub fn new(global: &GlobalArgs) -> Self {
        Output {
            format: global.output,
            quiet: global.quiet,
            progress: !global.quiet && !global.no_progress,
        }
    }

    /// Nothing printed but what a step inside a bigger command must (its
    /// own errors): for the steps `snapshot revert --force` takes.
    pub fn muted(&self) -> Output {
        Output {
            format: OutputFormat::Human,
            quiet: true,
            progress: false,
        }
    }

    /// True when stdout takes JSON.
    pub fn json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Prints an informational line (not with `-q`, not in JSON mode).
    pub fn say(&self, line: &str) -> Result<()> {
        if self.quiet || self.json() {
            return Ok(());
        }
        self.text(&format!("{line}\n"))
    }

    /// Prints text on stdout as it is.
    pub fn text(&self, text: &str) -> Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .context("writing to stdout")
    }

    /// Refuses `--output json` for `command`, which prints a document in
    /// its own format (XML), as virsh does (a usage error, before any
    /// work).
    pub fn no_json(&self, command: &str) -> Result<()> {
        if self.json() {
            return Err(crate::exit::usage(format!(
                "{command} prints XML; --output json does not apply to it"
            )));
        }
        Ok(())
    }

    /// Prints `value` as JSON indented by four spaces, as qemu-img does.
    pub fn print_json<T: Serialize>(&self, value: &T) -> Result<()> {
        self.text(&format!("{}\n", to_json(value)?))
    }
}

/// `value` as JSON text indented by four spaces, empty arrays and objects
/// spread over two lines, as qemu-img prints JSON.
pub fn to_json<T: Serialize>(value: &T) -> Result<String> {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, QemuFormatter { indent: 0 });
    value.serialize(&mut ser).context("encoding JSON")?;
    String::from_utf8(buf).context("encoding JSON")
}

/// serde_json's pretty printer with qemu-img's spacing.
struct QemuFormatter {
    indent: usize,
}

impl QemuFormatter {
    fn newline<W: ?Sized + Write>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b"\n")?;
        for _ in 0..self.indent {
            w.write_all(b"    ")?;
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for QemuFormatter {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.indent += 1;
        w.write_all(b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.indent -= 1;
        self.newline(w)?;
        w.write_all(b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if !first {
            w.write_all(b",")?;
        }
        self.newline(w)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.indent += 1;
        w.write_all(b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.indent -= 1;
        self.newline(w)?;
        w.write_all(b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if !first {
            w.write_all(b",")?;
        }
        self.newline(w)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        Ok(())
    }
}

/// A byte count the way qemu-img prints it: three significant digits in the
/// largest binary unit that keeps the number under 1000 (`324 KiB`,
/// `0.977 KiB`, `4 MiB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    // Move up a unit once the number reaches 1000 of the current one.
    while unit + 1 < UNITS.len() && (bytes as f64) >= 1000.0 * (1u64 << (10 * unit)) as f64 {
        unit += 1;
    }
    let value = bytes as f64 / (1u64 << (10 * unit)) as f64;
    format!("{} {}", three_significant(value), UNITS[unit])
}

/// Formats like C's `%0.3g`: three significant digits, no trailing zeros.
fn three_significant(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let sci = format!("{value:.2e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..3).contains(&exp) {
        let m = trim_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{m}e{sign}{:02}", exp.abs());
    }
    let decimals = (2 - exp).max(0) as usize;
    trim_zeros(&format!("{value:.decimals$}"))
}

fn trim_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// Seconds since the Epoch as local `YYYY-MM-DD HH:MM:SS`.
pub fn local_time(secs: u32) -> String {
    match strata_image::localtime::local_time(secs.into()) {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        ),
        None => format!("@{secs}"),
    }
}

/// `0x…` hex as C's `%#x` prints it (`0` for zero).
pub fn hex(n: u64) -> String {
    if n == 0 {
        "0".to_string()
    } else {
        format!("{n:#x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_qemu_img() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1000), "0.977 KiB");
        assert_eq!(human_size(331776), "324 KiB");
        assert_eq!(human_size(4 << 20), "4 MiB");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(197120), "192 KiB");
        assert_eq!(human_size(12_345_678), "11.8 MiB");
    }

    #[test]
    fn hex_like_c() {
        assert_eq!(hex(0), "0");
        assert_eq!(hex(65536), "0x10000");
    }

    #[test]
    fn json_indent() {
        let v = serde_json::json!({"a": [1], "b": [], "c": {}});
        let want =
            "{\n    \"a\": [\n        1\n    ],\n    \"b\": [\n    ],\n    \"c\": {\n    }\n}";
        assert_eq!(to_json(&v).unwrap_or_default(), want);
    }
}
