//! The two argument syntaxes QEMU reads: `key=value,key=value` option
//! strings (where a comma inside a value is written twice) and JSON objects
//! (`-device`, `-blockdev`, `-object`, `-netdev`), used wherever QEMU takes
//! them so that values need no escaping and keep their types.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// An option string being built: `first,key=value,…`.
pub struct Opts(Vec<u8>);

impl Opts {
    /// Starts with a bare first item (`socket`, `q35`), escaped.
    pub fn new(first: impl AsRef<OsStr>) -> Self {
        let mut o = Opts(Vec::new());
        push_escaped(&mut o.0, first.as_ref());
        o
    }

    /// Starts empty, for options whose every item is `key=value`.
    pub fn empty() -> Self {
        Opts(Vec::new())
    }

    /// Appends `key=value` (after a comma unless first), the value escaped.
    pub fn kv(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.sep();
        self.0.extend_from_slice(key.as_bytes());
        self.0.push(b'=');
        push_escaped(&mut self.0, value.as_ref());
        self
    }

    /// Appends `,item` as it is (a flag such as `-apic`).
    pub fn raw(mut self, item: &str) -> Self {
        self.sep();
        self.0.extend_from_slice(item.as_bytes());
        self
    }

    /// A comma unless this is the first item.
    fn sep(&mut self) {
        if !self.0.is_empty() {
            self.0.push(b',');
        }
    }

    /// The finished argument.
    pub fn build(self) -> OsString {
        OsString::from_vec(self.0)
    }
}

/// Writes `value` with every comma doubled, as QEMU's option parser wants.
fn push_escaped(out: &mut Vec<u8>, value: &OsStr) {
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
}

/// A JSON argument.
pub fn json(v: Value) -> OsString {
    OsString::from(v.to_string())
}

/// A path as a JSON string: JSON cannot carry bytes that are not UTF-8, so
/// such a path is refused, naming the field it is for.
pub fn json_path<'a>(path: &'a Path, field: &str) -> Result<&'a str> {
    path.to_str().ok_or_else(|| {
        Error::invalid(
            field,
            format!("path {} is not UTF-8, as QEMU's JSON needs", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_are_doubled_in_values_and_first_items() {
        let o = Opts::new("a,b").kv("path", "/x,y,,z").raw("-apic").build();
        assert_eq!(o, OsString::from("a,,b,path=/x,,y,,,,z,-apic"));
        let o = Opts::empty()
            .kv("guest", "a,b")
            .raw("debug-threads=on")
            .build();
        assert_eq!(o, OsString::from("guest=a,,b,debug-threads=on"));
    }

    #[test]
    fn bytes_that_are_not_utf8_pass_through_options_but_not_json() {
        let p = Path::new(OsStr::from_bytes(b"/tmp/\xff.sock"));
        let o = Opts::new("socket").kv("path", p).build();
        assert_eq!(o.as_bytes(), b"socket,path=/tmp/\xff.sock");
        let e = json_path(p, "disks[0].socket").unwrap_err().to_string();
        assert!(
            e.contains("disks[0].socket") && e.contains("not UTF-8"),
            "{e}"
        );
    }
}
