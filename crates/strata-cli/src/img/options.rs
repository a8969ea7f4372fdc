//! Format options (`-o OPT=VALUE[,OPT=VALUE…]`) of `create` and `convert`,
//! with qemu-img's names. A doubled comma (`,,`) is a literal comma.

use anyhow::Result;
use strata_image::qcow2::{CompressionType, CreateOptions, Preallocation};
use strata_image::Format;

use crate::exit::usage;
use crate::size::parse_size;

/// The name qemu-img uses for a preallocation mode.
pub fn prealloc_name(p: Preallocation) -> &'static str {
    match p {
        Preallocation::Off => "off",
        Preallocation::Metadata => "metadata",
        Preallocation::Falloc => "falloc",
        Preallocation::Full => "full",
    }
}

/// The options given with `-o`; `None` where not given.
#[derive(Clone, Debug, Default)]
pub struct FormatOptions {
    /// `cluster_size=`.
    pub cluster_size: Option<u64>,
    /// `refcount_bits=`.
    pub refcount_bits: Option<u32>,
    /// `compat=`: qcow2 version 2 or 3.
    pub version: Option<u32>,
    /// `extended_l2=`.
    pub extended_l2: Option<bool>,
    /// `compression_type=`.
    pub compression: Option<CompressionType>,
    /// `lazy_refcounts=`.
    pub lazy_refcounts: Option<bool>,
    /// `preallocation=`.
    pub preallocation: Option<Preallocation>,
    /// `backing_file=` (same as `-b`).
    pub backing_file: Option<String>,
    /// `backing_fmt=` (same as `-F`).
    pub backing_fmt: Option<Format>,
    /// `size=`.
    pub size: Option<u64>,
    /// `data_file=`: external data file name.
    pub data_file: Option<String>,
    /// `data_file_raw=`.
    pub data_file_raw: Option<bool>,
}

fn parse_bool(name: &str, value: &str) -> Result<bool> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(usage(format!(
            "invalid value '{value}' for option {name}: expected on or off"
        ))),
    }
}

/// Splits one `-o` argument on single commas (`,,` stands for a comma).
fn split_list(arg: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                if let Some(s) = items.last_mut() {
                    s.push(',');
                }
            } else {
                items.push(String::new());
            }
        } else if let Some(s) = items.last_mut() {
            s.push(c);
        }
    }
    items
}

/// The names of the options, for messages.
pub const NAMES: &str = "cluster_size, refcount_bits, compat, extended_l2, compression_type, \
lazy_refcounts, preallocation, backing_file, backing_fmt, size, data_file, data_file_raw";

/// Parses every `-o` argument (later ones win).
pub fn parse(args: &[String]) -> Result<FormatOptions> {
    let mut o = FormatOptions::default();
    for arg in args {
        for item in split_list(arg) {
            if item.is_empty() {
                continue;
            }
            let Some((name, value)) = item.split_once('=') else {
                return Err(usage(format!(
                    "option '{item}' needs a value (OPT=VALUE); options are {NAMES}"
                )));
            };
            let bad = |what: &str| {
                usage(format!(
                    "invalid value '{value}' for option {name}: expected {what}"
                ))
            };
            match name {
                "cluster_size" => {
                    o.cluster_size = Some(parse_size(value).map_err(|_| bad("a size such as 64K"))?)
                }
                "refcount_bits" => {
                    o.refcount_bits =
                        Some(value.parse().map_err(|_| bad("1, 2, 4, 8, 16, 32 or 64"))?)
                }
                "compat" => {
                    o.version = Some(match value {
                        "0.10" | "v2" => 2,
                        "1.1" | "v3" => 3,
                        _ => return Err(bad("0.10 or 1.1")),
                    })
                }
                "extended_l2" => o.extended_l2 = Some(parse_bool(name, value)?),
                "lazy_refcounts" => o.lazy_refcounts = Some(parse_bool(name, value)?),
                "compression_type" => {
                    o.compression = Some(match value {
                        "zlib" => CompressionType::Zlib,
                        "zstd" => CompressionType::Zstd,
                        _ => return Err(bad("zlib or zstd")),
                    })
                }
                "preallocation" => {
                    o.preallocation = Some(
                        Preallocation::parse(value)
                            .ok_or_else(|| bad("off, metadata, falloc or full"))?,
                    )
                }
                "backing_file" => o.backing_file = Some(value.to_string()),
                "backing_fmt" => {
                    o.backing_fmt = Some(Format::parse(value).ok_or_else(|| bad("qcow2 or raw"))?)
                }
                "size" => o.size = Some(parse_size(value).map_err(|_| bad("a size such as 1G"))?),
                "data_file" => o.data_file = Some(value.to_string()),
                "data_file_raw" => o.data_file_raw = Some(parse_bool(name, value)?),
                _ => {
                    return Err(usage(format!(
                        "unknown option '{name}'; options are {NAMES}"
                    )))
                }
            }
        }
    }
    Ok(o)
}

impl FormatOptions {
    /// Refuses options the format does not have.
    pub fn check_for(&self, format: Format) -> Result<()> {
        if format == Format::Raw {
            let qcow2_only = [
                ("cluster_size", self.cluster_size.is_some()),
                ("refcount_bits", self.refcount_bits.is_some()),
                ("compat", self.version.is_some()),
                ("extended_l2", self.extended_l2.is_some()),
                ("compression_type", self.compression.is_some()),
                ("lazy_refcounts", self.lazy_refcounts.is_some()),
                ("backing_file", self.backing_file.is_some()),
                ("backing_fmt", self.backing_fmt.is_some()),
                ("data_file", self.data_file.is_some()),
                ("data_file_raw", self.data_file_raw.is_some()),
            ];
            if let Some((name, _)) = qcow2_only.iter().find(|(_, given)| *given) {
                return Err(usage(format!("option {name} is not valid for format raw")));
            }
            if self.preallocation == Some(Preallocation::Metadata) {
                return Err(usage(
                    "preallocation=metadata is not valid for format raw (use off, falloc or full)",
                ));
            }
        }
        Ok(())
    }

    /// The engine's qcow2 creation options for an image of `size` bytes.
    pub fn qcow2(&self, size: u64, backing: Option<(String, Option<Format>)>) -> CreateOptions {
        let d = CreateOptions::default();
        let (backing_file, backing_format) = match backing {
            Some((name, fmt)) => (Some(name), fmt.map(|f| f.name().to_string())),
            None => (None, None),
        };
        CreateOptions {
            size,
            cluster_size: self.cluster_size.unwrap_or(d.cluster_size),
            refcount_bits: self.refcount_bits.unwrap_or(d.refcount_bits),
            version: self.version.unwrap_or(d.version),
            extended_l2: self.extended_l2.unwrap_or(d.extended_l2),
            compression: self.compression.unwrap_or(d.compression),
            lazy_refcounts: self.lazy_refcounts.unwrap_or(d.lazy_refcounts),
            backing_file,
            backing_format,
            preallocation: self.preallocation.unwrap_or_default(),
            data_file: self.data_file.clone(),
            data_file_raw: self.data_file_raw.unwrap_or(d.data_file_raw),
        }
    }
}

/// Validates qcow2 creation options before any file is touched.
pub fn validate_qcow2(opts: &CreateOptions, file: &str) -> Result<()> {
    opts.validate(file).map_err(|e| usage(e.to_string()))
}

/// Rounds a size up to whole 512-byte sectors, as qemu-img create does.
pub fn round_to_sector(size: u64) -> Result<u64> {
    size.checked_next_multiple_of(512)
        .ok_or_else(|| usage(format!("size {size} is too large")))
}

/// The line qemu-img prints when it creates an image.
pub fn formatting_line(
    file: &str,
    format: Format,
    c: &CreateOptions,
    given: &FormatOptions,
) -> String {
    let mut s = format!("Formatting '{file}', fmt={}", format.name());
    if format == Format::Raw {
        s.push_str(&format!(" size={}", c.size));
        if let Some(p) = given.preallocation.filter(|&p| p != Preallocation::Off) {
            s.push_str(&format!(" preallocation={}", prealloc_name(p)));
        }
        return s;
    }
    let onoff = |b: bool| if b { "on" } else { "off" };
    s.push_str(&format!(
        " cluster_size={} extended_l2={}",
        c.cluster_size,
        onoff(c.extended_l2)
    ));
    if c.preallocation != Preallocation::Off {
        s.push_str(&format!(
            " preallocation={}",
            prealloc_name(c.preallocation)
        ));
    }
    s.push_str(&format!(
        " compression_type={} size={}",
        c.compression.name(),
        c.size
    ));
    if let Some(b) = &c.backing_file {
        s.push_str(&format!(" backing_file={b}"));
    }
    if let Some(f) = &c.backing_format {
        s.push_str(&format!(" backing_fmt={f}"));
    }
    if given.version.is_some() {
        s.push_str(if c.version == 2 {
            " compat=0.10"
        } else {
            " compat=1.1"
        });
    }
    if let Some(d) = &c.data_file {
        s.push_str(&format!(" data_file={d}"));
    }
    if given.data_file_raw.is_some() {
        s.push_str(&format!(" data_file_raw={}", onoff(c.data_file_raw)));
    }
    s.push_str(&format!(
        " lazy_refcounts={} refcount_bits={}",
        onoff(c.lazy_refcounts),
        c.refcount_bits
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        let o = parse(&[
            "cluster_size=4K,compat=0.10".into(),
            "lazy_refcounts=on".into(),
        ])
        .expect("valid");
        assert_eq!(o.cluster_size, Some(4096));
        assert_eq!(o.version, Some(2));
        assert_eq!(o.lazy_refcounts, Some(true));
        let o = parse(&["backing_file=a,,b.qcow2".into()]).expect("valid");
        assert_eq!(o.backing_file.as_deref(), Some("a,b.qcow2"));
    }

    #[test]
    fn refuses_bad_values() {
        for bad in [
            "cluster_size=big",
            "compat=2",
            "extended_l2=maybe",
            "nosuch=1",
            "cluster_size",
            "compression_type=lz4",
        ] {
            assert!(
                parse(&[bad.to_string()]).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn format_checks() {
        let o = parse(&["cluster_size=4K".into()]).expect("valid");
        assert!(o.check_for(Format::Raw).is_err());
        assert!(o.check_for(Format::Qcow2).is_ok());
        let o = parse(&["preallocation=full".into()]).expect("valid");
        assert!(o.check_for(Format::Raw).is_ok());
        assert!(o.check_for(Format::Qcow2).is_ok());
        let o = parse(&["preallocation=metadata".into()]).expect("valid");
        assert!(o.check_for(Format::Raw).is_err());
        let o = parse(&["data_file=a,,b.raw,data_file_raw=on".into()]).expect("valid");
        assert_eq!(o.data_file.as_deref(), Some("a,b.raw"));
        assert_eq!(o.data_file_raw, Some(true));
        assert!(o.check_for(Format::Raw).is_err());
        assert!(o.check_for(Format::Qcow2).is_ok());
    }
}
