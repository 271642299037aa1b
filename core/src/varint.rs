//! Unsigned LEB128 varints and zigzag encoding, used inside record batches.
//!
//! Decoding never reads past the slice it is given and rejects overlong or
//! overflowing encodings, so a hostile batch cannot make it loop or panic.

use bytes::BufMut;

/// A u64 takes at most ten 7-bit groups.
pub const MAX_VARINT_BYTES: usize = 10;

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VarintError {
    /// The slice ended before the last group (one with the high bit clear).
    #[error("varint truncated")]
    Truncated,
    /// More than ten groups, or a value above `u64::MAX`.
    #[error("varint overflows 64 bits")]
    Overflow,
}

/// Number of bytes `value` takes as a varint.
#[inline]
pub fn encoded_len(value: u64) -> usize {
    // Each group holds 7 bits; zero still takes one byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends `value` as a varint.
#[inline]
pub fn put(dst: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        dst.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    dst.put_u8(value as u8);
}

/// Decodes a varint at the start of `src`; returns the value and the bytes it took.
#[inline]
pub fn get(src: &[u8]) -> Result<(u64, usize), VarintError> {
    // Most lengths and flags in a batch fit one byte.
    if let Some(&byte) = src.first() {
        if byte < 0x80 {
            return Ok((u64::from(byte), 1));
        }
    }
    let mut value: u64 = 0;
    for (i, &byte) in src.iter().take(MAX_VARINT_BYTES).enumerate() {
        let group = u64::from(byte & 0x7f);
        // The tenth group may only carry the single remaining bit.
        if i == MAX_VARINT_BYTES - 1 && group > 1 {
            return Err(VarintError::Overflow);
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if src.len() >= MAX_VARINT_BYTES {
        Err(VarintError::Overflow)
    } else {
        Err(VarintError::Truncated)
    }
}

/// Maps signed to unsigned so small magnitudes stay small.
#[inline]
pub fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut buf = Vec::new();
        put(&mut buf, 300);
        assert_eq!(buf, [0xac, 0x02]);
        assert_eq!(get(&buf), Ok((300, 2)));
        assert_eq!(encoded_len(0), 1);
        assert_eq!(encoded_len(127), 1);
        assert_eq!(encoded_len(128), 2);
        assert_eq!(encoded_len(u64::MAX), 10);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(get(&[]), Err(VarintError::Truncated));
        assert_eq!(get(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(get(&[0xff; 11]), Err(VarintError::Overflow));
        // Ten groups whose last carries more than one bit: above u64::MAX.
        let mut over = [0xffu8; 10];
        over[9] = 0x02;
        assert_eq!(get(&over), Err(VarintError::Overflow));
    }

    proptest! {
        #[test]
        fn round_trips(v: u64) {
            let mut buf = Vec::new();
            put(&mut buf, v);
            prop_assert_eq!(buf.len(), encoded_len(v));
            prop_assert_eq!(get(&buf), Ok((v, buf.len())));
        }

        #[test]
        fn zigzag_round_trips(v: i64) {
            prop_assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
