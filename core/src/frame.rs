//! Length-prefixed frames and their incremental decoder.
//!
//! ```text
//! offset size field
//!      0    4 frame_len   u32 LE: bytes after this field (>= 14)
//!      4    1 version     PROTOCOL_VERSION
//!      5    1 kind        0 request, 1 response, 2 oneway
//!      6    2 code        u16 LE request code (responses echo it)
//!      8    4 opaque      u32 LE, chosen by the requester, echoed by the response
//!     12    2 flags       u16 LE, bit 0 ERROR (response carries an ErrorResponse)
//!     14    4 header_len  u32 LE
//!     18    h header      typed header of `code` (see messages.rs)
//!   18+h    . body        the rest of the frame (record batches)
//! ```
//!
//! The decoder checks `frame_len` against its cap before reserving or
//! allocating anything. Errors in the length itself are fatal to the stream
//! (nothing after them can be framed); every other error consumes exactly the
//! bad frame, so the connection stays in sync and can be answered.

use crate::error_code::ErrorCode;
use crate::messages::{ErrorResponse, HeaderError, Request, Response};
use crate::wire::{wire_enum, Wire};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The one protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes before the header: length, version, kind, code, opaque, flags, header length.
pub const FRAME_PREFIX_BYTES: usize = 18;
/// Default cap on a whole frame: room for a 4 MiB batch many times over, yet
/// small enough that a forged length cannot make a shard reserve much.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 << 20;
/// The highest cap a decoder accepts; lengths are u32 and buffers must stay sane.
pub const MAX_FRAME_BYTES_LIMIT: u32 = 1 << 30;

wire_enum! {
    /// What a frame is.
    pub enum FrameKind {
        /// Expects a response with the same opaque id.
        Request = 0,
        /// Answers the request with the same opaque id.
        Response = 1,
        /// Expects no response.
        Oneway = 2,
    }
}

/// Frame flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FrameFlags(u16);

impl FrameFlags {
    /// No flags.
    pub const NONE: FrameFlags = FrameFlags(0);
    /// A response whose header is an [`ErrorResponse`].
    pub const ERROR: FrameFlags = FrameFlags(1);
    const KNOWN: u16 = Self::ERROR.0;

    /// From wire bits; `None` if an unknown bit is set.
    pub fn from_bits(bits: u16) -> Option<Self> {
        (bits & !Self::KNOWN == 0).then_some(FrameFlags(bits))
    }

    /// The wire bits.
    pub fn bits(self) -> u16 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: FrameFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// One frame, its header and body still raw (refcounted slices of the read buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Request, response or oneway.
    pub kind: FrameKind,
    /// The request code (a response echoes its request's).
    pub code: u16,
    /// Pairs a response with its request.
    pub opaque: u32,
    /// Flag bits.
    pub flags: FrameFlags,
    /// The typed header's bytes.
    pub header: Bytes,
    /// The body.
    pub body: Bytes,
}

impl Frame {
    /// A request frame.
    pub fn request(opaque: u32, request: &Request, body: Bytes) -> Self {
        let mut header = BytesMut::new();
        request.encode_header(&mut header);
        Self::new(
            FrameKind::Request,
            request.code().as_u16(),
            opaque,
            header,
            body,
        )
    }

    /// A oneway frame: no response will come.
    pub fn oneway(opaque: u32, request: &Request, body: Bytes) -> Self {
        Self {
            kind: FrameKind::Oneway,
            ..Self::request(opaque, request, body)
        }
    }

    /// A success response.
    pub fn response(opaque: u32, response: &Response, body: Bytes) -> Self {
        let mut header = BytesMut::new();
        response.encode_header(&mut header);
        Self::new(
            FrameKind::Response,
            response.code().as_u16(),
            opaque,
            header,
            body,
        )
    }

    /// An error response to a request with code `code` (known or not).
    pub fn error(opaque: u32, code: u16, error: &ErrorResponse) -> Self {
        let mut header = BytesMut::new();
        error.put(&mut header);
        Self {
            flags: FrameFlags::ERROR,
            ..Self::new(FrameKind::Response, code, opaque, header, Bytes::new())
        }
    }

    fn new(kind: FrameKind, code: u16, opaque: u32, header: BytesMut, body: Bytes) -> Self {
        Self {
            kind,
            code,
            opaque,
            flags: FrameFlags::NONE,
            header: header.freeze(),
            body,
        }
    }

    /// Decodes the typed header of a request or oneway frame.
    pub fn decode_request(&self) -> Result<Request, HeaderError> {
        Request::decode(self.code, &self.header)
    }

    /// Decodes a response: `Ok(Err(_))` is the peer's error response.
    pub fn decode_response(&self) -> Result<Result<Response, ErrorResponse>, HeaderError> {
        if self.flags.contains(FrameFlags::ERROR) {
            let error = crate::wire::decode::<ErrorResponse>(&self.header, "ErrorResponse");
            return match error {
                Ok(error) => Ok(Err(error)),
                Err(source) => Err(HeaderError::Decode {
                    code: crate::messages::RequestCode::from_u16(self.code)
                        .ok_or(HeaderError::UnknownCode(self.code))?,
                    source,
                }),
            };
        }
        Response::decode(self.code, &self.header).map(Ok)
    }

    /// Bytes the encoded frame takes, length field included.
    pub fn encoded_len(&self) -> usize {
        FRAME_PREFIX_BYTES + self.header.len() + self.body.len()
    }

    /// Appends the length prefix, fixed fields and header, but not the body,
    /// so a transport can write the body from its own buffer (writev).
    ///
    /// A frame over [`MAX_FRAME_BYTES_LIMIT`] is refused with
    /// [`FrameError::TooLarge`]: no peer could accept it.
    pub fn encode_head(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_head_for_body(dst, self.body.len())
    }

    /// Like [`Frame::encode_head`] for a body of `body_len` bytes that the
    /// transport writes from elsewhere (several stored batches, say);
    /// `self.body` is ignored.
    pub fn encode_head_for_body(
        &self,
        dst: &mut BytesMut,
        body_len: usize,
    ) -> Result<(), FrameError> {
        let total = FRAME_PREFIX_BYTES + self.header.len() + body_len;
        if total > MAX_FRAME_BYTES_LIMIT as usize {
            return Err(FrameError::TooLarge {
                len: total as u64,
                max: MAX_FRAME_BYTES_LIMIT,
            });
        }
        dst.reserve(FRAME_PREFIX_BYTES + self.header.len());
        // Both fit in u32: total <= MAX_FRAME_BYTES_LIMIT was checked above.
        dst.put_u32_le((total - 4) as u32);
        dst.put_u8(PROTOCOL_VERSION);
        self.kind.put(dst);
        dst.put_u16_le(self.code);
        dst.put_u32_le(self.opaque);
        dst.put_u16_le(self.flags.0);
        dst.put_u32_le(self.header.len() as u32);
        dst.put_slice(&self.header);
        Ok(())
    }

    /// Appends the whole frame.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_head(dst)?;
        dst.put_slice(&self.body);
        Ok(())
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is over the cap. Fatal: the stream cannot be resynchronized.
    #[error("frame of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// The whole frame's length, prefix included.
        len: u64,
        /// The cap.
        max: u32,
    },
    /// The length prefix is smaller than the fixed fields. Fatal.
    #[error("frame length {len} is shorter than the fixed fields")]
    TooShort {
        /// The length field.
        len: u32,
    },
    /// The frame was consumed but its fixed fields are invalid; the stream is
    /// still in sync and the peer can be answered at `opaque`.
    #[error("malformed frame (opaque {opaque}, code {code}): {reason}")]
    Malformed {
        /// The frame's opaque id.
        opaque: u32,
        /// The frame's code.
        code: u16,
        /// Whether the frame was a request (and so expects an answer).
        expects_response: bool,
        /// What is wrong.
        reason: MalformedReason,
    },
}

/// What is wrong with a consumed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedReason {
    /// A version this build does not speak.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// A kind byte outside 0..=2.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// A flag bit this build does not know.
    #[error("unknown flag bits {0:#06x}")]
    Flags(u16),
    /// The header length runs past the frame.
    #[error("header length {header_len} exceeds the {room} bytes left in the frame")]
    HeaderLen {
        /// The header length field.
        header_len: u32,
        /// Bytes after the fixed fields.
        room: usize,
    },
}

impl FrameError {
    /// Whether the connection must be closed (the stream lost its framing).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::Malformed { .. })
    }

    /// The error frame to send back, if the peer expects one: at the bad
    /// frame's opaque id, or at opaque 0 when framing is lost (the peer
    /// learns why before the connection closes).
    pub fn answer(&self) -> Option<Frame> {
        let (opaque, code) = match self {
            FrameError::Malformed {
                expects_response: false,
                ..
            } => return None,
            FrameError::Malformed { opaque, code, .. } => (*opaque, *code),
            FrameError::TooLarge { .. } | FrameError::TooShort { .. } => (0, 0),
        };
        let error = ErrorResponse::new(self.error_code(), self.to_string());
        Some(Frame::error(opaque, code, &error))
    }

    /// The error code to report.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::Malformed {
                reason: MalformedReason::Version(_),
                ..
            } => ErrorCode::UnsupportedVersion,
            FrameError::TooShort { .. } | FrameError::Malformed { .. } => ErrorCode::Malformed,
        }
    }
}

/// Incremental frame decoder: feed it whatever bytes arrived.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame_bytes: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame_bytes` (clamped
    /// to `FRAME_PREFIX_BYTES..=MAX_FRAME_BYTES_LIMIT`).
    pub fn new(max_frame_bytes: u32) -> Self {
        let max_frame_bytes =
            max_frame_bytes.clamp(FRAME_PREFIX_BYTES as u32, MAX_FRAME_BYTES_LIMIT);
        Self { max_frame_bytes }
    }

    /// The cap in force.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Takes one whole frame off the front of `src`, or returns `Ok(None)`
    /// (having reserved room for the rest of a frame that passed the cap
    /// check) when more bytes are needed.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(len_bytes) = src.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*len_bytes);
        let total = u64::from(len) + 4;
        if total > u64::from(self.max_frame_bytes) {
            return Err(FrameError::TooLarge {
                len: total,
                max: self.max_frame_bytes,
            });
        }
        if (total as usize) < FRAME_PREFIX_BYTES {
            return Err(FrameError::TooShort { len });
        }
        let total = total as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(total).freeze();
        frame.advance(4);
        parse_fixed(frame).map(Some)
    }
}

/// Parses the fixed fields of a frame whose length prefix was removed.
fn parse_fixed(mut frame: Bytes) -> Result<Frame, FrameError> {
    let version = frame.get_u8();
    let kind_byte = frame.get_u8();
    let code = frame.get_u16_le();
    let opaque = frame.get_u32_le();
    let flag_bits = frame.get_u16_le();
    let header_len = frame.get_u32_le();
    let malformed = |reason| FrameError::Malformed {
        opaque,
        code,
        expects_response: kind_byte == FrameKind::Request as u8,
        reason,
    };
    if version != PROTOCOL_VERSION {
        return Err(malformed(MalformedReason::Version(version)));
    }
    let kind = match kind_byte {
        0 => FrameKind::Request,
        1 => FrameKind::Response,
        2 => FrameKind::Oneway,
        other => return Err(malformed(MalformedReason::Kind(other))),
    };
    let flags =
        FrameFlags::from_bits(flag_bits).ok_or(malformed(MalformedReason::Flags(flag_bits)))?;
    if header_len as usize > frame.len() {
        return Err(malformed(MalformedReason::HeaderLen {
            header_len,
            room: frame.len(),
        }));
    }
    let header = frame.split_to(header_len as usize);
    Ok(Frame {
        kind,
        code,
        opaque,
        flags,
        header,
        body: frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{FetchRequest, SendBatchResponse};
    use crate::name::{QueueId, TopicName};
    use proptest::prelude::*;

    fn sample_request() -> Frame {
        let req = Request::Fetch(FetchRequest {
            topic: TopicName::new("orders").unwrap(),
            queue_id: QueueId(3),
            offset: 42,
            max_bytes: 1 << 20,
            max_wait_ms: 500,
        });
        Frame::request(7, &req, Bytes::from_static(b"body"))
    }

    fn encoded(frame: &Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf).unwrap();
        buf
    }

    #[test]
    fn round_trip_typed() {
        let frame = sample_request();
        let mut buf = encoded(&frame);
        assert_eq!(buf.len(), frame.encoded_len());
        let got = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(got, frame);
        assert_eq!(
            got.decode_request().unwrap().code(),
            crate::RequestCode::Fetch
        );
    }

    #[test]
    fn error_response_round_trip() {
        let err = ErrorResponse::new(ErrorCode::TopicNotFound, "no topic orders");
        let frame = Frame::error(9, 2, &err);
        let mut buf = encoded(&frame);
        let got = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(got.decode_response().unwrap(), Err(err));
        let ok = Response::SendBatch(SendBatchResponse {
            queue_id: QueueId(0),
            base_offset: 1,
            record_count: 2,
            store_timestamp_ms: 3,
        });
        let mut buf = encoded(&Frame::response(1, &ok, Bytes::new()));
        let got = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(got.decode_response().unwrap(), Ok(ok));
    }

    #[test]
    fn oversize_length_is_refused_before_allocation() {
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        let cap_before = buf.capacity();
        let err = FrameDecoder::new(1024).decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: u64::from(u32::MAX) + 4,
                max: 1024
            }
        );
        assert!(err.is_fatal());
        assert_eq!(buf.capacity(), cap_before);
    }

    #[test]
    fn short_length_is_fatal() {
        let mut buf = BytesMut::from(&3u32.to_le_bytes()[..]);
        let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
        assert_eq!(err, FrameError::TooShort { len: 3 });
        assert!(err.is_fatal());
    }

    #[test]
    fn bad_fields_consume_the_frame_and_keep_sync() {
        let good = encoded(&sample_request());
        for (at, value) in [(4usize, 9u8), (5, 7), (12, 0x80)] {
            let mut buf = good.clone();
            buf[at] = value;
            buf.extend_from_slice(&good);
            let dec = FrameDecoder::default();
            let err = dec.decode(&mut buf).unwrap_err();
            assert!(!err.is_fatal(), "{err}");
            assert!(matches!(err, FrameError::Malformed { opaque: 7, .. }));
            // The next frame decodes: the stream stayed in sync.
            assert_eq!(dec.decode(&mut buf).unwrap().unwrap(), sample_request());
        }
        let mut buf = good.clone();
        buf[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            FrameDecoder::default().decode(&mut buf),
            Err(FrameError::Malformed {
                reason: MalformedReason::HeaderLen { .. },
                ..
            })
        ));
    }

    #[test]
    fn bad_frames_are_answered_where_the_peer_waits() {
        let fatal = FrameError::TooLarge {
            len: 1 << 30,
            max: 1 << 24,
        };
        let a = fatal.answer().unwrap();
        assert_eq!(a.opaque, 0);
        assert!(a.flags.contains(FrameFlags::ERROR));
        let oneway = FrameError::Malformed {
            opaque: 9,
            code: 1,
            expects_response: false,
            reason: MalformedReason::Kind(7),
        };
        assert!(oneway.answer().is_none());
        let request = FrameError::Malformed {
            opaque: 9,
            code: 1,
            expects_response: true,
            reason: MalformedReason::Kind(7),
        };
        let a = request.answer().unwrap();
        assert_eq!((a.opaque, a.code), (9, 1));
        let Err(e) = a.decode_response().unwrap() else {
            panic!("an error answer")
        };
        assert_eq!(e.code, ErrorCode::Malformed);
    }

    #[test]
    fn version_error_maps_to_its_code() {
        let mut buf = encoded(&sample_request());
        buf[4] = 2;
        let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::UnsupportedVersion);
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            any::<FrameKind>(),
            any::<u16>(),
            any::<u32>(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u8>(), 0..256),
        )
            .prop_map(|(kind, code, opaque, error, header, body)| Frame {
                kind,
                code,
                opaque,
                flags: if error {
                    FrameFlags::ERROR
                } else {
                    FrameFlags::NONE
                },
                header: header.into(),
                body: body.into(),
            })
    }

    proptest! {
        /// Any sequence of frames, its stream split at arbitrary byte
        /// boundaries, decodes back to the same frames.
        #[test]
        fn split_stream_round_trips(
            frames in proptest::collection::vec(arb_frame(), 1..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let mut stream = BytesMut::new();
            for f in &frames {
                f.encode(&mut stream).unwrap();
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let dec = FrameDecoder::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut from = 0;
            for to in cuts {
                buf.extend_from_slice(&stream[from..to]);
                from = to;
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, frames);
        }

        /// Typed requests survive framing split at every byte.
        #[test]
        fn typed_requests_round_trip_byte_by_byte(
            reqs in proptest::collection::vec(any::<Request>(), 1..4),
        ) {
            let mut stream = BytesMut::new();
            for (i, r) in reqs.iter().enumerate() {
                Frame::request(i as u32, r, Bytes::new()).encode(&mut stream).unwrap();
            }
            let dec = FrameDecoder::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for b in stream.iter() {
                buf.put_u8(*b);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    got.push(f.decode_request().unwrap());
                }
            }
            prop_assert_eq!(got, reqs);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let dec = FrameDecoder::new(4096);
            let mut buf = BytesMut::from(&bytes[..]);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(f)) => {
                        let _ = f.decode_request();
                        let _ = f.decode_response();
                    }
                    Ok(None) => break,
                    Err(e) if e.is_fatal() => break,
                    Err(_) => {}
                }
            }
        }
    }
}
