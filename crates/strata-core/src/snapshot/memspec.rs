//! `--memspec [file=]PATH[,snapshot=external]` or
//! `--memspec snapshot=internal|no`: where a snapshot of a running domain
//! keeps its memory, as virsh spells it.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::snapshot::DiskMode;

/// Where the memory goes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemSpec {
    /// Internal (inside the first disk's snapshot), external (a file of
    /// its own) or no memory at all (a disk-only snapshot).
    pub mode: DiskMode,
    /// External: the file (a saved machine, as `domain save` writes).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl MemSpec {
    /// Parses virsh's memspec syntax: a file alone means external memory.
    pub fn parse(spec: &str) -> Result<MemSpec> {
        let bad = |p: String| Error::invalid(format!("memspec '{spec}'"), p);
        let mut mode = None;
        let mut file = None;
        for (i, p) in spec.split(',').enumerate() {
            match p.split_once('=') {
                Some(("snapshot", v)) => {
                    mode = Some(DiskMode::parse(v).ok_or_else(|| {
                        bad(format!("snapshot={v}: use internal, external or no"))
                    })?)
                }
                Some(("file", v)) => file = Some(PathBuf::from(v)),
                None if i == 0 && !p.is_empty() => file = Some(PathBuf::from(p)),
                _ => return Err(bad(format!("'{p}': use [file=]PATH,snapshot=MODE"))),
            }
        }
        let mode = match (mode, &file) {
            (Some(m), _) => m,
            (None, Some(_)) => DiskMode::External,
            (None, None) => return Err(bad("names neither a file nor a mode".into())),
        };
        match (mode, &file) {
            (DiskMode::External, None) => Err(bad("external memory needs file=PATH".into())),
            (DiskMode::Internal | DiskMode::No, Some(f)) => Err(bad(format!(
                "file={} is for snapshot=external",
                f.display()
            ))),
            _ => Ok(MemSpec { mode, file }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memspecs_parse_as_virsh_writes_them() {
        let ext = |f: &str| MemSpec {
            mode: DiskMode::External,
            file: Some(PathBuf::from(f)),
        };
        assert_eq!(MemSpec::parse("/m.save").unwrap(), ext("/m.save"));
        assert_eq!(
            MemSpec::parse("file=/m,snapshot=external").unwrap(),
            ext("/m")
        );
        assert_eq!(MemSpec::parse("/m,snapshot=external").unwrap(), ext("/m"));
        for (s, mode) in [
            ("snapshot=internal", DiskMode::Internal),
            ("snapshot=no", DiskMode::No),
        ] {
            assert_eq!(MemSpec::parse(s).unwrap(), MemSpec { mode, file: None });
        }
        for (s, needle) in [
            ("snapshot=external", "needs file=PATH"),
            ("file=/m,snapshot=internal", "is for snapshot=external"),
            ("snapshot=maybe", "use internal, external or no"),
            ("", "'': use"),
            ("/m,size=3", "'size=3'"),
        ] {
            let e = MemSpec::parse(s).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("memspec"), "{s}: {e}");
        }
    }
}
