//! Encoding of the typed headers that frames carry.
//!
//! Integers are little-endian and fixed-size; strings are a u32 byte length
//! and UTF-8; lists are a u32 count and their elements; `Option` is a u8 tag
//! (0 or 1) and the value. A list's count is checked against the bytes left
//! before anything is allocated, so a forged count cannot reserve memory.
//! Decoding is strict: a header must be consumed exactly.

use crate::name::{BrokerId, GroupName, NameError, QueueId, ShardId, TopicName};
use bytes::{BufMut, BytesMut};

/// Why a typed header could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The header ended inside a field.
    #[error("{what}: truncated, {needed} bytes needed but {left} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the header.
        left: usize,
    },
    /// A string field that is not UTF-8.
    #[error("{what}: not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        what: &'static str,
    },
    /// A list whose count cannot fit in the bytes left.
    #[error("{what}: {count} elements cannot fit in the {left} bytes left")]
    ListTooLong {
        /// The field being read.
        what: &'static str,
        /// The count on the wire.
        count: u32,
        /// Bytes left in the header.
        left: usize,
    },
    /// A value outside the field's domain (an unknown enum tag or flag bit).
    #[error("{what}: invalid value {value}")]
    InvalidValue {
        /// The field being read.
        what: &'static str,
        /// The value on the wire.
        value: u64,
    },
    /// A name that breaks the naming rules.
    #[error("{what}: {source}")]
    InvalidName {
        /// The field being read.
        what: &'static str,
        /// What is wrong with it.
        source: NameError,
    },
    /// Bytes left over after the last field.
    #[error("{trailing} bytes left after the header")]
    TrailingBytes {
        /// How many.
        trailing: usize,
    },
}

/// A cursor over a header's bytes; every read is bounds-checked.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated {
                what,
                needed: n,
                left: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            trailing => Err(DecodeError::TrailingBytes { trailing }),
        }
    }
}

/// A type with a header encoding.
pub trait Wire: Sized {
    /// The fewest bytes any value takes; bounds list counts before allocation.
    const MIN_BYTES: usize;
    /// Appends the encoding to `dst`.
    fn put(&self, dst: &mut BytesMut);
    /// Reads one value; `what` names the field in errors.
    fn get(src: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError>;
}

/// Encodes `value` into a fresh buffer.
pub fn encode<T: Wire>(value: &T) -> BytesMut {
    let mut dst = BytesMut::new();
    value.put(&mut dst);
    dst
}

/// Decodes exactly one `T` from `buf`.
pub fn decode<T: Wire>(buf: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let mut reader = Reader::new(buf);
    let value = T::get(&mut reader, what)?;
    reader.finish()?;
    Ok(value)
}

macro_rules! wire_int {
    ($($ty:ty => $put:ident),*) => {$(
        impl Wire for $ty {
            const MIN_BYTES: usize = std::mem::size_of::<$ty>();
            fn put(&self, dst: &mut BytesMut) {
                dst.$put(*self);
            }
            fn get(src: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
                Ok(<$ty>::from_le_bytes(src.array(what)?))
            }
        }
    )*};
}
wire_int!(u8 => put_u8, u16 => put_u16_le, u32 => put_u32_le, u64 => put_u64_le, i64 => put_i64_le);

impl Wire for bool {
    const MIN_BYTES: usize = 1;
    fn put(&self, dst: &mut BytesMut) {
        dst.put_u8(u8::from(*self));
    }
    fn get(src: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
        match u8::get(src, what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::InvalidValue {
                what,
                value: value.into(),
            }),
        }
    }
}

fn put_len(dst: &mut BytesMut, len: usize) {
    // Frames are capped far below 4 GiB (see frame::MAX_FRAME_BYTES_LIMIT), so a
    // length that does not fit in u32 cannot reach the wire in a valid frame.
    dst.put_u32_le(u32::try_from(len).unwrap_or(u32::MAX));
}

impl Wire for String {
    const MIN_BYTES: usize = 4;
    fn put(&self, dst: &mut BytesMut) {
        put_len(dst, self.len());
        dst.put_slice(self.as_bytes());
    }
    fn get(src: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
        let len = u32::get(src, what)? as usize;
        let bytes = src.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { what })
    }
}

impl<T: Wire> Wire for Vec<T> {
    const MIN_BYTES: usize = 4;
    fn put(&self, dst: &mut BytesMut) {
        put_len(dst, self.len());
        for item in self {
            item.put(dst);
        }
    }
    fn get(src: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
        let count = u32::get(src, what)?;
        let fits = (count as usize)
            .checked_mul(T::MIN_BYTES.max(1))
            .is_some_and(|need| need <= src.remaining());
        if !fits {
            return Err(DecodeError::ListTooLong {
                what,
                count,
                left: src.remaining(),
            });
        }
        (0..count).map(|_| T::get(src, what)).collect()
    }
}

impl<T: Wire> Wire for Option<T> {
    const MIN_BYTES: usize = 1;
    fn put(&self, dst: &mut BytesMut) {
        match self {
            None => dst.put_u8(0),
            Some(v) => {
                dst.put_u8(1);
                v.put(dst);
            }
        }
    }
    fn get(src: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
        match u8::get(src, what)? {
            0 => Ok(None),
            1 => T::get(src, what).map(Some),
            value => Err(DecodeError::InvalidValue {
                what,
                value: value.into(),
            }),
        }
    }
}

macro_rules! wire_name {
    ($($ty:ident),*) => {$(
        impl Wire for $ty {
            const MIN_BYTES: usize = 4;
            fn put(&self, dst: &mut BytesMut) {
                self.as_str().to_owned().put(dst);
            }
            fn get(src: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
                $ty::new(String::get(src, what)?)
                    .map_err(|source| DecodeError::InvalidName { what, source })
            }
        }
    )*};
}
wire_name!(TopicName, GroupName);

macro_rules! wire_newtype {
    ($($ty:ident($inner:ty)),*) => {$(
        impl Wire for $ty {
            const MIN_BYTES: usize = <$inner as Wire>::MIN_BYTES;
            fn put(&self, dst: &mut BytesMut) {
                self.0.put(dst);
            }
            fn get(src: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
                <$inner>::get(src, what).map(Self)
            }
        }
    )*};
}
wire_newtype!(QueueId(u32), ShardId(u16), BrokerId(u32));

/// Declares a header struct and its [`Wire`] encoding: the fields in order.
///
/// Under `cfg(test)` it also derives `proptest_derive::Arbitrary`, so the
/// property tests can generate every message the protocol has.
macro_rules! wire_struct {
    ($(#[$m:meta])* pub struct $name:ident { $( $(#[$fm:meta])* pub $field:ident : $ty:ty ),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub struct $name { $( $(#[$fm])* pub $field: $ty ),* }

        impl $crate::wire::Wire for $name {
            const MIN_BYTES: usize = 0 $(+ <$ty as $crate::wire::Wire>::MIN_BYTES)*;
            #[allow(unused_variables)]
            fn put(&self, dst: &mut bytes::BytesMut) {
                $( $crate::wire::Wire::put(&self.$field, dst); )*
            }
            #[allow(unused_variables)]
            fn get(
                src: &mut $crate::wire::Reader<'_>,
                what: &'static str,
            ) -> Result<Self, $crate::wire::DecodeError> {
                Ok(Self { $(
                    $field: <$ty as $crate::wire::Wire>::get(
                        src,
                        concat!(stringify!($name), ".", stringify!($field)),
                    )?,
                )* })
            }
        }
    };
}
pub(crate) use wire_struct;

/// Declares a fieldless enum carried as one u8, rejecting unknown values.
macro_rules! wire_enum {
    ($(#[$m:meta])* pub enum $name:ident { $( $(#[$vm:meta])* $variant:ident = $value:literal ),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        #[repr(u8)]
        pub enum $name { $( $(#[$vm])* $variant = $value ),* }

        impl $crate::wire::Wire for $name {
            const MIN_BYTES: usize = 1;
            fn put(&self, dst: &mut bytes::BytesMut) {
                bytes::BufMut::put_u8(dst, *self as u8);
            }
            fn get(
                src: &mut $crate::wire::Reader<'_>,
                what: &'static str,
            ) -> Result<Self, $crate::wire::DecodeError> {
                match <u8 as $crate::wire::Wire>::get(src, what)? {
                    $( $value => Ok(Self::$variant), )*
                    value => Err($crate::wire::DecodeError::InvalidValue { what, value: value.into() }),
                }
            }
        }
    };
}
pub(crate) use wire_enum;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_list_count_is_refused_before_allocation() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(u32::MAX);
        let err = decode::<Vec<u64>>(&buf, "list").unwrap_err();
        assert_eq!(
            err,
            DecodeError::ListTooLong {
                what: "list",
                count: u32::MAX,
                left: 0
            }
        );
    }

    #[test]
    fn strict_decoding() {
        assert_eq!(
            decode::<u32>(&[1, 2, 3], "x"),
            Err(DecodeError::Truncated {
                what: "x",
                needed: 4,
                left: 3
            })
        );
        assert_eq!(
            decode::<u8>(&[1, 2], "x"),
            Err(DecodeError::TrailingBytes { trailing: 1 })
        );
        assert_eq!(
            decode::<bool>(&[2], "flag"),
            Err(DecodeError::InvalidValue {
                what: "flag",
                value: 2
            })
        );
        assert_eq!(
            decode::<String>(&[2, 0, 0, 0, 0xff, 0xfe], "s"),
            Err(DecodeError::InvalidUtf8 { what: "s" })
        );
        let bad_topic = encode(&"a b".to_owned());
        assert!(matches!(
            decode::<TopicName>(&bad_topic, "topic"),
            Err(DecodeError::InvalidName { what: "topic", .. })
        ));
    }

    #[test]
    fn option_and_vec_round_trip() {
        let v: Vec<Option<u64>> = vec![None, Some(7), Some(u64::MAX)];
        assert_eq!(decode::<Vec<Option<u64>>>(&encode(&v), "v").unwrap(), v);
    }
}
