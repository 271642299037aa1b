//! Record batches: the unit a producer sends, the broker stores and a
//! consumer fetches, byte for byte the same on the wire and on disk.
//!
//! ```text
//! offset size field (little-endian)
//!      0    3 magic              b"RMB"
//!      3    1 version            BATCH_VERSION
//!      4    4 crc                crc32c of bytes [24, length) then [8, 24)
//!      8    8 base_offset        stamped by the broker at append
//!     16    8 store_timestamp_ms stamped by the broker at append
//!     24    4 length             whole batch, header included
//!     28    4 queue_id
//!     32    4 record_count       >= 1
//!     36    4 flags              no bits defined yet; unknown bits are refused
//!     40    8 first_timestamp_ms born time of the first record
//!     48    8 max_timestamp_ms   greatest born time in the batch
//!     56    8 producer_id
//!     64    4 base_sequence      producer's sequence of the first record
//!     68      records, each:
//!               varint record_len (bytes after it)
//!               varint flags, zigzag-varint timestamp delta from first_timestamp_ms,
//!               varint reconsume_times,
//!               varint key_len, key, varint tag_len, tag,
//!               varint property_count, then per property varint len, key, varint len, value,
//!               body: the rest of the record
//! ```
//!
//! The crc covers every byte after it, but reads the broker's two stamped
//! fields last: crc32c over `[24, length)`, continued over `[8, 24)`. So the
//! crc of the tail is computed once while verifying, and a restamp continues
//! it over the 16 new bytes instead of rereading the records (see [`stamp`]).
//!
//! Every byte after the crc is covered by it, and magic and version are
//! checked by the parser, so any corrupted byte is detected before a record
//! is returned.

use crate::name::QueueId;
use crate::varint;
use bytes::{BufMut, Bytes, BytesMut};

/// First three bytes of every batch.
pub const BATCH_MAGIC: [u8; 3] = *b"RMB";
/// The batch format version this build writes and reads.
pub const BATCH_VERSION: u8 = 1;
/// Bytes before the first record.
pub const BATCH_HEADER_BYTES: usize = 68;
/// Default cap a builder fills up to: big enough to amortize per-batch costs
/// (a fetch returns whole batches), small against the 16 MiB frame cap.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 << 20;
/// Hard cap on a batch's length field: a batch must fit in one frame.
pub const MAX_BATCH_BYTES_LIMIT: usize = crate::frame::MAX_FRAME_BYTES_LIMIT as usize;

const CRC_AT: usize = 4;
const CRC_FROM: usize = 8;
const STAMP_END: usize = 24;
const LENGTH_AT: usize = 24;

/// Why bytes are not a valid batch, or a builder refused a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than the header or the length field says.
    #[error("batch truncated: {needed} bytes needed, {have} present")]
    Truncated {
        /// Bytes the batch needs.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// The first three bytes are not [`BATCH_MAGIC`].
    #[error("bad batch magic {0:02x?}")]
    BadMagic([u8; 3]),
    /// A version this build cannot read.
    #[error("unsupported batch version {0}")]
    UnsupportedVersion(u8),
    /// The length field is below the header size or above the cap.
    #[error("batch length {length} outside {min}..={max}")]
    BadLength {
        /// The length field.
        length: u32,
        /// The header size.
        min: usize,
        /// The cap.
        max: usize,
    },
    /// The bytes were given as one batch but their count differs from its length field.
    #[error("batch length field says {length} bytes but {have} were given")]
    LengthMismatch {
        /// The length field.
        length: u32,
        /// Bytes given.
        have: usize,
    },
    /// The crc does not match: the bytes were damaged.
    #[error("batch crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The crc in the header.
        stored: u32,
        /// The crc of the bytes.
        computed: u32,
    },
    /// A header field breaks an invariant (zero records, unknown flags, timestamps).
    #[error("invalid batch header: {0}")]
    InvalidHeader(&'static str),
    /// A record is malformed.
    #[error("record {index}: {reason}")]
    InvalidRecord {
        /// Its index in the batch.
        index: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// The records do not add up to the header's count and length.
    #[error("batch says {expected} records but holds {found}")]
    CountMismatch {
        /// The header's record count.
        expected: u32,
        /// Records found.
        found: u32,
    },
    /// The builder has no room for the record under its `max_bytes`.
    #[error("record of {record_bytes} bytes does not fit: batch has {used} of {max} bytes")]
    Full {
        /// The encoded record's size.
        record_bytes: usize,
        /// Bytes already used.
        used: usize,
        /// The builder's cap.
        max: usize,
    },
    /// `finish` on a builder with no records.
    #[error("a batch needs at least one record")]
    Empty,
}

/// A batch header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// The stored crc.
    pub crc: u32,
    /// Offset of the first record (0 until the broker stamps it).
    pub base_offset: u64,
    /// Broker store time (0 until stamped).
    pub store_timestamp_ms: i64,
    /// Whole batch length in bytes.
    pub length: u32,
    /// The queue the batch is for.
    pub queue_id: QueueId,
    /// Number of records.
    pub record_count: u32,
    /// Flag bits (none defined yet).
    pub flags: u32,
    /// Born time of the first record.
    pub first_timestamp_ms: i64,
    /// Greatest born time.
    pub max_timestamp_ms: i64,
    /// The producer.
    pub producer_id: u64,
    /// Producer sequence of the first record.
    pub base_sequence: u32,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl BatchHeader {
    /// Parses the header at the start of `buf` without checking the crc:
    /// enough to learn a batch's length while scanning a log or a response.
    pub fn peek(buf: &[u8]) -> Result<Self, BatchError> {
        let Some(h) = buf.get(..BATCH_HEADER_BYTES) else {
            return Err(BatchError::Truncated {
                needed: BATCH_HEADER_BYTES,
                have: buf.len(),
            });
        };
        let magic = [h[0], h[1], h[2]];
        if magic != BATCH_MAGIC {
            return Err(BatchError::BadMagic(magic));
        }
        if h[3] != BATCH_VERSION {
            return Err(BatchError::UnsupportedVersion(h[3]));
        }
        let length = le_u32(h, LENGTH_AT);
        if (length as usize) < BATCH_HEADER_BYTES || length as usize > MAX_BATCH_BYTES_LIMIT {
            return Err(BatchError::BadLength {
                length,
                min: BATCH_HEADER_BYTES,
                max: MAX_BATCH_BYTES_LIMIT,
            });
        }
        Ok(Self {
            crc: le_u32(h, CRC_AT),
            base_offset: le_u64(h, 8),
            store_timestamp_ms: le_u64(h, 16) as i64,
            length,
            queue_id: QueueId(le_u32(h, 28)),
            record_count: le_u32(h, 32),
            flags: le_u32(h, 36),
            first_timestamp_ms: le_u64(h, 40) as i64,
            max_timestamp_ms: le_u64(h, 48) as i64,
            producer_id: le_u64(h, 56),
            base_sequence: le_u32(h, 64),
        })
    }

    /// Offset one past the last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset
            .saturating_add(u64::from(self.record_count))
    }

    fn check_invariants(&self) -> Result<(), BatchError> {
        if self.record_count == 0 {
            return Err(BatchError::InvalidHeader("zero records"));
        }
        if self.flags != 0 {
            return Err(BatchError::InvalidHeader("unknown flag bits"));
        }
        if self.first_timestamp_ms > self.max_timestamp_ms {
            return Err(BatchError::InvalidHeader(
                "first timestamp after max timestamp",
            ));
        }
        Ok(())
    }
}

/// A header whose crc was verified, with the crc of its tail kept for [`stamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The header.
    pub header: BatchHeader,
    /// crc32c of bytes `[24, length)`.
    pub tail_crc: u32,
}

/// The crc a batch's header must carry: crc32c over `[24, length)`, then
/// over the stamped fields `[8, 24)`. `batch` is exactly one batch.
pub fn compute_crc(batch: &[u8]) -> u32 {
    let tail_crc = crc32c::crc32c(batch.get(STAMP_END..).unwrap_or_default());
    crc_with_stamp(tail_crc, batch.get(CRC_FROM..STAMP_END).unwrap_or_default())
}

fn crc_with_stamp(tail_crc: u32, stamp: &[u8]) -> u32 {
    crc32c::crc32c_append(tail_crc, stamp)
}

/// Checks the header and crc of the batch at the start of `buf` (which may
/// hold more bytes after it). Nothing after the header is trusted before this.
pub fn verify(buf: &[u8]) -> Result<Verified, BatchError> {
    let header = BatchHeader::peek(buf)?;
    let length = header.length as usize;
    let Some(batch) = buf.get(..length) else {
        return Err(BatchError::Truncated {
            needed: length,
            have: buf.len(),
        });
    };
    let tail_crc = crc32c::crc32c(&batch[STAMP_END..]);
    let computed = crc_with_stamp(tail_crc, &batch[CRC_FROM..STAMP_END]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    header.check_invariants()?;
    Ok(Verified { header, tail_crc })
}

/// Writes the broker's base offset and store time into a verified batch and
/// fixes its crc by continuing `tail_crc` (from [`verify`]) over the 16 new
/// bytes: O(1) in the batch size.
///
/// `batch` must start with the verified batch's header.
pub fn stamp(batch: &mut [u8], base_offset: u64, store_timestamp_ms: i64, tail_crc: u32) {
    let Some(head) = batch.get_mut(..BATCH_HEADER_BYTES) else {
        return;
    };
    head[8..16].copy_from_slice(&base_offset.to_le_bytes());
    head[16..24].copy_from_slice(&store_timestamp_ms.to_le_bytes());
    let crc = crc_with_stamp(tail_crc, &head[CRC_FROM..STAMP_END]);
    head[CRC_AT..CRC_FROM].copy_from_slice(&crc.to_le_bytes());
}

/// A batch whose header and crc were verified; its records are read lazily
/// as slices of the same buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    header: BatchHeader,
    bytes: Bytes,
    tail_crc: u32,
}

impl Batch {
    /// Verifies `bytes` as exactly one batch (header, length, crc).
    pub fn parse(bytes: Bytes) -> Result<Self, BatchError> {
        let verified = verify(&bytes)?;
        let length = verified.header.length;
        if length as usize != bytes.len() {
            return Err(BatchError::LengthMismatch {
                length,
                have: bytes.len(),
            });
        }
        Ok(Self {
            header: verified.header,
            bytes,
            tail_crc: verified.tail_crc,
        })
    }

    /// [`Batch::parse`], then walks every record to check the structure: what
    /// a broker does before anything reaches disk.
    pub fn parse_validated(bytes: Bytes) -> Result<Self, BatchError> {
        let batch = Self::parse(bytes)?;
        batch.validate()?;
        Ok(batch)
    }

    /// Checks that the records parse and add up to the header's count and
    /// length, and that no born time exceeds the header's maximum. Walks the
    /// bytes in place: no allocation, no refcounting.
    pub fn validate(&self) -> Result<(), BatchError> {
        self.for_each_record(|_| ())
    }

    /// Calls `f` with every record, borrowed from the batch's buffer, after
    /// checking the same structure as [`Batch::validate`]; the cheapest way to
    /// read a batch. Stops at the first malformed record.
    pub fn for_each_record(&self, mut f: impl FnMut(RecordRef<'_>)) -> Result<(), BatchError> {
        let buf: &[u8] = &self.bytes;
        let mut pos = BATCH_HEADER_BYTES;
        for index in 0..self.header.record_count {
            if pos == buf.len() {
                return Err(BatchError::CountMismatch {
                    expected: self.header.record_count,
                    found: index,
                });
            }
            let raw = RawRecord::parse(buf, &mut pos)
                .map_err(|reason| BatchError::InvalidRecord { index, reason })?;
            let record = raw.borrow(buf, &self.header, index);
            if record.timestamp_ms > self.header.max_timestamp_ms {
                return Err(BatchError::InvalidRecord {
                    index,
                    reason: "timestamp above the batch's max timestamp",
                });
            }
            f(record);
        }
        if pos != buf.len() {
            return Err(BatchError::InvalidRecord {
                index: self.header.record_count,
                reason: "bytes after the last record",
            });
        }
        Ok(())
    }

    /// The header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// crc32c of the bytes after the stamped fields, for [`stamp`].
    pub fn tail_crc(&self) -> u32 {
        self.tail_crc
    }

    /// The batch's bytes, exactly as stored.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes the batch, returning its bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Iterates the records; each is a set of slices of the batch's buffer.
    pub fn records(&self) -> Records {
        Records {
            bytes: self.bytes.clone(),
            pos: BATCH_HEADER_BYTES,
            index: 0,
            header: self.header,
            failed: false,
        }
    }
}

/// One record, its byte fields sharing the batch's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its offset in the queue (base offset + index).
    pub offset: u64,
    /// Born time.
    pub timestamp_ms: i64,
    /// Record flag bits (RocketMQ's sysFlag travels here).
    pub flags: u32,
    /// Times this message was redelivered from a retry topic.
    pub reconsume_times: u32,
    /// Lookup key (empty if none).
    pub key: Bytes,
    /// Tag for filtering (empty if none).
    pub tag: Bytes,
    /// User properties.
    pub properties: Properties,
    /// The payload.
    pub body: Bytes,
}

/// A record's properties, still encoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    raw: Bytes,
    count: u32,
}

impl Properties {
    /// Number of properties.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The (key, value) pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (Bytes, Bytes)> + '_ {
        let mut pos = 0;
        // Validated when the record was parsed, so the walk cannot fail; if it
        // somehow did, the iterator ends instead of panicking.
        (0..self.count).map_while(move |_| {
            let key = take_field(&self.raw, &mut pos).ok()?;
            let value = take_field(&self.raw, &mut pos).ok()?;
            Some((key, value))
        })
    }

    /// The value of the first property named `key`.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.iter().find(|(k, _)| k.as_ref() == key).map(|(_, v)| v)
    }
}

fn take_varint(buf: &[u8], pos: &mut usize) -> Result<u64, &'static str> {
    let rest = buf.get(*pos..).ok_or("position past end")?;
    let (value, used) = varint::get(rest).map_err(|e| match e {
        varint::VarintError::Truncated => "varint truncated",
        _ => "varint overflows",
    })?;
    *pos += used;
    Ok(value)
}

fn take_u32(buf: &[u8], pos: &mut usize) -> Result<u32, &'static str> {
    u32::try_from(take_varint(buf, pos)?).map_err(|_| "value above u32")
}

fn take_range(buf: &[u8], pos: &mut usize) -> Result<(usize, usize), &'static str> {
    let len = take_varint(buf, pos)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| pos.checked_add(len))
        .filter(|&end| end <= buf.len())
        .ok_or("field runs past its record")?;
    let range = (*pos, end);
    *pos = end;
    Ok(range)
}

fn take_field(buf: &Bytes, pos: &mut usize) -> Result<Bytes, &'static str> {
    let (from, to) = take_range(buf, pos)?;
    Ok(buf.slice(from..to))
}

/// One record's fields as ranges of the batch buffer: parsed once, then
/// borrowed ([`RecordRef`]) or sliced ([`Record`]).
#[derive(Debug, Clone, Copy)]
struct RawRecord {
    flags: u32,
    delta: i64,
    reconsume_times: u32,
    key: (usize, usize),
    tag: (usize, usize),
    properties: (usize, usize),
    property_count: u32,
    body: (usize, usize),
}

impl RawRecord {
    /// Parses the record at `*pos` of the whole batch buffer `buf`.
    fn parse(buf: &[u8], pos: &mut usize) -> Result<Self, &'static str> {
        let len = take_varint(buf, pos)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| pos.checked_add(len))
            .filter(|&end| end <= buf.len())
            .ok_or("record runs past the batch")?;
        let rec = &buf[..end];
        let flags = take_u32(rec, pos)?;
        let delta = varint::unzigzag(take_varint(rec, pos)?);
        let reconsume_times = take_u32(rec, pos)?;
        let key = take_range(rec, pos)?;
        let tag = take_range(rec, pos)?;
        let property_count = take_u32(rec, pos)?;
        let props_from = *pos;
        for _ in 0..property_count {
            take_range(rec, pos)?;
            take_range(rec, pos)?;
        }
        let properties = (props_from, *pos);
        let body = (*pos, end);
        *pos = end;
        Ok(Self {
            flags,
            delta,
            reconsume_times,
            key,
            tag,
            properties,
            property_count,
            body,
        })
    }

    fn borrow<'a>(&self, buf: &'a [u8], header: &BatchHeader, index: u32) -> RecordRef<'a> {
        RecordRef {
            offset: header.base_offset.wrapping_add(u64::from(index)),
            timestamp_ms: header.first_timestamp_ms.wrapping_add(self.delta),
            flags: self.flags,
            reconsume_times: self.reconsume_times,
            key: &buf[self.key.0..self.key.1],
            tag: &buf[self.tag.0..self.tag.1],
            properties: &buf[self.properties.0..self.properties.1],
            property_count: self.property_count,
            body: &buf[self.body.0..self.body.1],
        }
    }
}

/// A record borrowed from its batch's buffer (see [`Batch::for_each_record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Its offset in the queue.
    pub offset: u64,
    /// Born time.
    pub timestamp_ms: i64,
    /// Record flag bits.
    pub flags: u32,
    /// Times redelivered.
    pub reconsume_times: u32,
    /// Lookup key.
    pub key: &'a [u8],
    /// Tag.
    pub tag: &'a [u8],
    properties: &'a [u8],
    property_count: u32,
    /// The payload.
    pub body: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// The (key, value) property pairs in order.
    pub fn properties(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let raw = self.properties;
        let mut pos = 0;
        (0..self.property_count).map_while(move |_| {
            let (k0, k1) = take_range(raw, &mut pos).ok()?;
            let (v0, v1) = take_range(raw, &mut pos).ok()?;
            Some((&raw[k0..k1], &raw[v0..v1]))
        })
    }
}

/// Iterator over a batch's records. Ends after the first error.
#[derive(Debug)]
pub struct Records {
    bytes: Bytes,
    pos: usize,
    index: u32,
    header: BatchHeader,
    failed: bool,
}

impl Records {
    fn parse_next(&mut self) -> Result<Record, &'static str> {
        let raw = RawRecord::parse(&self.bytes, &mut self.pos)?;
        let slice = |(from, to): (usize, usize)| self.bytes.slice(from..to);
        Ok(Record {
            offset: self.header.base_offset.wrapping_add(u64::from(self.index)),
            timestamp_ms: self.header.first_timestamp_ms.wrapping_add(raw.delta),
            flags: raw.flags,
            reconsume_times: raw.reconsume_times,
            key: slice(raw.key),
            tag: slice(raw.tag),
            properties: Properties {
                raw: slice(raw.properties),
                count: raw.property_count,
            },
            body: slice(raw.body),
        })
    }
}

impl Iterator for Records {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.index == self.header.record_count {
            if self.pos != self.bytes.len() {
                self.failed = true;
                return Some(Err(BatchError::InvalidRecord {
                    index: self.index,
                    reason: "bytes after the last record",
                }));
            }
            return None;
        }
        if self.pos == self.bytes.len() {
            self.failed = true;
            return Some(Err(BatchError::CountMismatch {
                expected: self.header.record_count,
                found: self.index,
            }));
        }
        let index = self.index;
        match self.parse_next() {
            Ok(record) => {
                self.index += 1;
                Some(Ok(record))
            }
            Err(reason) => {
                self.failed = true;
                Some(Err(BatchError::InvalidRecord { index, reason }))
            }
        }
    }
}

/// Iterates batches stored back to back (a fetch body, a log region),
/// verifying each. Ends after the first error.
#[derive(Debug)]
pub struct Batches {
    rest: Bytes,
    failed: bool,
}

impl Batches {
    /// Reads batches from `bytes`.
    pub fn new(bytes: Bytes) -> Self {
        Self {
            rest: bytes,
            failed: false,
        }
    }
}

impl Iterator for Batches {
    type Item = Result<Batch, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let result = verify(&self.rest).map(|v| {
            let bytes = self.rest.split_to(v.header.length as usize);
            Batch {
                header: v.header,
                bytes,
                tail_crc: v.tail_crc,
            }
        });
        self.failed = result.is_err();
        Some(result)
    }
}

/// A record to append, borrowing its fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordInput<'a> {
    /// Born time.
    pub timestamp_ms: i64,
    /// Record flag bits.
    pub flags: u32,
    /// Times redelivered.
    pub reconsume_times: u32,
    /// Lookup key.
    pub key: &'a [u8],
    /// Tag.
    pub tag: &'a [u8],
    /// User properties.
    pub properties: &'a [(&'a [u8], &'a [u8])],
    /// The payload.
    pub body: &'a [u8],
}

impl RecordInput<'_> {
    fn content_len(&self, delta: i64) -> usize {
        let field = |b: &[u8]| varint::encoded_len(b.len() as u64) + b.len();
        varint::encoded_len(u64::from(self.flags))
            + varint::encoded_len(varint::zigzag(delta))
            + varint::encoded_len(u64::from(self.reconsume_times))
            + field(self.key)
            + field(self.tag)
            + varint::encoded_len(self.properties.len() as u64)
            + self
                .properties
                .iter()
                .map(|(k, v)| field(k) + field(v))
                .sum::<usize>()
            + self.body.len()
    }
}

/// Builds a batch record by record, into one buffer.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    queue_id: QueueId,
    producer_id: u64,
    base_sequence: u32,
    record_count: u32,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
    max_bytes: usize,
}

impl BatchBuilder {
    /// A builder for `queue_id` that fills up to [`DEFAULT_MAX_BATCH_BYTES`].
    pub fn new(queue_id: QueueId) -> Self {
        Self::with_capacity(queue_id, 4096)
    }

    /// A builder with `capacity` bytes reserved up front.
    pub fn with_capacity(queue_id: QueueId, capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity.max(BATCH_HEADER_BYTES));
        buf.put_bytes(0, BATCH_HEADER_BYTES);
        Self {
            buf,
            queue_id,
            producer_id: 0,
            base_sequence: 0,
            record_count: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: i64::MIN,
            max_bytes: DEFAULT_MAX_BATCH_BYTES,
        }
    }

    /// Sets the producer id and the sequence of the first record.
    pub fn producer(mut self, producer_id: u64, base_sequence: u32) -> Self {
        self.producer_id = producer_id;
        self.base_sequence = base_sequence;
        self
    }

    /// Caps the batch's size (clamped to at least one header, at most [`MAX_BATCH_BYTES_LIMIT`]).
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes.clamp(BATCH_HEADER_BYTES, MAX_BATCH_BYTES_LIMIT);
        self
    }

    /// Bytes the batch takes so far, header included.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Records pushed so far.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes `record` would add to this batch.
    pub fn encoded_len(&self, record: &RecordInput<'_>) -> usize {
        let content = record.content_len(self.delta(record.timestamp_ms));
        varint::encoded_len(content as u64) + content
    }

    fn delta(&self, timestamp_ms: i64) -> i64 {
        if self.record_count == 0 {
            0
        } else {
            timestamp_ms.wrapping_sub(self.first_timestamp_ms)
        }
    }

    /// Appends a record, or returns [`BatchError::Full`] (leaving the builder
    /// as it was) when it would take the batch over its cap.
    pub fn push(&mut self, record: &RecordInput<'_>) -> Result<(), BatchError> {
        let delta = self.delta(record.timestamp_ms);
        let content_bytes = record.content_len(delta);
        let record_bytes = varint::encoded_len(content_bytes as u64) + content_bytes;
        if self.buf.len() + record_bytes > self.max_bytes || self.record_count == u32::MAX {
            return Err(BatchError::Full {
                record_bytes,
                used: self.buf.len(),
                max: self.max_bytes,
            });
        }
        if self.record_count == 0 {
            self.first_timestamp_ms = record.timestamp_ms;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(record.timestamp_ms);
        self.record_count += 1;
        let buf = &mut self.buf;
        buf.reserve(record_bytes);
        varint::put(buf, content_bytes as u64);
        varint::put(buf, u64::from(record.flags));
        varint::put(buf, varint::zigzag(delta));
        varint::put(buf, u64::from(record.reconsume_times));
        put_field(buf, record.key);
        put_field(buf, record.tag);
        varint::put(buf, record.properties.len() as u64);
        for (k, v) in record.properties {
            put_field(buf, k);
            put_field(buf, v);
        }
        buf.put_slice(record.body);
        Ok(())
    }

    /// Writes the header and crc; the batch is ready to send.
    pub fn finish(self) -> Result<Bytes, BatchError> {
        if self.record_count == 0 {
            return Err(BatchError::Empty);
        }
        let mut buf = self.buf;
        let length = buf.len() as u32;
        let h = &mut buf[..BATCH_HEADER_BYTES];
        h[0..3].copy_from_slice(&BATCH_MAGIC);
        h[3] = BATCH_VERSION;
        h[24..28].copy_from_slice(&length.to_le_bytes());
        h[28..32].copy_from_slice(&self.queue_id.0.to_le_bytes());
        h[32..36].copy_from_slice(&self.record_count.to_le_bytes());
        h[36..40].copy_from_slice(&0u32.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_timestamp_ms.to_le_bytes());
        h[48..56].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        h[56..64].copy_from_slice(&self.producer_id.to_le_bytes());
        h[64..68].copy_from_slice(&self.base_sequence.to_le_bytes());
        let crc = compute_crc(&buf);
        buf[CRC_AT..CRC_FROM].copy_from_slice(&crc.to_le_bytes());
        Ok(buf.freeze())
    }
}

fn put_field(buf: &mut BytesMut, field: &[u8]) {
    varint::put(buf, field.len() as u64);
    buf.put_slice(field);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(n: usize) -> Bytes {
        let mut b = BatchBuilder::new(QueueId(3)).producer(77, 1000);
        for i in 0..n {
            let body = format!("body-{i}");
            let key = format!("k{i}");
            b.push(&RecordInput {
                timestamp_ms: 1_700_000_000_000 + i as i64,
                key: key.as_bytes(),
                tag: b"tagA",
                properties: &[(b"p", b"v")],
                body: body.as_bytes(),
                ..Default::default()
            })
            .unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn build_and_read() {
        let bytes = sample(5);
        let batch = Batch::parse_validated(bytes.clone()).unwrap();
        let h = batch.header();
        assert_eq!(h.queue_id, QueueId(3));
        assert_eq!(h.record_count, 5);
        assert_eq!(h.producer_id, 77);
        assert_eq!(h.base_sequence, 1000);
        assert_eq!(h.first_timestamp_ms, 1_700_000_000_000);
        assert_eq!(h.max_timestamp_ms, 1_700_000_000_004);
        let recs: Vec<Record> = batch.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(recs.len(), 5);
        assert_eq!(recs[2].body, "body-2");
        assert_eq!(recs[2].key, "k2");
        assert_eq!(recs[2].tag, "tagA");
        assert_eq!(recs[2].timestamp_ms, 1_700_000_000_002);
        assert_eq!(recs[2].properties.get(b"p").unwrap(), "v");
        assert_eq!(recs[2].offset, 2);
    }

    #[test]
    fn bodies_are_not_copied() {
        let bytes = sample(2);
        let batch = Batch::parse(bytes.clone()).unwrap();
        let rec = batch.records().next().unwrap().unwrap();
        let range = bytes.as_ptr_range();
        assert!(range.contains(&rec.body.as_ptr()));
    }

    #[test]
    fn stamp_keeps_crc_valid_without_rehashing() {
        let bytes = sample(3);
        let v = verify(&bytes).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        stamp(&mut buf, 1_000_000, 1_700_000_123_456, v.tail_crc);
        let batch = Batch::parse_validated(buf.freeze()).unwrap();
        assert_eq!(batch.header().base_offset, 1_000_000);
        assert_eq!(batch.header().store_timestamp_ms, 1_700_000_123_456);
        assert_eq!(batch.header().next_offset(), 1_000_003);
        let last = batch.records().last().unwrap().unwrap();
        assert_eq!(last.offset, 1_000_002);
    }

    #[test]
    fn builder_cap_and_empty() {
        assert_eq!(
            BatchBuilder::new(QueueId(0)).finish(),
            Err(BatchError::Empty)
        );
        let mut b = BatchBuilder::new(QueueId(0)).max_bytes(BATCH_HEADER_BYTES + 20);
        let body = [0u8; 10];
        let rec = RecordInput {
            body: &body,
            ..Default::default()
        };
        b.push(&rec).unwrap();
        let before = b.len_bytes();
        assert!(matches!(b.push(&rec), Err(BatchError::Full { .. })));
        assert_eq!(b.len_bytes(), before);
        assert_eq!(b.record_count(), 1);
    }

    #[test]
    fn batches_iterates_back_to_back() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&sample(2));
        buf.extend_from_slice(&sample(3));
        let all: Vec<Batch> = Batches::new(buf.freeze())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            all.iter()
                .map(|b| b.header().record_count)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        // A torn tail is reported, not skipped.
        let bytes = sample(2);
        let torn = bytes.slice(..bytes.len() - 1);
        let res: Vec<_> = Batches::new(torn).collect();
        assert!(matches!(
            res.as_slice(),
            [Err(BatchError::Truncated { .. })]
        ));
    }

    #[test]
    fn structure_is_checked_even_with_a_valid_crc() {
        // A client can compute a valid crc over garbage; validate() catches it.
        let mut bytes = BytesMut::from(&sample(2)[..]);
        let count_at = 32;
        bytes[count_at..count_at + 4].copy_from_slice(&5u32.to_le_bytes());
        let crc = compute_crc(&bytes);
        bytes[CRC_AT..CRC_FROM].copy_from_slice(&crc.to_le_bytes());
        let err = Batch::parse_validated(bytes.freeze()).unwrap_err();
        assert_eq!(
            err,
            BatchError::CountMismatch {
                expected: 5,
                found: 2
            }
        );
    }

    /// (timestamp delta, flags, key, tag, properties, body)
    type ArbRecord = (i64, u32, Vec<u8>, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

    fn arb_record() -> impl Strategy<Value = ArbRecord> {
        (
            -1_000_000i64..1_000_000,
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..8),
            proptest::collection::vec(any::<u8>(), 0..8),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 0..4),
                    proptest::collection::vec(any::<u8>(), 0..4),
                ),
                0..3,
            ),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
    }

    proptest! {
        #[test]
        fn round_trips(
            base_ts in any::<i64>().prop_map(|t| t / 4),
            recs in proptest::collection::vec(arb_record(), 1..20),
        ) {
            let mut b = BatchBuilder::new(QueueId(9));
            for (dt, flags, key, tag, props, body) in &recs {
                let props: Vec<(&[u8], &[u8])> =
                    props.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
                b.push(&RecordInput {
                    timestamp_ms: base_ts + dt,
                    flags: *flags,
                    reconsume_times: 1,
                    key,
                    tag,
                    properties: &props,
                    body,
                }).unwrap();
            }
            let batch = Batch::parse_validated(b.finish().unwrap()).unwrap();
            let got: Vec<Record> = batch.records().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(got.len(), recs.len());
            let mut borrowed = Vec::new();
            batch.for_each_record(|r| {
                let props: Vec<(Vec<u8>, Vec<u8>)> =
                    r.properties().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
                borrowed.push((r.offset, r.timestamp_ms, r.flags, r.key.to_vec(), r.body.to_vec(), props));
            }).unwrap();
            let owned: Vec<_> = got.iter().map(|r| {
                let props: Vec<(Vec<u8>, Vec<u8>)> =
                    r.properties.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
                (r.offset, r.timestamp_ms, r.flags, r.key.to_vec(), r.body.to_vec(), props)
            }).collect();
            prop_assert_eq!(borrowed, owned);
            for (r, (dt, flags, key, tag, props, body)) in got.iter().zip(&recs) {
                prop_assert_eq!(r.timestamp_ms, base_ts + dt);
                prop_assert_eq!(r.flags, *flags);
                prop_assert_eq!(&r.key[..], &key[..]);
                prop_assert_eq!(&r.tag[..], &tag[..]);
                prop_assert_eq!(&r.body[..], &body[..]);
                let got_props: Vec<(Bytes, Bytes)> = r.properties.iter().collect();
                prop_assert_eq!(got_props.len(), props.len());
                for ((gk, gv), (k, v)) in got_props.iter().zip(props) {
                    prop_assert_eq!(&gk[..], &k[..]);
                    prop_assert_eq!(&gv[..], &v[..]);
                }
            }
        }

        /// Any single mutated byte is caught by the crc or refused by the
        /// parser: no damaged batch yields a record.
        #[test]
        fn any_single_byte_mutation_is_caught(
            recs in proptest::collection::vec(arb_record(), 1..6),
            at in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let mut b = BatchBuilder::new(QueueId(1));
            for (dt, _, key, tag, _, body) in &recs {
                b.push(&RecordInput { timestamp_ms: *dt, key, tag, body, ..Default::default() }).unwrap();
            }
            let good = b.finish().unwrap();
            let mut bad = BytesMut::from(&good[..]);
            let i = at.index(bad.len());
            bad[i] ^= xor;
            prop_assert!(Batch::parse(bad.clone().freeze()).is_err());
            prop_assert!(verify(&bad).is_err());
        }

        /// A hostile producer can send garbage records under a correct crc:
        /// validation refuses it or the records are sound, and nothing panics.
        #[test]
        fn garbage_under_a_valid_crc_is_refused_or_sound(
            records in proptest::collection::vec(any::<u8>(), 0..256),
            count in 1u32..8,
        ) {
            let mut buf = BytesMut::from(&sample(1)[..BATCH_HEADER_BYTES]);
            buf.extend_from_slice(&records);
            let length = buf.len() as u32;
            buf[24..28].copy_from_slice(&length.to_le_bytes());
            buf[32..36].copy_from_slice(&count.to_le_bytes());
            let crc = compute_crc(&buf);
            buf[CRC_AT..CRC_FROM].copy_from_slice(&crc.to_le_bytes());
            let batch = Batch::parse(buf.freeze()).unwrap();
            if batch.validate().is_ok() {
                let recs: Vec<Record> = batch.records().collect::<Result<_, _>>().unwrap();
                prop_assert_eq!(recs.len() as u32, count);
            }
        }

        /// Arbitrary bytes never panic the reader.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for batch in Batches::new(Bytes::from(bytes)).flatten() {
                let _ = batch.validate();
                for r in batch.records().flatten() {
                    let _ = r.properties.iter().count();
                }
            }
        }
    }
}
