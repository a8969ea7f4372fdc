//! Authenticated encryption (ChaCha20-Poly1305, from ring) and random
//! bytes from the system.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::rand::{SecureRandom, SystemRandom};

/// A nonce's length.
pub(crate) const NONCE: usize = 12;

fn key(k: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is what the algorithm takes: this cannot fail.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k).expect("a 32-byte key"))
}

/// `plain` encrypted under `k` with `nonce`, `aad` authenticated with it:
/// the ciphertext and the tag.
pub(crate) fn seal(k: &[u8; 32], nonce: [u8; NONCE], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut out = plain.to_vec();
    key(k)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out,
        )
        .expect("a message shorter than the cipher's limit");
    out
}

/// [`seal`] undone: `None` when `sealed` was not sealed so (another key,
/// another nonce or `aad`, a changed byte).
pub(crate) fn open(k: &[u8; 32], nonce: [u8; NONCE], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let mut buf = sealed.to_vec();
    let n = key(k)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

/// `N` random bytes from the system's generator.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random generator");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_as_sealed() {
        let k = random::<32>();
        let n = random::<NONCE>();
        let s = seal(&k, n, b"aad", b"hello");
        assert_eq!(s.len(), 5 + 16);
        assert_eq!(open(&k, n, b"aad", &s).as_deref(), Some(&b"hello"[..]));
        assert!(open(&k, n, b"aab", &s).is_none());
        assert!(open(&random::<32>(), n, b"aad", &s).is_none());
        let mut bad = s.clone();
        bad[0] ^= 1;
        assert!(open(&k, n, b"aad", &bad).is_none());
    }
}
