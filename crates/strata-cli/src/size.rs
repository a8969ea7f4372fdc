//! Sizes and bytes as the command line writes them: a plain byte count or a
//! binary suffix (`K`, `M`, `G`, `T`, `P`; `64K`, `20G`, `1.5G`), and a BYTE
//! as 0–255 in decimal or `0x` hex. Also the relative sizes of `resize`.

/// A new size for `resize`: absolute, or relative to the current size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeChange {
    /// Exactly this many bytes.
    Absolute(u64),
    /// This many bytes more.
    Grow(u64),
    /// This many bytes less.
    Shrink(u64),
}

impl SizeChange {
    /// The size that results from applying the change to `current`.
    pub fn apply(self, current: u64) -> Option<u64> {
        match self {
            SizeChange::Absolute(n) => Some(n),
            SizeChange::Grow(n) => current.checked_add(n),
            SizeChange::Shrink(n) => current.checked_sub(n),
        }
    }
}

fn suffix_shift(c: char) -> Option<u32> {
    Some(match c.to_ascii_uppercase() {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        'P' => 50,
        'E' => 60,
        _ => return None,
    })
}

/// Parses a size: digits with an optional fraction and a binary suffix.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size '{text}': expected a byte count with an optional K, M, G, T or P suffix"
        )
    };
    let t = text.trim();
    let (number, shift) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = suffix_shift(c).ok_or_else(bad)?;
            (&t[..t.len() - 1], shift)
        }
        Some(_) => (t, 0),
        None => return Err(bad()),
    };
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let too_big = || format!("size '{text}' is too large");
    let whole: u64 = int_part.parse().map_err(|_| too_big())?;
    let mut bytes = whole.checked_mul(1u64 << shift).ok_or_else(too_big)?;
    if let Some(f) = frac_part {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) || f.len() > 18 {
            return Err(bad());
        }
        // fraction * 2^shift, which must come out as a whole number of bytes.
        let denom = 10u128.pow(f.len() as u32);
        let num: u128 = f.parse::<u128>().map_err(|_| bad())? << shift;
        if !num.is_multiple_of(denom) {
            return Err(format!("size '{text}' is not a whole number of bytes"));
        }
        let extra = u64::try_from(num / denom).map_err(|_| too_big())?;
        bytes = bytes.checked_add(extra).ok_or_else(too_big)?;
    }
    Ok(bytes)
}

/// Parses `SIZE`, `+SIZE` or `-SIZE`.
pub fn parse_size_change(text: &str) -> Result<SizeChange, String> {
    if let Some(rest) = text.strip_prefix('+') {
        parse_size(rest).map(SizeChange::Grow)
    } else if let Some(rest) = text.strip_prefix('-') {
        parse_size(rest).map(SizeChange::Shrink)
    } else {
        parse_size(text).map(SizeChange::Absolute)
    }
}

/// Parses a BYTE: 0–255, decimal or `0x` hex.
pub fn parse_byte(text: &str) -> Result<u8, String> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => t.parse::<u8>(),
    };
    parsed.map_err(|_| format!("invalid byte '{text}': expected 0-255 or 0x00-0xff"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("2P"), Ok(2 << 50));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert_eq!(parse_size("100B"), Ok(100));
        for bad in [
            "",
            "K",
            "12Q",
            "-1",
            "1.2.3M",
            "0x10",
            "1.",
            "abc",
            "99999999999999999999",
            "20000000P",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} should be refused");
        }
        assert!(
            parse_size("1.1").is_err(),
            "fractions of a byte are refused"
        );
    }

    #[test]
    fn size_changes() {
        assert_eq!(parse_size_change("+1M"), Ok(SizeChange::Grow(1 << 20)));
        assert_eq!(parse_size_change("-1M"), Ok(SizeChange::Shrink(1 << 20)));
        assert_eq!(parse_size_change("1M"), Ok(SizeChange::Absolute(1 << 20)));
        assert_eq!(SizeChange::Shrink(2).apply(1), None);
        assert_eq!(SizeChange::Grow(2).apply(1), Some(3));
    }

    #[test]
    fn bytes() {
        assert_eq!(parse_byte("0"), Ok(0));
        assert_eq!(parse_byte("255"), Ok(255));
        assert_eq!(parse_byte("0xff"), Ok(255));
        assert_eq!(parse_byte("0x0A"), Ok(10));
        for bad in ["256", "-1", "0x100", "x1", "", "0x"] {
            assert!(parse_byte(bad).is_err(), "{bad} should be refused");
        }
    }
}
