//! The shard's commit log: fixed-size segment files holding every queue's
//! batches interleaved, in append order.
//!
//! A log entry is a 16-byte prefix and the batch, byte for byte as sent
//! (with the broker's offset and store time stamped in):
//!
//! ```text
//! offset size field
//!      0    4 qnum        u32 LE, the shard-local queue number (>= 1)
//!      4    4 generation  u32 LE, the store run that wrote the entry
//!      8    4 check       crc32c(qnum LE ++ generation LE ++ batch crc LE)
//!     12    4 reserved    0
//!     16    . batch       a record batch (core/PROTOCOL.md)
//! ```
//!
//! Every open durably bumps the generation before it appends, so along a
//! valid log generations never decrease. Bytes a crash left beyond the end
//! of the log (a torn block of lost, unsynced writes) carry an older
//! generation than the entries a later run writes before them: recovery
//! cuts there instead of taking them for new records at reused offsets.
//!
//! Entries never straddle segments: an entry that does not fit leaves the
//! rest of its segment zero and goes to the next. Eight zero bytes where a
//! prefix belongs mean "no more entries in this segment". Segment files are
//! named by their first log position, `<position:020>.log`.

use super::disk::{align_up, Disk, DiskError, DiskFile, BLOCK_BYTES};
use super::{SegmentPrepare, StoreConfig, StoreError};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

/// Bytes before the batch in a log entry.
pub const ENTRY_PREFIX_BYTES: usize = 16;

/// The labels of a log entry: which queue, written by which run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryPrefix {
    pub(crate) qnum: u32,
    pub(crate) generation: u32,
}

impl EntryPrefix {
    fn check(&self, batch_crc: u32) -> u32 {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.qnum.to_le_bytes());
        b[4..8].copy_from_slice(&self.generation.to_le_bytes());
        b[8..].copy_from_slice(&batch_crc.to_le_bytes());
        crc32c::crc32c(&b)
    }

    /// Writes the prefix for a batch whose crc is `batch_crc` into `out`.
    pub(crate) fn write(&self, batch_crc: u32, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.qnum.to_le_bytes());
        out[4..8].copy_from_slice(&self.generation.to_le_bytes());
        out[8..12].copy_from_slice(&self.check(batch_crc).to_le_bytes());
        out[12..16].copy_from_slice(&0u32.to_le_bytes());
    }

    /// Whether `bytes` (a prefix's place) are all zero: no entry there.
    pub(crate) fn is_empty(bytes: &[u8]) -> bool {
        bytes.iter().take(ENTRY_PREFIX_BYTES).all(|&b| b == 0)
    }

    /// Reads a prefix and checks it against the batch's crc.
    pub(crate) fn read(bytes: &[u8], batch_crc: u32) -> Result<Self, &'static str> {
        let word = |at: usize| {
            bytes
                .get(at..at + 4)
                .and_then(|w| w.try_into().ok())
                .map(u32::from_le_bytes)
        };
        let (Some(qnum), Some(generation), Some(check), Some(reserved)) =
            (word(0), word(4), word(8), word(12))
        else {
            return Err("entry prefix truncated");
        };
        let prefix = Self { qnum, generation };
        if reserved != 0 || check != prefix.check(batch_crc) {
            return Err("entry prefix check fails");
        }
        Ok(prefix)
    }
}

/// The file name of the segment starting at `start`.
pub(crate) fn segment_name(start: u64) -> String {
    format!("{start:020}.log")
}

/// The start position named by a segment file name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// Capacity of a pending chunk: a few MiB is a full round at speed. Rounds
/// of every size get the same capacity, so a buffer freed after its write
/// is what the next round's allocation gets back, still in the CPU cache.
///
/// Tried instead (store bench `sync`, recycled segments, `store-ab.py`):
/// - chunks sized after the last round, kept by the tail cache with no
///   copy: 20 % and 40 % more CPU per ack in two A/Bs (morning of
///   2026-12-03);
/// - each round carved, in turn, from the room a 4 MiB buffer had left
///   (no copy for the tail cache): fewer acks/s in 5 of 6 pairs, a median
///   1.29 against 1.21 µs of CPU per ack;
/// - sized again once the bench's histograms no longer filled the CPU
///   caches, half again the last round and that rounded to a power of
///   two: more CPU per ack and fewer acks/s in 4 of 4 pairs each
///   (`bench-results/store-ab-2026-12-03T21-49-57Z-*`, `...T21-56-28Z-*`).
///
/// Without the copy, entries are placed into memory the CPU cache has not
/// seen for 64 MiB, which costs more than the copy it saves.
const CHUNK_CAPACITY_BYTES: usize = 4 << 20;

/// Zero-fill writes this much at a time: large sequential writes.
const ZERO_FILL_WRITE_BYTES: usize = 1 << 20;

/// Suffix of a retired segment kept for reuse ([`SegmentPrepare::Recycle`]).
pub(crate) const SPARE_SUFFIX: &str = ".spare";

/// A spare (retired) segment in the log folder, if any.
async fn find_spare<D: Disk>(
    disk: &D,
    cfg: &StoreConfig,
) -> Result<Option<std::path::PathBuf>, StoreError> {
    let names = disk.list(&cfg.log_dir()).await?;
    Ok(names
        .into_iter()
        .find(|n| n.ends_with(SPARE_SUFFIX))
        .map(|n| cfg.log_dir().join(n)))
}

/// Retires the segment starting at `start`: with [`SegmentPrepare::Recycle`]
/// and no spare yet it becomes the spare, otherwise it is removed.
pub(crate) async fn retire_segment<D: Disk>(
    disk: &D,
    cfg: &StoreConfig,
    start: u64,
) -> Result<(), StoreError> {
    let path = cfg.log_dir().join(segment_name(start));
    if cfg.segment_prepare == SegmentPrepare::Recycle && find_spare(disk, cfg).await?.is_none() {
        let spare = cfg.log_dir().join(format!("{start:020}{SPARE_SUFFIX}"));
        disk.rename(&path, &spare).await?;
        disk.sync_dir(&cfg.log_dir()).await?;
        return Ok(());
    }
    disk.remove(&path).await?;
    Ok(())
}

/// Creates the segment file starting at `start`, ready for appends: a
/// recycled spare renamed into place ([`SegmentPrepare::Recycle`]), or a new
/// file with its blocks allocated (and, with [`SegmentPrepare::ZeroFill`],
/// written with zeros, so appends overwrite written blocks and an fdatasync
/// need not commit extent changes). A failure removes the half-made file.
pub(crate) async fn create_segment<D: Disk>(
    disk: &D,
    cfg: &StoreConfig,
    start: u64,
) -> Result<D::File, StoreError> {
    let path = cfg.log_dir().join(segment_name(start));
    if cfg.segment_prepare == SegmentPrepare::Recycle {
        if let Some(spare) = find_spare(disk, cfg).await? {
            disk.rename(&spare, &path).await?;
            disk.sync_dir(&cfg.log_dir()).await?;
            let file = open_segment(disk, cfg, &path).await?;
            if file.size().await? >= cfg.segment_bytes {
                return Ok(file);
            }
            // A spare of another size cannot serve as a segment here.
            drop(file);
            disk.remove(&path).await?;
        }
    }
    let file = disk.open(&path, true).await?;
    let prepared = async {
        file.allocate(cfg.segment_bytes).await?;
        if cfg.segment_prepare == SegmentPrepare::ZeroFill {
            let zeros = vec![0u8; ZERO_FILL_WRITE_BYTES];
            let mut at = 0;
            while at < cfg.segment_bytes {
                let n = (cfg.segment_bytes - at).min(zeros.len() as u64) as usize;
                file.write_at(at, &zeros[..n]).await?;
                at += n as u64;
            }
            file.sync().await?;
        }
        disk.sync_dir(&cfg.log_dir()).await
    };
    if let Err(e) = prepared.await {
        let _ = disk.remove(&path).await;
        return Err(if e.is_no_space() {
            StoreError::DiskFull(e)
        } else {
            StoreError::Io(e)
        });
    }
    if !cfg.log_write_through() {
        return Ok(file);
    }
    // Prepared with plain writes (a zero-fill would otherwise flush every
    // MiB), appended to write-through.
    let reopened = async {
        file.close().await?;
        open_segment(disk, cfg, &path).await
    };
    match reopened.await {
        Ok(file) => Ok(file),
        Err(e) => {
            let _ = disk.remove(&path).await;
            Err(StoreError::Io(e))
        }
    }
}

/// Opens an existing segment for appending and reading: write-through
/// when [`StoreConfig::log_write_through`].
pub(crate) async fn open_segment<D: Disk>(
    disk: &D,
    cfg: &StoreConfig,
    path: &std::path::Path,
) -> Result<D::File, DiskError> {
    if cfg.log_write_through() {
        disk.open_write_through(path).await
    } else {
        disk.open(path, false).await
    }
}

/// Bytes placed but not yet handed to the disk, all in one segment, laid
/// out as they will be written, so the write needs no copy: `buf[start..]`
/// begins at a block-aligned address with the block holding `pos` (its
/// `lead` bytes before `pos` are filled in by the flusher, which has them),
/// and the buffer has room to zero-pad the last block.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) seg_start: u64,
    pub(crate) pos: u64,
    /// Index in `buf` of the first block (the gap aligns its address).
    pub(crate) start: usize,
    /// Offset of `pos` in its block.
    pub(crate) lead: usize,
    pub(crate) buf: Vec<u8>,
}

impl Chunk {
    /// An empty chunk at `pos` with room for `capacity` bytes of entries.
    fn new(seg_start: u64, pos: u64, capacity: usize) -> Self {
        let block = BLOCK_BYTES as usize;
        let lead = ((pos - seg_start) % BLOCK_BYTES) as usize;
        let mut buf = Vec::with_capacity(block - 1 + align_up((lead + capacity) as u64) as usize);
        let start = (block - buf.as_ptr() as usize % block) % block;
        buf.resize(start + lead, 0);
        Self {
            seg_start,
            pos,
            start,
            lead,
            buf,
        }
    }

    /// Bytes of entries placed.
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.start - self.lead
    }

    /// Whether `len` more bytes fit, with the padding of the last block.
    fn has_room(&self, len: usize) -> bool {
        let used = (self.buf.len() - self.start + len) as u64;
        self.start + align_up(used) as usize <= self.buf.capacity()
    }
}

/// An append waiting for its bytes to be acknowledged.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) end_pos: u64,
    pub(crate) qnum: u32,
    pub(crate) next_offset: u64,
    pub(crate) tx: Option<super::ack::AckSender>,
}

/// Positions and buffers of the log, mutated without awaiting.
#[derive(Debug)]
pub(crate) struct LogState<F> {
    pub(crate) segment_bytes: u64,
    /// Every segment file that holds or may hold entries, by start.
    pub(crate) segments: BTreeMap<u64, Rc<F>>,
    /// The following segment, prepared ahead of need.
    pub(crate) next_segment: Option<(u64, Rc<F>)>,
    pub(crate) active_start: u64,
    /// Where the next entry goes.
    pub(crate) end_pos: u64,
    pub(crate) pending: VecDeque<Chunk>,
    /// Everything before this is written.
    pub(crate) written_pos: u64,
    /// Everything before this is durable (fdatasynced).
    pub(crate) synced_pos: u64,
    /// End of the last acknowledged entry (written, or synced in `sync`
    /// mode): an entry boundary, so a checkpoint can record it.
    pub(crate) acked_pos: u64,
    /// A checkpoint waits for the log to be durable up to here: in `async`
    /// mode the flusher starts an fdatasync for it without waiting for
    /// its interval.
    pub(crate) sync_wanted_to: u64,
    pub(crate) waiters: VecDeque<Waiter>,
}

impl<F: DiskFile> LogState<F> {
    pub(crate) fn new(segment_bytes: u64, active_start: u64, end_pos: u64) -> Self {
        Self {
            segment_bytes,
            segments: BTreeMap::new(),
            next_segment: None,
            active_start,
            end_pos,
            pending: VecDeque::new(),
            written_pos: end_pos,
            synced_pos: end_pos,
            acked_pos: end_pos,
            sync_wanted_to: 0,
            waiters: VecDeque::new(),
        }
    }

    /// Whether an entry of `len` bytes fits in the active segment.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.end_pos + len as u64 <= self.active_start + self.segment_bytes
    }

    /// Makes the prepared next segment the active one.
    pub(crate) fn roll(&mut self, start: u64, file: Rc<F>) {
        debug_assert_eq!(start, self.active_start + self.segment_bytes);
        self.segments.insert(start, file);
        self.active_start = start;
        self.end_pos = start;
    }

    /// The buffer to append `len` bytes into at `end_pos`, and that position.
    /// A round that outgrows its chunk continues in a new one: a chunk never
    /// grows by reallocation (a copy each time).
    pub(crate) fn reserve(&mut self, len: usize) -> (&mut Vec<u8>, u64) {
        let pos = self.end_pos;
        let continues = self.pending.back().is_some_and(|c| {
            c.seg_start == self.active_start && c.pos + c.len() as u64 == pos && c.has_room(len)
        });
        if !continues {
            let capacity = len.max(CHUNK_CAPACITY_BYTES);
            self.pending
                .push_back(Chunk::new(self.active_start, pos, capacity));
        }
        self.end_pos += len as u64;
        let chunk = self.pending.back_mut().map(|c| &mut c.buf);
        // A chunk was pushed just above if none continued.
        (chunk.unwrap_or_else(|| unreachable!()), pos)
    }

    /// The segment file holding `pos`.
    pub(crate) fn segment_for(&self, pos: u64) -> Option<(u64, &Rc<F>)> {
        self.segments
            .range(..=pos)
            .next_back()
            .filter(|(start, _)| pos < *start + self.segment_bytes)
            .map(|(s, f)| (*s, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks start at a block-aligned address, so the flusher writes
    /// them as they are; a round that outgrows its chunk continues in the
    /// next, which starts mid-block where the first ended.
    #[test]
    fn chunks_are_aligned_and_continue_mid_block() {
        let mut log = LogState::<crate::store::disk::MemDiskFile>::new(1 << 30, 0, 100);
        let (buf, pos) = log.reserve(1000);
        buf.extend_from_slice(&[7; 1000]);
        assert_eq!(pos, 100);
        let first = log.pending.back().unwrap();
        assert_eq!(first.lead, 100);
        assert_eq!(
            (first.buf.as_ptr() as usize + first.start) % BLOCK_BYTES as usize,
            0
        );
        let mut placed = 1000;
        while log.pending.len() == 1 {
            let (buf, _) = log.reserve(1000);
            buf.extend_from_slice(&[8; 1000]);
            placed += 1000;
        }
        let chunks: Vec<_> = log.pending.drain(..).collect();
        assert_eq!(chunks[1].pos, chunks[0].pos + chunks[0].len() as u64);
        assert_eq!(chunks[1].lead as u64, chunks[1].pos % BLOCK_BYTES);
        assert_ne!(chunks[1].lead, 0);
        assert_eq!(chunks.iter().map(Chunk::len).sum::<usize>(), placed);
        for c in &chunks {
            // Room is left to pad the last block without reallocating.
            assert!(c.start + align_up((c.lead + c.len()) as u64) as usize <= c.buf.capacity());
        }
        // Freezing keeps the buffer where it is: no copy before the write.
        let c = chunks.into_iter().next().unwrap();
        let addr = c.buf.as_ptr() as usize + c.start;
        let frozen = bytes::Bytes::from(c.buf);
        assert_eq!(frozen.slice(c.start..).as_ptr() as usize, addr);
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(1 << 30), "00000000001073741824.log");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.log"), None);
        assert_eq!(parse_segment_name("00000000001073741824.idx"), None);
    }

    #[test]
    fn prefix_round_trips_and_ties_queue_generation_and_batch() {
        let p = EntryPrefix {
            qnum: 3,
            generation: 9,
        };
        let mut b = [0u8; ENTRY_PREFIX_BYTES];
        p.write(0xdead_beef, &mut b);
        assert_eq!(EntryPrefix::read(&b, 0xdead_beef), Ok(p));
        assert!(EntryPrefix::read(&b, 0xdead_beee).is_err(), "another batch");
        for i in 0..12 {
            let mut bad = b;
            bad[i] ^= 1;
            assert!(EntryPrefix::read(&bad, 0xdead_beef).is_err(), "byte {i}");
        }
        assert!(EntryPrefix::is_empty(&[0; ENTRY_PREFIX_BYTES]));
        assert!(!EntryPrefix::is_empty(&b));
    }
}
