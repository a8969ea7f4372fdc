//! TLS with a pre-shared key, as QEMU's `tls-creds-psk` and libnbd's
//! `tls-psk-file` speak it. rustls has no external PSKs, so this side of
//! TLS uses OpenSSL (TLS 1.3 PSK with (EC)DHE or plain, and the TLS 1.2
//! PSK suites). The keys file holds one `USERNAME:HEXKEY` per line, as
//! GnuTLS's `psktool` writes it; a client is let in when its identity is a
//! username in the file and it proves the same key.

use std::collections::HashMap;
use std::path::Path;

use openssl::ssl::{SslContext, SslMethod, SslVersion};

use crate::error::{Error, Result};

/// The longest key OpenSSL takes (`PSK_MAX_PSK_LEN`).
const MAX_KEY: usize = 512;

/// Keys by username, as read from a keys file.
pub(crate) type Keys = HashMap<Vec<u8>, Vec<u8>>;

/// Reads a `psktool` keys file; every problem names the file and line.
pub(crate) fn read_keys(path: &Path) -> Result<Keys> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
    parse_keys(&text).map_err(|e| Error::Tls(format!("{}: {e}", path.display())))
}

/// Parses the lines of a keys file.
fn parse_keys(text: &str) -> std::result::Result<Keys, String> {
    let mut keys = Keys::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let at = |problem: &str| format!("line {}: {problem}", n + 1);
        let (user, hex) = line
            .split_once(':')
            .ok_or_else(|| at("is not USERNAME:HEXKEY"))?;
        if user.is_empty() {
            return Err(at("has no username"));
        }
        let key = unhex(hex).ok_or_else(|| at("the key is not an even number of hex digits"))?;
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(at(&format!("the key must be 1 to {MAX_KEY} bytes")));
        }
        if keys.insert(user.as_bytes().to_vec(), key).is_some() {
            return Err(at(&format!("username '{user}' appears twice")));
        }
    }
    if keys.is_empty() {
        return Err("holds no key".into());
    }
    Ok(keys)
}

/// `hex` as bytes, if it is an even number of hex digits.
fn unhex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A server context that accepts any client holding one of `keys`.
pub(crate) fn context(keys: Keys) -> Result<SslContext> {
    let ssl = |e: openssl::error::ErrorStack| Error::Tls(format!("OpenSSL: {e}"));
    let mut b = SslContext::builder(SslMethod::tls_server()).map_err(ssl)?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(ssl)?;
    // TLS 1.2: PSK key exchanges that need no certificate, with AEAD
    // ciphers only (OpenSSL has ECDHE-PSK with ChaCha20 but not with GCM).
    b.set_cipher_list(
        "ECDHE-PSK-CHACHA20-POLY1305:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:PSK-CHACHA20-POLY1305",
    )
    .map_err(ssl)?;
    b.set_psk_server_callback(move |_, identity, out| {
        let Some(key) = identity.and_then(|id| keys.get(id)) else {
            tracing::info!(
                "TLS-PSK: unknown identity {:?}",
                identity.map(String::from_utf8_lossy)
            );
            return Ok(0);
        };
        tracing::debug!(
            "TLS-PSK: identity '{}'",
            String::from_utf8_lossy(identity.unwrap_or_default())
        );
        // A key longer than OpenSSL's buffer was refused when read.
        let n = key.len().min(out.len());
        out[..n].copy_from_slice(&key[..n]);
        Ok(n)
    });
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_lines() {
        let keys = parse_keys("qemu:00ff10\nalice:ABCD\n\n").unwrap();
        assert_eq!(keys[b"qemu".as_slice()], vec![0, 0xff, 0x10]);
        assert_eq!(keys[b"alice".as_slice()], vec![0xab, 0xcd]);
        for (bad, says) in [
            ("", "holds no key"),
            ("qemu", "line 1: is not USERNAME:HEXKEY"),
            ("q:0\n", "line 1: the key is not"),
            ("q:zz", "line 1: the key is not"),
            ("q:\n", "line 1: the key must be"),
            (":00", "line 1: has no username"),
            ("a:00\na:01", "line 2: username 'a' appears twice"),
            ("a:é0", "line 1: the key is not"),
            ("a:ab+f", "line 1: the key is not"),
        ] {
            let e = parse_keys(bad).unwrap_err();
            assert!(e.starts_with(says), "{bad:?}: {e}");
        }
    }
}
