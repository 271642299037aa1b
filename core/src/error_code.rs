//! Stable numeric error codes carried by error responses.
//!
//! A number, once published, keeps its meaning forever and is never reused,
//! even after its variant is retired. Numbers are grouped by layer: 1-19
//! framing and input, 20-39 names and metadata, 40-59 storage, 60-79 load and
//! lifecycle, 99 internal. A number this build does not know decodes as
//! [`ErrorCode::Unknown`], so older clients keep working against newer brokers.

use std::fmt;

macro_rules! error_codes {
    ($( $(#[$m:meta])* $variant:ident = $num:literal, retriable: $retry:literal; )*) => {
        /// An error code on the wire. See `core/PROTOCOL.md` for the table.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$m])* $variant, )*
            /// A number this build does not know; kept so it can be passed on.
            Unknown(u16),
        }

        impl ErrorCode {
            /// Every known code, in number order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The number on the wire.
            pub fn as_u16(self) -> u16 {
                match self {
                    $( ErrorCode::$variant => $num, )*
                    ErrorCode::Unknown(n) => n,
                }
            }

            /// The code for a number; unknown numbers are kept as [`ErrorCode::Unknown`].
            pub fn from_u16(n: u16) -> Self {
                match n {
                    $( $num => ErrorCode::$variant, )*
                    n => ErrorCode::Unknown(n),
                }
            }

            /// The variant's name, as `PROTOCOL.md` lists it.
            pub fn name(self) -> &'static str {
                match self {
                    $( ErrorCode::$variant => stringify!($variant), )*
                    ErrorCode::Unknown(_) => "Unknown",
                }
            }

            /// Whether the same request may succeed if retried (perhaps
            /// elsewhere, after refreshing routes). Unknown codes are not.
            pub fn is_retriable(self) -> bool {
                match self {
                    $( ErrorCode::$variant => $retry, )*
                    ErrorCode::Unknown(_) => false,
                }
            }
        }
    };
}

error_codes! {
    /// The frame's header or body could not be parsed.
    Malformed = 1, retriable: false;
    /// The frame's protocol version is not one this peer speaks.
    UnsupportedVersion = 2, retriable: false;
    /// The request code is not one this peer knows.
    UnknownRequestCode = 3, retriable: false;
    /// The frame is longer than the receiver's cap.
    FrameTooLarge = 4, retriable: false;
    /// A record batch failed its crc32c check.
    CrcMismatch = 5, retriable: false;
    /// A record batch's crc matched but its structure is invalid.
    InvalidBatch = 6, retriable: false;
    /// A record batch is larger than the broker accepts.
    BatchTooLarge = 7, retriable: false;
    /// A request field is outside its domain (a zero queue count, say).
    InvalidArgument = 8, retriable: false;
    /// A topic or group name breaks the naming rules, or uses a reserved prefix.
    InvalidName = 20, retriable: false;
    /// The topic does not exist on this broker.
    TopicNotFound = 21, retriable: true;
    /// The topic exists but has no such queue.
    QueueNotFound = 22, retriable: true;
    /// A create named a topic that already exists with other settings.
    TopicExists = 23, retriable: false;
    /// The request reached a broker or shard that does not own the queue;
    /// refresh the route and retry.
    NotOwner = 24, retriable: true;
    /// No committed offset for this group and queue.
    OffsetNotFound = 25, retriable: false;
    /// The name server knows no broker by that name.
    BrokerNotFound = 26, retriable: true;
    /// The fetch offset is outside the queue's retained range; `detail`
    /// carries the earliest offset still stored.
    OffsetOutOfRange = 27, retriable: false;
    /// The topic's permissions forbid this: a send to a topic that is not
    /// writable, or a fetch from one that is not readable.
    NoPermission = 28, retriable: false;
    /// A write or fsync failed earlier; the shard's log refuses writes until restarted.
    StorePoisoned = 40, retriable: false;
    /// The disk is full; nothing acknowledged was lost.
    DiskFull = 41, retriable: true;
    /// Any other storage failure.
    StorageIo = 42, retriable: true;
    /// Over a memory or in-flight bound; back off and retry.
    Busy = 60, retriable: true;
    /// The broker is shutting down.
    ShuttingDown = 61, retriable: true;
    /// The broker gave up waiting for the operation.
    Timeout = 62, retriable: true;
    /// A bug: the broker reached a state it did not expect.
    Internal = 99, retriable: false;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.as_u16())
    }
}

impl crate::wire::Wire for ErrorCode {
    const MIN_BYTES: usize = 2;
    fn put(&self, dst: &mut bytes::BytesMut) {
        self.as_u16().put(dst);
    }
    fn get(
        src: &mut crate::wire::Reader<'_>,
        what: &'static str,
    ) -> Result<Self, crate::wire::DecodeError> {
        u16::get(src, what).map(Self::from_u16)
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.as_u16())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u16::deserialize(d).map(Self::from_u16)
    }
}

#[cfg(test)]
mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    impl Arbitrary for ErrorCode {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            any::<u16>().prop_map(ErrorCode::from_u16).boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn numbers_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.as_u16()), "{code} reused");
            assert_eq!(ErrorCode::from_u16(code.as_u16()), code);
        }
        assert_eq!(ErrorCode::from_u16(9999), ErrorCode::Unknown(9999));
        assert_eq!(ErrorCode::Unknown(9999).as_u16(), 9999);
    }

    #[test]
    fn published_numbers_never_change() {
        // A wire contract: changing a line here breaks deployed clients.
        assert_eq!(ErrorCode::Malformed.as_u16(), 1);
        assert_eq!(ErrorCode::CrcMismatch.as_u16(), 5);
        assert_eq!(ErrorCode::TopicNotFound.as_u16(), 21);
        assert_eq!(ErrorCode::NotOwner.as_u16(), 24);
        assert_eq!(ErrorCode::OffsetOutOfRange.as_u16(), 27);
        assert_eq!(ErrorCode::StorePoisoned.as_u16(), 40);
        assert_eq!(ErrorCode::Busy.as_u16(), 60);
        assert_eq!(ErrorCode::Internal.as_u16(), 99);
    }
}
