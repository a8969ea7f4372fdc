//! Finding the emulator binary and asking it what it can do.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::machine::EmulatorPath;
use crate::{Error, Result};

/// How long `-version` and `-help` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// What the command line may use of an emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// QEMU was built with seccomp: `-sandbox` works.
    pub sandbox: bool,
}

/// A QEMU version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// An emulator binary that answered as QEMU does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emulator {
    /// Its path.
    pub path: PathBuf,
    /// Its version.
    pub version: Version,
    /// What it supports.
    pub caps: Capabilities,
}

impl Emulator {
    /// Resolves `spec` and probes the binary (`-version`, `-help`).
    pub async fn probe(spec: &EmulatorPath) -> Result<Emulator> {
        let path = resolve(spec)?;
        let version_text = run(&path, "-version").await?;
        let version = parse_version(&version_text).ok_or_else(|| Error::NotQemu {
            emulator: path.clone(),
            reason: format!("-version printed {:?}", first_line(&version_text)),
        })?;
        let help = run(&path, "-help").await?;
        let sandbox = help.lines().any(|l| l.starts_with("-sandbox "));
        tracing::debug!(emulator = %path.display(), %version, sandbox, "probed emulator");
        Ok(Emulator {
            path,
            version,
            caps: Capabilities { sandbox },
        })
    }
}

/// The file an [`EmulatorPath`] names: the path itself, or the first
/// executable file of that name on `PATH` (a name with a `/` is a path).
pub fn resolve(spec: &EmulatorPath) -> Result<PathBuf> {
    match spec {
        EmulatorPath::Path(p) => Ok(p.clone()),
        EmulatorPath::Search(name) => {
            if Path::new(name).components().count() != 1 {
                return Ok(PathBuf::from(name));
            }
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| is_executable(p))
                .ok_or_else(|| Error::EmulatorNotFound { name: name.clone() })
        }
    }
}

/// A regular file with an execute bit.
fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `emulator arg` and returns its stdout.
async fn run(emulator: &Path, arg: &str) -> Result<String> {
    let mut cmd = Command::new(emulator);
    cmd.arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    let spawn_err = |source| Error::Spawn {
        emulator: emulator.to_path_buf(),
        source,
    };
    let out = tokio::time::timeout(PROBE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| Error::NotQemu {
            emulator: emulator.to_path_buf(),
            reason: format!("{arg} did not finish within {PROBE_TIMEOUT:?}"),
        })?
        .map_err(spawn_err)?;
    if !out.status.success() {
        return Err(Error::NotQemu {
            emulator: emulator.to_path_buf(),
            reason: format!(
                "{arg} failed ({}): {}",
                out.status,
                first_line(&String::from_utf8_lossy(&out.stderr))
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// `QEMU emulator version 10.0.2 (Debian …)` → 10.0.2.
fn parse_version(text: &str) -> Option<Version> {
    let rest = text.lines().find_map(|l| l.split("version ").nth(1))?;
    let word = rest.split_whitespace().next()?;
    let mut nums = word.split('.').map(|n| n.parse::<u32>().ok());
    let major = nums.next()??;
    let minor = nums.next()??;
    let micro = nums.next().flatten().unwrap_or(0);
    Some(Version {
        major,
        minor,
        micro,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_qemu_banners() {
        let v = parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\nCopyright");
        assert_eq!(
            v,
            Some(Version {
                major: 10,
                minor: 0,
                micro: 2
            })
        );
        let v = parse_version("QEMU emulator version 9.2.50\n");
        assert_eq!(
            v,
            Some(Version {
                major: 9,
                minor: 2,
                micro: 50
            })
        );
        assert_eq!(parse_version("GNU bash, version x"), None);
    }

    #[test]
    fn a_name_missing_from_path_is_named_in_the_error() {
        let e = resolve(&EmulatorPath::Search("strata-no-such-emulator".into())).unwrap_err();
        assert!(matches!(e, Error::EmulatorNotFound { .. }));
        assert!(e.to_string().contains("strata-no-such-emulator"), "{e}");
    }
}
