//! The per-shard storage engine: commit log, queue indexes, consumer
//! offsets, checkpoints and recovery. One [`Store`] per shard, driven by that
//! shard's glommio executor; nothing in it is shared across threads.
//!
//! # Layout
//! - [`disk`]: the [`Disk`] trait, glommio [`DmaDisk`], and the fault-injecting [`MemDisk`].
//! - `aligned`: block-aligned appends that rewrite the partial last block.
//! - `commit_log`: log entry format, segments, placement of appends.
//! - `queue_index`: per-queue fixed-size index entries and their files.
//! - `range_cache`: bounded caches of log bytes: the tail, and read-ahead windows.
//! - `flusher`: the task that writes, syncs and acknowledges (group commit),
//!   and writes the clean checkpoint at close.
//! - `indexer`: the task beside it that writes whole index blocks and takes
//!   periodic checkpoints, off the path to an acknowledgement.
//! - `checkpoint`: atomic metadata files: checkpoint and generation.
//! - `queue_table`: the append-only table of (topic, queue id) -> qnum.
//! - `recovery`: opening a store: load the checkpoint, scan the log after
//!   it, cut a torn or corrupt tail, rebuild index entries.
//! - `retention`: deleting old segments by age or total size, in the background.
//!
//! # Data layout
//! ```text
//! <dir>/commitlog/<first-position:020>.log   segments (commit_log.rs)
//! <dir>/index/<qnum:08>/<first-offset:020>.idx
//! <dir>/queues.tbl   queue table: (topic, queue id) -> qnum, appended
//! <dir>/checkpoint   log position, per-queue offsets, consumer offsets
//! ```
//!
//! # Appends
//! An append is validated (crc, structure), then placed without awaiting:
//! it gets its offsets, is stamped and copied into the pending buffer, and
//! its index entries are queued. Then it waits. The flusher writes
//! everything pending in one aligned write per segment, and acknowledges
//! all waiters at once: after the write in `async` mode, after one
//! fdatasync in `sync` mode (group commit).

mod ack;
mod aligned;
mod checkpoint;
mod commit_log;
mod device;
pub mod disk;
mod flusher;
mod indexer;
mod queue_index;
mod queue_table;
mod range_cache;
mod recovery;
mod retention;

pub use commit_log::ENTRY_PREFIX_BYTES;
pub(crate) use device::parse_cpu_list;
pub use device::{cpu_exists, disk_irq_cpu};
pub use disk::{
    lock_file, Disk, DiskError, DiskFile, DiskOp, DmaDirLock, DmaDisk, MemDirLock, MemDisk,
    LOCK_FILE,
};
pub use ringmq_core::FlushMode;

use bytes::Bytes;
use commit_log::{EntryPrefix, LogState, Waiter};
use queue_index::{FifoCache, IndexEntry, INDEX_ENTRY_BYTES};
use queue_table::{QueueRow, QueueTable};
use range_cache::RangeCache;
use ringmq_core::batch::{self, BatchError, BATCH_HEADER_BYTES};
use ringmq_core::{Batch, GroupName, QueueId, TopicName};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;

/// A switch for side-by-side experiments, read by no code on main. To
/// compare two variants of the store, branch on it for the time of the
/// experiment and run the store bench with `--flip sync` or
/// `--flip async:N` (`shard/benches/store.rs`): it turns the switch on and
/// off every 250 ms in one process and reports each side's figures. On
/// this machine's noisy disk that resolves differences of a few percent
/// that alternating whole runs cannot.
#[doc(hidden)]
pub static EXPERIMENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How a segment is made ready before appends reach it. Decided by the
/// store benchmark (sync case, retention on): `Recycle` beat both others on
/// throughput, p99 and p99.9, because deleting a large file stalls the
/// filesystem journal that every fdatasync waits on (p99.9 64-84 ms with
/// fallocate or zero-fill, 2.3 ms recycling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SegmentPrepare {
    /// fallocate only: cheap, but the first write to each block converts an
    /// unwritten extent, which the next fdatasync must commit.
    Fallocate,
    /// fallocate, then write zeros over the whole segment in the background:
    /// costs one segment of disk bandwidth, and appends then overwrite
    /// written blocks.
    ZeroFill,
    /// Reuse a segment retention retired (its blocks are written already,
    /// so appends overwrite them at no extra bandwidth); fallocate when none
    /// is spare. Log generations keep its old entries from being read as new.
    #[default]
    Recycle,
}

/// Everything a store is configured with.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The shard's data folder.
    pub dir: PathBuf,
    /// Size of each commit-log segment file.
    pub segment_bytes: u64,
    /// How the next segment is made ready before it is needed.
    pub segment_prepare: SegmentPrepare,
    /// When appends are acknowledged.
    pub flush: FlushMode,
    /// `sync` mode: log segments are opened write-through (`O_DSYNC`), so
    /// a log write is durable when it completes and acknowledges its
    /// appends, with no fdatasync after it; one write still serves every
    /// append of its round. `false`: a write, then an fdatasync covering
    /// it (and every other write done by then). PostgreSQL's
    /// `wal_sync_method = open_datasync` is the same choice. The flush is
    /// issued from the write's completion in the kernel, not after a trip
    /// through the shard and the io_uring worker that runs an fdatasync:
    /// store bench, sync case, recycled segments, one build both ways
    /// (`bench-results/store-ab-2026-12-03T18-16-40Z-*`, 4 pairs): 463k
    /// against 421k acks/s (4 of 4), p99 1.50 against 1.64 ms (3 of 4).
    pub write_through: bool,
    /// `async` mode: fdatasync at least this often while there are unsynced writes.
    pub flush_interval_ms: u64,
    /// `async` mode: or as soon as this many bytes are unsynced.
    pub flush_bytes: u64,
    /// Appends wait while this many bytes are placed but unacknowledged.
    pub max_pending_bytes: usize,
    /// Largest single log write; a bigger round is split so that its parts
    /// are on the disk at once.
    pub max_write_bytes: usize,
    /// Log writes in flight at once (never two to the same block).
    pub writes_in_flight: usize,
    /// Index entries per index file (a multiple of 256).
    pub index_entries_per_file: u64,
    /// How often index files are brought up to date and a checkpoint taken;
    /// bounds the log a crash recovery must scan.
    pub checkpoint_interval_ms: u64,
    /// A checkpoint is also taken once the log grew this much since the
    /// last one, so the scan after a crash stays bounded however fast
    /// appends come.
    pub checkpoint_bytes: u64,
    /// Newest log bytes kept in memory for tailing reads.
    pub tail_cache_bytes: usize,
    /// Index blocks (4 KiB) cached for reads behind the tail.
    pub index_cache_blocks: usize,
    /// Index files held open for reads (one descriptor each).
    pub index_open_files: usize,
    /// Size of one sequential read for consumers behind the tail cache.
    pub read_ahead_bytes: usize,
    /// Read-ahead windows kept; their budget is separate from the tail's.
    pub read_ahead_windows: usize,
    /// Most bytes a second read from disk for consumers behind the tail
    /// (`None`: as fast as the disk goes). A consumer draining a big
    /// backlog otherwise takes all the CPU the shard has left, and appends
    /// wait behind it.
    pub catch_up_bytes_per_sec: Option<u64>,
    /// Delete segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// Delete the oldest segments while the log is bigger than this.
    pub retention_bytes: Option<u64>,
    /// How often retention looks for segments to delete.
    pub retention_check_interval_ms: u64,
    /// Store time source (ms since the Unix epoch); a test can drive it.
    pub now_ms: fn() -> i64,
}

fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl StoreConfig {
    /// Defaults for a production shard storing in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 1 << 30,
            segment_prepare: SegmentPrepare::Recycle,
            flush: FlushMode::Async,
            write_through: true,
            flush_interval_ms: 100,
            // A cap for very fast shards; the interval is the durability
            // window. Each fdatasync stalls the writes behind it for about
            // the same time whatever it covers, so at full speed (~400
            // MiB/s) 16 MiB meant 25 syncs a second: 64 MiB leaves it to
            // the interval (store bench, async, 64 appenders: 0.79 and
            // 0.82 of fio's rate at 16 MiB, 0.90 and 0.93 at 64 MiB).
            flush_bytes: 64 << 20,
            // Enough for several flush rounds of full-speed appends, small
            // against a shard's memory budget.
            max_pending_bytes: 64 << 20,
            // fio's shape for the disk's sequential limit (1 MiB at depth
            // 4); the store bench's sweep (bench-results/) found no setting
            // measurably better on this machine's noisy disk.
            max_write_bytes: 1 << 20,
            writes_in_flight: 4,
            // 16 MiB index files: one per million records.
            index_entries_per_file: 1 << 20,
            checkpoint_interval_ms: 5_000,
            // Recovery scans ~200 MiB/s with 1,000 queues' index entries to
            // rebuild (store bench, scale case): about 6 s of scan after a
            // crash, however fast the log was written. Each checkpoint
            // costs four fdatasyncs, and a 512 MiB step (two a second at
            // 1 GB/s) took 20-40 % off the async bench's 16-appender rate.
            checkpoint_bytes: 1 << 30,
            tail_cache_bytes: 64 << 20,
            // 4 MiB of index blocks.
            index_cache_blocks: 1024,
            // Enough for every queue of a busy shard to be read at once.
            index_open_files: 1024,
            // 64 KiB: on a disk that serves one request at a time (this
            // virtual disk), an append waits behind at most one short read.
            // 1 MiB windows measured 2.6x the publish p99 of 64 KiB ones
            // while a backlog drained at the same pace, and read 1.6x the
            // bytes. 64 windows: 4 MiB a shard, for queues a little apart.
            read_ahead_bytes: 64 << 10,
            read_ahead_windows: 64,
            catch_up_bytes_per_sec: None,
            // RocketMQ's default: three days.
            retention_ms: Some(72 * 3_600_000),
            retention_bytes: None,
            retention_check_interval_ms: 60_000,
            now_ms: system_now_ms,
        }
    }

    /// Whether log writes are durable on completion: `sync` mode with
    /// [`Self::write_through`].
    pub fn log_write_through(&self) -> bool {
        self.flush == FlushMode::Sync && self.write_through
    }

    fn validate(&self) -> Result<(), StoreError> {
        let bad = |m: &str| Err(StoreError::Config(m.to_owned()));
        if self.writes_in_flight == 0 || self.max_write_bytes < disk::BLOCK_BYTES as usize {
            return bad("writes_in_flight must be at least 1 and max_write_bytes at least 4096");
        }
        if self.segment_bytes < 64 * 1024 || !self.segment_bytes.is_multiple_of(disk::BLOCK_BYTES) {
            return bad("segment_bytes must be a multiple of 4096 and at least 64 KiB");
        }
        if self.index_entries_per_file == 0
            || !self
                .index_entries_per_file
                .is_multiple_of(queue_index::ENTRIES_PER_BLOCK)
        {
            return bad("index_entries_per_file must be a positive multiple of 256");
        }
        if self.max_pending_bytes == 0 {
            return bad("max_pending_bytes must be positive");
        }
        Ok(())
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.join("commitlog")
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A write or fsync failed earlier: nothing more is accepted.
    #[error("store refuses writes after an earlier failure ({0}); restart the shard")]
    Poisoned(String),
    /// No room on disk for the next segment; nothing acknowledged is lost.
    #[error("disk full: {0}")]
    DiskFull(#[source] DiskError),
    /// An I/O error, with operation and file.
    #[error(transparent)]
    Io(#[from] DiskError),
    /// The batch failed its crc or structure check; it was not stored.
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
    /// The batch's queue id is not the queue it was appended to.
    #[error("batch is for queue {found} but was appended to queue {expected}")]
    QueueMismatch {
        /// The queue appended to.
        expected: QueueId,
        /// The batch header's queue.
        found: QueueId,
    },
    /// The batch cannot fit in a segment.
    #[error("batch of {len} bytes exceeds the limit of {max}")]
    BatchTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No queue with that number.
    #[error("unknown queue number {0}")]
    UnknownQueue(u32),
    /// The offset was deleted by retention (or never existed below it).
    #[error("offset {offset} is below the earliest stored offset {earliest}")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The earliest still stored.
        earliest: u64,
    },
    /// Stored bytes failed their check on read; they are not served.
    #[error("log entry at position {position} is damaged: {reason}")]
    Corrupt {
        /// Log position of the entry.
        position: u64,
        /// What failed.
        reason: String,
    },
    /// A metadata file failed its check.
    #[error("metadata file {} is damaged: {reason}", path.display())]
    CorruptMeta {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Another store, in this process or another, has the folder open.
    #[error("store folder {} is in use: {source}; stop the store using it first", dir.display())]
    DirInUse {
        /// The store folder.
        dir: PathBuf,
        /// Who holds it.
        #[source]
        source: DiskError,
    },
    /// The store was closed.
    #[error("store is closed")]
    Closed,
    /// The configuration is invalid.
    #[error("invalid store config: {0}")]
    Config(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A shard-local queue number, assigned when the queue is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueNum(pub u32);

/// An acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Records stored.
    pub record_count: u32,
    /// The store time stamped into the batch.
    pub store_timestamp_ms: i64,
}

/// The answer to a fetch.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// Whole stored batches, in offset order; the first holds the fetch offset.
    pub batches: Vec<Bytes>,
    /// Where to fetch next.
    pub next_offset: u64,
    /// The earliest stored offset.
    pub min_offset: u64,
    /// The offset the next acknowledged record will get.
    pub max_offset: u64,
}

#[derive(Debug)]
struct QueueState {
    queue_id: QueueId,
    /// Next offset to assign.
    next_offset: u64,
    /// Offsets below this are acknowledged and may be read.
    visible_next: u64,
    min_offset: u64,
    /// Offset of the first entry in `index_pending`.
    index_pending_from: u64,
    /// Encoded index entries not yet on disk.
    index_pending: Vec<u8>,
    /// In `State::index_full`, waiting for a whole-block write.
    index_queued: bool,
}

struct State<F> {
    poisoned: Option<String>,
    closing: bool,
    /// The store closed and gave up its files.
    released: bool,
    queues: Vec<QueueState>,
    by_name: HashMap<(TopicName, QueueId), QueueNum>,
    log: LogState<F>,
    offsets: BTreeMap<(GroupName, u32), u64>,
    tail: RangeCache,
    read_ahead: RangeCache,
    index_cache: FifoCache<(u32, u64), Bytes>,
    /// Index files held open for reads, by (queue, file number).
    index_files: FifoCache<(u32, u64), Rc<F>>,
    /// Newest store time in each segment, for age-based retention.
    segment_max_ts: BTreeMap<u64, i64>,
    /// Queues that gathered whole index blocks since the indexer last
    /// wrote them: the indexer visits only these, not every queue.
    index_full: Vec<u32>,
    /// Bytes of index entries not yet written, over every queue; the
    /// flusher holds the log back over [`queue_index::PENDING_MAX_BYTES`].
    index_pending_bytes: u64,
    /// Log position of the last checkpoint: retention deletes only before it.
    checkpoint_pos: u64,
    /// Bumped by every change a checkpoint records besides the log itself
    /// (queues, earliest offsets, consumer offsets), so an idle store can
    /// skip checkpoints that would write the same thing again.
    meta_version: u64,
    /// This run's generation, written into every entry it appends.
    generation: u32,
    /// Where this run's first entry goes: a checkpoint past it covers
    /// entries of this generation.
    generation_start_pos: u64,
    /// The newest generation among entries before `generation_start_pos`.
    previous_generation: u32,
}

impl<F> State<F> {
    fn queue(&self, q: QueueNum) -> Result<&QueueState, StoreError> {
        q.0.checked_sub(1)
            .and_then(|i| self.queues.get(i as usize))
            .ok_or(StoreError::UnknownQueue(q.0))
    }

    fn queue_mut(&mut self, q: QueueNum) -> Result<&mut QueueState, StoreError> {
        q.0.checked_sub(1)
            .and_then(|i| self.queues.get_mut(i as usize))
            .ok_or(StoreError::UnknownQueue(q.0))
    }

    /// Queue `qnum`'s next offset moved from `from` to `to`; once that
    /// leaves [`queue_index::WRITE_BLOCKS`] whole index blocks unwritten,
    /// queue the queue for a whole-block write.
    fn index_grew(&mut self, qnum: u32, from: u64, to: u64) {
        self.index_pending_bytes += (to - from) * INDEX_ENTRY_BYTES;
        let per_block = queue_index::ENTRIES_PER_BLOCK;
        if from / per_block == to / per_block {
            return;
        }
        if let Some(q) = qnum
            .checked_sub(1)
            .and_then(|i| self.queues.get_mut(i as usize))
        {
            let whole = to / per_block - q.index_pending_from / per_block;
            if whole >= queue_index::WRITE_BLOCKS && !q.index_queued {
                q.index_queued = true;
                self.index_full.push(qnum);
            }
        }
    }

    fn writable(&self) -> Result<(), StoreError> {
        if let Some(cause) = &self.poisoned {
            return Err(StoreError::Poisoned(cause.clone()));
        }
        if self.closing {
            return Err(StoreError::Closed);
        }
        Ok(())
    }
}

struct Inner<D: Disk> {
    disk: D,
    cfg: StoreConfig,
    state: RefCell<State<D::File>>,
    wake: glommio::channels::local_channel::LocalSender<()>,
    /// Wakes the indexer (whole index blocks, checkpoints).
    index_wake: glommio::channels::local_channel::LocalSender<()>,
    /// The index files; the lock keeps the indexer's writes and
    /// checkpoints and the clean checkpoint at close apart.
    index: futures::lock::Mutex<queue_index::IndexWriters<D>>,
    /// Bytes placed but not acknowledged: the append path's backpressure.
    pending_room: glommio::sync::Semaphore,
    /// The queue table; its lock also serializes queue creation.
    queue_table: futures::lock::Mutex<QueueTable<D::File>>,
    roll_lock: futures::lock::Mutex<()>,
    flusher: RefCell<Option<glommio::Task<()>>>,
    indexer: RefCell<Option<glommio::Task<()>>>,
    recovery: RecoveryReport,
    /// Low-share task queue for reads behind the tail, so catching-up
    /// consumers yield to appends.
    catch_up: glommio::TaskQueueHandle,
    /// Paces those reads to [`StoreConfig::catch_up_bytes_per_sec`].
    catch_up_pace: CatchUpPace,
    /// The store folder, this store's alone until close (or drop).
    dir_lock: RefCell<Option<D::DirLock>>,
}

/// A token bucket on a virtual clock: each read moves `next_free` on by
/// its bytes' share of a second; no read starts before `next_free`. A
/// read is booked only when it starts, so a reader that waited looks in
/// the caches again first (another may have read its window meanwhile),
/// and no wait is longer than one read's share. Idle time earns at most
/// [`CatchUpPace::BURST`] of credit.
#[derive(Debug)]
struct CatchUpPace {
    bytes_per_sec: Option<u64>,
    next_free: std::cell::Cell<Option<std::time::Instant>>,
}

impl CatchUpPace {
    const BURST: std::time::Duration = std::time::Duration::from_millis(20);

    fn new(bytes_per_sec: Option<u64>) -> Self {
        Self {
            bytes_per_sec,
            next_free: std::cell::Cell::new(None),
        }
    }

    /// Books a read of `bytes` starting `now` and returns zero, or returns
    /// how long to wait before trying again (nothing booked).
    fn try_book(&self, bytes: u64, now: std::time::Instant) -> std::time::Duration {
        let Some(rate) = self.bytes_per_sec.filter(|&r| r > 0) else {
            return std::time::Duration::ZERO;
        };
        let earliest = now.checked_sub(Self::BURST).unwrap_or(now);
        let start = self.next_free.get().map_or(earliest, |t| t.max(earliest));
        if start > now {
            return start - now;
        }
        let cost = std::time::Duration::from_nanos(bytes.saturating_mul(1_000_000_000) / rate);
        self.next_free.set(Some(start + cost));
        std::time::Duration::ZERO
    }
}

/// What the last open found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The checkpoint said the previous run shut down cleanly.
    pub clean_shutdown: bool,
    /// Log bytes scanned after the checkpoint.
    pub scanned_bytes: u64,
    /// Where the log was cut, and why (torn or damaged entry).
    pub cut: Option<(u64, String)>,
    /// The log's end after recovery.
    pub end_position: u64,
}

/// One shard's storage engine. Cheap to clone (a handle).
pub struct Store<D: Disk> {
    inner: Rc<Inner<D>>,
}

impl<D: Disk> Clone for Store<D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<D: Disk> std::fmt::Debug for Store<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.cfg.dir)
            .finish_non_exhaustive()
    }
}

impl<D: Disk> Store<D> {
    /// Opens (or creates) the store in `cfg.dir`, recovering after a crash.
    /// Must run inside a glommio executor: it spawns the flusher.
    pub async fn open(disk: D, cfg: StoreConfig) -> Result<Self, StoreError> {
        cfg.validate()?;
        recovery::open(disk, cfg).await
    }

    /// The queue number of (topic, queue), if it exists.
    pub fn queue(&self, topic: &TopicName, queue_id: QueueId) -> Option<QueueNum> {
        self.inner
            .state
            .borrow()
            .by_name
            .get(&(topic.clone(), queue_id))
            .copied()
    }

    /// Adds durable queue table rows to the in-memory state.
    fn apply_rows(&self, rows: Vec<QueueRow>) {
        let mut st = self.inner.state.borrow_mut();
        for row in rows {
            st.queues.push(QueueState::new(row.queue_id, 0));
            let key = (row.topic, row.queue_id);
            if row.deleted {
                st.by_name.remove(&key);
            } else {
                st.by_name.insert(key, QueueNum(row.qnum));
            }
        }
        st.meta_version += 1;
    }

    /// Deletes every queue of `topic` (durably, one queue table append):
    /// their names are gone at once, their records stay in the log until
    /// retention removes the segments. Returns how many were deleted.
    pub async fn delete_queues(&self, topic: &TopicName) -> Result<usize, StoreError> {
        let mut table = self.inner.queue_table.lock().await;
        let rows = {
            let st = self.inner.state.borrow();
            st.writable()?;
            let mut victims: Vec<QueueId> = st
                .by_name
                .keys()
                .filter(|(t, _)| t == topic)
                .map(|(_, q)| *q)
                .collect();
            victims.sort();
            let first = st.queues.len() as u32 + 1;
            victims
                .into_iter()
                .zip(first..)
                .map(|(queue_id, qnum)| QueueRow {
                    qnum,
                    topic: topic.clone(),
                    queue_id,
                    deleted: true,
                })
                .collect::<Vec<_>>()
        };
        let n = rows.len();
        if n > 0 {
            table.append(&rows).await?;
            self.apply_rows(rows);
        }
        Ok(n)
    }

    /// Returns the queue's number, creating the queue (durably) if needed.
    pub async fn create_queue(
        &self,
        topic: &TopicName,
        queue_id: QueueId,
    ) -> Result<QueueNum, StoreError> {
        let created = self.create_queues(&[(topic.clone(), queue_id)]).await?;
        created
            .first()
            .copied()
            .ok_or_else(|| StoreError::Internal("no queue created".into()))
    }

    /// Returns the numbers of the given queues, in order, creating those that
    /// do not exist yet with one durable append to the queue table (a whole
    /// topic's queues cost one fdatasync).
    pub async fn create_queues(
        &self,
        queues: &[(TopicName, QueueId)],
    ) -> Result<Vec<QueueNum>, StoreError> {
        let mut table = self.inner.queue_table.lock().await;
        let new_rows = {
            let st = self.inner.state.borrow();
            st.writable()?;
            let mut next = st.queues.len() as u32 + 1;
            let mut rows: Vec<QueueRow> = Vec::new();
            for (topic, queue_id) in queues {
                let known = st.by_name.contains_key(&(topic.clone(), *queue_id))
                    || rows
                        .iter()
                        .any(|r| &r.topic == topic && r.queue_id == *queue_id);
                if !known {
                    rows.push(QueueRow {
                        qnum: next,
                        topic: topic.clone(),
                        queue_id: *queue_id,
                        deleted: false,
                    });
                    next += 1;
                }
            }
            rows
        };
        if !new_rows.is_empty() {
            // Durable before the first append can name these qnums in the log.
            table.append(&new_rows).await.map_err(|e| {
                tracing::error!(error = %e, table = %table.path().display(), "queue table append failed");
                e
            })?;
            self.apply_rows(new_rows);
        }
        drop(table);
        let st = self.inner.state.borrow();
        queues
            .iter()
            .map(|(t, q)| {
                st.by_name
                    .get(&(t.clone(), *q))
                    .copied()
                    .ok_or_else(|| StoreError::Internal("queue vanished".into()))
            })
            .collect()
    }

    /// Appends one record batch to queue `q` and waits until it is
    /// acknowledged per the flush mode. The batch's crc and structure are
    /// checked first: a bad batch never reaches the disk.
    pub async fn append(&self, q: QueueNum, batch: Bytes) -> Result<Appended, StoreError> {
        let batch = Batch::parse_validated(batch)?;
        let entry_len = ENTRY_PREFIX_BYTES + batch.bytes().len();
        let max = self.inner.cfg.segment_bytes as usize;
        if entry_len > max {
            return Err(StoreError::BatchTooLarge {
                len: batch.bytes().len(),
                max: max - ENTRY_PREFIX_BYTES,
            });
        }
        let units = entry_len.min(self.inner.cfg.max_pending_bytes) as u64;
        let _room = self
            .inner
            .pending_room
            .acquire_permit(units)
            .await
            .map_err(|_| StoreError::Closed)?;
        let (rx, appended) = loop {
            {
                let mut st = self.inner.state.borrow_mut();
                st.writable()?;
                let expected = st.queue(q)?.queue_id;
                if batch.header().queue_id != expected {
                    return Err(StoreError::QueueMismatch {
                        expected,
                        found: batch.header().queue_id,
                    });
                }
                if st.log.fits(entry_len) {
                    break place(&mut st, q, &batch, (self.inner.cfg.now_ms)())?;
                }
                if let Some((start, file)) = st.log.next_segment.take() {
                    st.log.roll(start, file);
                    drop(st);
                    self.spawn_prepare_next();
                    continue;
                }
            }
            self.prepare_next_segment().await?;
        };
        // A full channel means the flusher is already woken.
        let _ = self.inner.wake.try_send(());
        match rx.await {
            Some(Ok(())) => Ok(appended),
            Some(Err(e)) => Err(e),
            None => Err(StoreError::Closed),
        }
    }

    /// Reads whole batches of queue `q` from `offset`, up to about
    /// `max_bytes` (at least one batch if any is there). Only acknowledged
    /// records are visible. Every batch's crc is checked again after the
    /// read: damaged bytes are reported, never returned.
    pub async fn fetch(
        &self,
        q: QueueNum,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Fetched, StoreError> {
        let (min_offset, visible) = {
            let st = self.inner.state.borrow();
            if st.released {
                return Err(StoreError::Closed);
            }
            let qs = st.queue(q)?;
            (qs.min_offset, qs.visible_next)
        };
        if offset < min_offset {
            return Err(StoreError::OffsetOutOfRange {
                offset,
                earliest: min_offset,
            });
        }
        let mut out = Fetched {
            next_offset: offset.min(visible),
            min_offset,
            max_offset: visible,
            ..Default::default()
        };
        let mut bytes = 0;
        while out.next_offset < visible && (out.batches.is_empty() || bytes < max_bytes) {
            let entry = self.index_entry(q, out.next_offset).await?;
            // A fetch that has batches already returns them rather than wait
            // for the catch-up read budget.
            let may_wait = out.batches.is_empty();
            let Some(batch) = self.read_entry(q, entry, may_wait).await? else {
                break;
            };
            let header = batch::BatchHeader::peek(&batch)?;
            if !(header.base_offset..header.next_offset()).contains(&out.next_offset) {
                return Err(StoreError::Corrupt {
                    position: entry.position,
                    reason: format!(
                        "index points at offsets {}..{} for offset {}",
                        header.base_offset,
                        header.next_offset(),
                        out.next_offset
                    ),
                });
            }
            out.next_offset = header.next_offset();
            bytes += batch.len();
            out.batches.push(batch);
        }
        Ok(out)
    }

    /// The earliest stored offset and the next offset of queue `q`.
    pub fn offsets(&self, q: QueueNum) -> Result<(u64, u64), StoreError> {
        let st = self.inner.state.borrow();
        let qs = st.queue(q)?;
        Ok((qs.min_offset, qs.visible_next))
    }

    /// Records a consumer group's offset; durable at the next checkpoint
    /// (at most `checkpoint_interval_ms` later) and at a clean shutdown.
    pub fn commit_offset(
        &self,
        group: &GroupName,
        q: QueueNum,
        offset: u64,
    ) -> Result<(), StoreError> {
        let mut st = self.inner.state.borrow_mut();
        st.queue(q)?;
        if st.offsets.insert((group.clone(), q.0), offset) != Some(offset) {
            st.meta_version += 1;
        }
        Ok(())
    }

    /// Every group with a committed offset on a live queue, sorted.
    pub fn groups(&self) -> Vec<GroupName> {
        let st = self.inner.state.borrow();
        let live: std::collections::HashSet<u32> = st.by_name.values().map(|q| q.0).collect();
        let mut groups: Vec<GroupName> = st
            .offsets
            .keys()
            .filter(|(_, q)| live.contains(q))
            .map(|(g, _)| g.clone())
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }

    /// A consumer group's committed offset.
    pub fn committed_offset(
        &self,
        group: &GroupName,
        q: QueueNum,
    ) -> Result<Option<u64>, StoreError> {
        let st = self.inner.state.borrow();
        st.queue(q)?;
        Ok(st.offsets.get(&(group.clone(), q.0)).copied())
    }

    /// Stops accepting appends, writes and syncs everything pending, brings
    /// the index files up to date and writes a clean checkpoint, so the next
    /// open does not rescan.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner.state.borrow_mut().closing = true;
        let _ = self.inner.wake.try_send(());
        let task = self.inner.flusher.borrow_mut().take();
        if let Some(task) = task {
            task.await;
        }
        // The flusher wrote the clean checkpoint; the indexer sees `closing`.
        let _ = self.inner.index_wake.try_send(());
        let task = self.inner.indexer.borrow_mut().take();
        if let Some(task) = task {
            task.await;
        }
        self.inner.pending_room.close();
        self.release_files().await;
        // Nothing writes any more: another store may take the folder.
        self.inner.dir_lock.borrow_mut().take();
        match self.inner.state.borrow().poisoned.clone() {
            Some(cause) => Err(StoreError::Poisoned(cause)),
            None => Ok(()),
        }
    }

    /// Closes every file the store holds, once nothing writes any more: a
    /// closed store keeps no descriptors, and the blocks of files deleted
    /// since (a test or bench removing the folder) are freed at once, not
    /// when the process exits. Fetches after this fail with `Closed`.
    async fn release_files(&self) {
        let mut files = {
            let mut st = self.inner.state.borrow_mut();
            st.released = true;
            let mut files: Vec<Rc<D::File>> =
                std::mem::take(&mut st.log.segments).into_values().collect();
            files.extend(st.log.next_segment.take().map(|(_, f)| f));
            files.extend(st.index_files.drain());
            files
        };
        files.extend(self.inner.index.lock().await.release_files());
        files.extend(self.inner.queue_table.lock().await.release_file());
        disk::close_files(files).await;
    }

    /// Whether the segment after the active one is prepared (a roll now
    /// would be a swap, not a stall).
    pub fn next_segment_ready(&self) -> bool {
        self.inner.state.borrow().log.next_segment.is_some()
    }

    /// What the last open found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// Bytes held by the tail cache (for status and memory tests).
    pub fn tail_cache_bytes(&self) -> usize {
        self.inner.state.borrow().tail.bytes()
    }

    fn spawn_prepare_next(&self) {
        let store = self.clone();
        glommio::spawn_local(async move {
            if let Err(e) = store.prepare_next_segment().await {
                tracing::warn!(error = %e, "preparing the next log segment failed; appends will retry");
            }
        })
        .detach();
    }

    /// Creates and allocates the segment after the active one, unless done.
    async fn prepare_next_segment(&self) -> Result<(), StoreError> {
        let _guard = self.inner.roll_lock.lock().await;
        let start = {
            let st = self.inner.state.borrow();
            st.writable()?;
            if st.log.next_segment.is_some() {
                return Ok(());
            }
            st.log.active_start + st.log.segment_bytes
        };
        let file = commit_log::create_segment(&self.inner.disk, &self.inner.cfg, start).await?;
        let mut st = self.inner.state.borrow_mut();
        if st.log.next_segment.is_none() && st.log.active_start + st.log.segment_bytes == start {
            st.log.next_segment = Some((start, Rc::new(file)));
        }
        Ok(())
    }

    async fn index_entry(&self, q: QueueNum, offset: u64) -> Result<IndexEntry, StoreError> {
        let per_file = self.inner.cfg.index_entries_per_file;
        let (file_no, in_file) = (offset / per_file, (offset % per_file) * INDEX_ENTRY_BYTES);
        let block_no = offset / queue_index::ENTRIES_PER_BLOCK;
        let in_block = (in_file % disk::BLOCK_BYTES) as usize;
        let cached = {
            let st = self.inner.state.borrow();
            let qs = st.queue(q)?;
            if offset >= qs.index_pending_from {
                let at = ((offset - qs.index_pending_from) * INDEX_ENTRY_BYTES) as usize;
                return qs
                    .index_pending
                    .get(at..)
                    .and_then(IndexEntry::decode)
                    .ok_or_else(|| {
                        StoreError::Internal(format!(
                            "offset {offset} beyond queue {}'s index",
                            q.0
                        ))
                    });
            }
            st.index_cache.get(&(q.0, block_no))
        };
        let block = match cached {
            Some(block) => block,
            None => {
                let file = self.index_file(q.0, file_no).await?;
                let block = file
                    .read_at(disk::align_down(in_file), disk::BLOCK_BYTES as usize)
                    .await?;
                let mut st = self.inner.state.borrow_mut();
                let whole_block_on_disk = (block_no + 1) * queue_index::ENTRIES_PER_BLOCK
                    <= st.queue(q)?.index_pending_from;
                if whole_block_on_disk && block.len() == disk::BLOCK_BYTES as usize {
                    st.index_cache.insert((q.0, block_no), block.clone());
                }
                block
            }
        };
        block
            .get(in_block..)
            .and_then(IndexEntry::decode)
            .ok_or_else(|| StoreError::CorruptMeta {
                path: queue_index::index_path(&self.inner.cfg.dir, q.0, file_no, per_file),
                reason: format!(
                    "no index entry for offset {offset}: the file is shorter than its queue"
                ),
            })
    }

    async fn index_file(&self, qnum: u32, file_no: u64) -> Result<Rc<D::File>, StoreError> {
        if let Some(f) = self.inner.state.borrow().index_files.get(&(qnum, file_no)) {
            return Ok(f);
        }
        let path = queue_index::index_path(
            &self.inner.cfg.dir,
            qnum,
            file_no,
            self.inner.cfg.index_entries_per_file,
        );
        let file = Rc::new(self.inner.disk.open(&path, false).await?);
        self.inner
            .state
            .borrow_mut()
            .index_files
            .insert((qnum, file_no), file.clone());
        Ok(file)
    }

    /// Reads a log entry (tail cache, then read-ahead windows, else one large
    /// sequential read in the catch-up task queue) and checks it again:
    /// prefix, queue, batch crc. Returns the batch's bytes, or `None` when
    /// the read must wait for the catch-up budget and `may_wait` is false.
    async fn read_entry(
        &self,
        q: QueueNum,
        entry: IndexEntry,
        may_wait: bool,
    ) -> Result<Option<Bytes>, StoreError> {
        let (pos, len) = (entry.position, entry.entry_len as usize);
        let window = loop {
            let wait = {
                let st = self.inner.state.borrow();
                if let Some(bytes) = st
                    .tail
                    .get(pos, len)
                    .or_else(|| st.read_ahead.get(pos, len))
                {
                    return check_entry(q.0, pos, bytes).map(Some);
                }
                let Some((seg_start, file)) = st.log.segment_for(pos) else {
                    return Err(StoreError::Corrupt {
                        position: pos,
                        reason: "no segment holds this position".into(),
                    });
                };
                // One large read of the fixed window holding the entry, so
                // queues reading the same stretch of log share windows
                // instead of each reading its own overlapping one; never
                // past what is written (later bytes may still change) or
                // the segment's end.
                let span = self.inner.cfg.read_ahead_bytes.max(1) as u64;
                let from = disk::align_down(pos - pos % span).max(seg_start);
                let to = (from + span)
                    .max(pos + len as u64)
                    .min(st.log.written_pos.max(pos + len as u64))
                    .min(seg_start + st.log.segment_bytes);
                let wait = self
                    .inner
                    .catch_up_pace
                    .try_book(to - from, std::time::Instant::now());
                if wait.is_zero() {
                    break (from, to, seg_start, file.clone());
                }
                if !may_wait {
                    return Ok(None);
                }
                wait
            };
            glommio::timer::sleep(wait).await;
        };
        let (from, to, seg_start, file) = window;
        let read = glommio::spawn_local_into(
            async move { file.read_at(from - seg_start, (to - from) as usize).await },
            self.inner.catch_up,
        )
        .map_err(|e| StoreError::Internal(format!("spawn catch-up read: {e}")))?
        .await?;
        let at = (pos - from) as usize;
        // A short read leaves `bytes` empty, which check_entry reports.
        let bytes = if at + len <= read.len() {
            read.slice(at..at + len)
        } else {
            Bytes::new()
        };
        self.inner.state.borrow_mut().read_ahead.push(from, read);
        check_entry(q.0, pos, bytes).map(Some)
    }
}

/// Checks a log entry read back from cache or disk; returns its batch bytes.
fn check_entry(qnum: u32, position: u64, entry: Bytes) -> Result<Bytes, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    if entry.len() < ENTRY_PREFIX_BYTES + BATCH_HEADER_BYTES {
        return Err(corrupt(format!("short read: {} bytes", entry.len())));
    }
    let batch = entry.slice(ENTRY_PREFIX_BYTES..);
    let verified = batch::verify(&batch).map_err(|e| corrupt(e.to_string()))?;
    let prefix = EntryPrefix::read(&entry, verified.header.crc).map_err(|e| corrupt(e.into()))?;
    if prefix.qnum != qnum {
        return Err(corrupt(format!(
            "entry belongs to queue {}, expected {qnum}",
            prefix.qnum
        )));
    }
    if verified.header.length as usize != batch.len() {
        return Err(corrupt("batch length differs from the index".into()));
    }
    Ok(batch)
}

impl QueueState {
    fn new(queue_id: QueueId, next_offset: u64) -> Self {
        Self {
            queue_id,
            next_offset,
            visible_next: next_offset,
            min_offset: 0,
            index_pending_from: next_offset,
            index_pending: Vec::new(),
            index_queued: false,
        }
    }
}

/// Places a validated batch at the end of the log: offsets, stamp, bytes,
/// index entries and a waiter. No awaiting, so per-queue order is append order.
fn place<F: DiskFile>(
    st: &mut State<F>,
    q: QueueNum,
    batch: &Batch,
    now_ms: i64,
) -> Result<(ack::AckReceiver, Appended), StoreError> {
    let count = batch.header().record_count;
    let base_offset = st.queue(q)?.next_offset;
    let entry_len = ENTRY_PREFIX_BYTES + batch.bytes().len();
    let generation = st.generation;
    let (buf, position) = st.log.reserve(entry_len);
    let at = buf.len();
    buf.extend_from_slice(&[0; ENTRY_PREFIX_BYTES]);
    buf.extend_from_slice(batch.bytes());
    let stored = &mut buf[at + ENTRY_PREFIX_BYTES..];
    batch::stamp(stored, base_offset, now_ms, batch.tail_crc());
    let crc = u32::from_le_bytes([stored[4], stored[5], stored[6], stored[7]]);
    EntryPrefix {
        qnum: q.0,
        generation,
    }
    .write(crc, &mut buf[at..at + ENTRY_PREFIX_BYTES]);
    let end_pos = st.log.end_pos;
    let newest = st
        .segment_max_ts
        .entry(st.log.active_start)
        .or_insert(now_ms);
    *newest = (*newest).max(now_ms);
    let qs = st.queue_mut(q)?;
    let entry = IndexEntry {
        position,
        entry_len: entry_len as u32,
        tag_hash: 0,
    }
    .encode();
    for _ in 0..count {
        qs.index_pending.extend_from_slice(&entry);
    }
    qs.next_offset += u64::from(count);
    let next_offset = qs.next_offset;
    st.index_grew(q.0, base_offset, next_offset);
    let (tx, rx) = ack::ack_channel();
    st.log.waiters.push_back(Waiter {
        end_pos,
        qnum: q.0,
        next_offset,
        tx: Some(tx),
    });
    Ok((
        rx,
        Appended {
            base_offset,
            record_count: count,
            store_timestamp_ms: now_ms,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::CatchUpPace;
    use std::time::{Duration, Instant};

    #[test]
    fn catch_up_reads_wait_their_share_of_a_second() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let free = CatchUpPace::new(None);
        assert_eq!(free.try_book(1 << 30, t0), Duration::ZERO);
        let pace = CatchUpPace::new(Some(1 << 20));
        // The first MiB goes at once (with 20 ms of burst credit); the
        // next waits for the rest of the first's second, unbooked.
        assert_eq!(pace.try_book(1 << 20, t0), Duration::ZERO);
        assert_eq!(pace.try_book(1 << 20, t0), ms(980));
        assert_eq!(pace.try_book(1 << 20, t0 + ms(500)), ms(480));
        assert_eq!(pace.try_book(1 << 19, t0 + ms(980)), Duration::ZERO);
        assert_eq!(pace.try_book(1 << 20, t0 + ms(980)), ms(500));
        // Ten idle seconds earn only the burst: two reads, then a wait.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(pace.try_book(1 << 14, t1), Duration::ZERO);
        assert_eq!(pace.try_book(1 << 14, t1), Duration::ZERO);
        assert!(pace.try_book(1 << 20, t1) > Duration::ZERO);
    }
}
