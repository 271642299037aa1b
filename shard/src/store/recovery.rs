//! Opening a store: load the queue table and the last checkpoint, scan the
//! log after the checkpoint, verify every entry, cut at the first one that
//! is torn, damaged or inconsistent, and rebuild the index entries of
//! everything before the cut. After a clean shutdown the checkpoint is at
//! the end of the log and the scan reads a single block.

use super::checkpoint::{self, Checkpoint, QueueCheckpoint};
use super::commit_log::{self, EntryPrefix, LogState, ENTRY_PREFIX_BYTES};
use super::disk::{align_down, Disk, DiskFile};
use super::flusher::{self, Flusher};
use super::indexer::{flush_index, IndexFlush, Indexer};
use super::queue_index::{FifoCache, IndexEntry, IndexWriters};
use super::queue_table::{QueueRow, QueueTable};
use super::range_cache::RangeCache;
use super::{Inner, QueueNum, QueueState, State, Store, StoreConfig, StoreError};
use ringmq_core::batch::{self, BatchHeader, BATCH_HEADER_BYTES};
use ringmq_core::GroupName;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Log bytes read per scan step: large sequential reads.
const SCAN_READ_BYTES: usize = 1 << 20;
/// Rebuilt index entries kept in memory during a scan before they are written.
const SCAN_INDEX_FLUSH_BYTES: u64 = 8 << 20;
/// CPU shares of catch-up reads against the default queue's 1000: they run
/// freely when appends are idle and get a tenth when both compete.
const CATCH_UP_SHARES: usize = 100;
/// How often a long scan reports progress.
const SCAN_PROGRESS_BYTES: u64 = 256 << 20;

pub(super) async fn open<D: Disk>(disk: D, cfg: StoreConfig) -> Result<Store<D>, StoreError> {
    let started = Instant::now();
    disk.create_dir_all(&cfg.log_dir()).await?;
    let dir_lock = disk.lock_dir(&cfg.dir).await.map_err(|e| {
        if e.is_in_use() {
            StoreError::DirInUse {
                dir: cfg.dir.clone(),
                source: e,
            }
        } else {
            StoreError::Io(e)
        }
    })?;
    let (rows, queue_table) = QueueTable::open(&disk, &cfg.dir).await?;
    let ckpt =
        match checkpoint::read_meta::<D, Checkpoint>(&disk, &cfg.dir, checkpoint::CHECKPOINT_FILE)
            .await
        {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint unreadable; rescanning the whole log");
                Checkpoint::default()
            }
        };
    let last_run = checkpoint::read_meta::<D, checkpoint::Generation>(
        &disk,
        &cfg.dir,
        checkpoint::GENERATION_FILE,
    )
    .await?
    .unwrap_or_default();
    let last_generation = last_run.generation;
    let state = RefCell::new(initial_state::<D>(&cfg, &rows, &ckpt)?);
    let mut segments = BTreeMap::new();
    for name in disk.list(&cfg.log_dir()).await? {
        match commit_log::parse_segment_name(&name) {
            Some(start) if start % cfg.segment_bytes == 0 => {
                let file =
                    commit_log::open_segment(&disk, &cfg, &cfg.log_dir().join(&name)).await?;
                segments.insert(start, Rc::new(file));
            }
            _ => {
                tracing::warn!(file = %name, "ignoring a file that is not a log segment of this size")
            }
        }
    }
    let mut index = IndexWriters::new(disk.clone(), cfg.dir.clone(), cfg.index_entries_per_file);
    let first = segments.keys().next().copied().unwrap_or(0);
    let from = ckpt.log_position.max(first);
    let generations = Generations {
        newest: ckpt.log_generation,
        last_run: last_generation,
        last_run_start: last_run.start_position,
    };
    let scan = scan(&cfg, &segments, from, &state, &mut index, generations).await?;
    if scan.end_pos > from {
        // What the scan accepted may sit only in the device's volatile
        // cache; make it durable before this run writes past it, so that a
        // later crash cannot take it back from under newer entries.
        for (_, file) in segments.range(align_down_to(from, cfg.segment_bytes)..=scan.last_segment)
        {
            file.sync().await?;
        }
    }
    // This run's generation and where its appends begin are durable before
    // it appends anything.
    let generation = last_generation
        .checked_add(1)
        .ok_or_else(|| StoreError::Internal("generation overflow".into()))?;
    checkpoint::write_meta(
        &disk,
        &cfg.dir,
        checkpoint::GENERATION_FILE,
        &checkpoint::Generation {
            generation,
            start_position: Some(scan.end_pos),
        },
    )
    .await?;
    let active_start = scan.last_segment;
    // Segments after the active one hold nothing we keep (a prepared empty
    // segment, or data after a cut): remove them.
    for (&start, _) in segments.range(active_start + 1..) {
        tracing::info!(
            segment = start,
            "retiring a log segment after the end of the log"
        );
        commit_log::retire_segment(&disk, &cfg, start).await?;
    }
    segments.retain(|&start, _| start <= active_start);
    if let std::collections::btree_map::Entry::Vacant(slot) = segments.entry(active_start) {
        let file = commit_log::create_segment(&disk, &cfg, active_start).await?;
        slot.insert(Rc::new(file));
    }
    {
        let mut st = state.borrow_mut();
        st.log = LogState::new(cfg.segment_bytes, active_start, scan.end_pos);
        st.log.segments = segments;
        st.generation = generation;
        st.generation_start_pos = scan.end_pos;
        st.previous_generation = scan.newest_generation;
        for q in st.queues.iter_mut() {
            q.visible_next = q.next_offset;
        }
    }
    flush_index(&state, &mut index, IndexFlush::FullBlocks).await?;
    tracing::info!(
        dir = %cfg.dir.display(),
        queues = rows.len(),
        checkpoint_position = ckpt.log_position,
        clean_shutdown = ckpt.clean,
        scanned_bytes = scan.end_pos - from,
        end_position = scan.end_pos,
        cut = ?scan.cut,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store opened"
    );
    let (tx, rx) = glommio::channels::local_channel::new_bounded(1);
    let (index_tx, index_rx) = glommio::channels::local_channel::new_bounded(1);
    let catch_up = glommio::executor().create_task_queue(
        glommio::Shares::Static(CATCH_UP_SHARES),
        glommio::Latency::NotImportant,
        "ringmq-catch-up-reads",
    );
    let inner = Rc::new(Inner {
        pending_room: glommio::sync::Semaphore::new(cfg.max_pending_bytes as u64),
        disk,
        state,
        wake: tx,
        index_wake: index_tx,
        index: futures::lock::Mutex::new(index),
        queue_table: futures::lock::Mutex::new(queue_table),
        roll_lock: futures::lock::Mutex::new(()),
        flusher: RefCell::new(None),
        indexer: RefCell::new(None),
        recovery: super::RecoveryReport {
            clean_shutdown: ckpt.clean,
            scanned_bytes: scan.end_pos - from,
            cut: scan.cut.clone(),
            end_position: scan.end_pos,
        },
        catch_up,
        catch_up_pace: super::CatchUpPace::new(cfg.catch_up_bytes_per_sec),
        dir_lock: RefCell::new(Some(dir_lock)),
        cfg,
    });
    let flusher = Flusher::new(Rc::downgrade(&inner), rx, inner.cfg.writes_in_flight);
    *inner.flusher.borrow_mut() = Some(glommio::spawn_local(flusher.run()));
    let indexer = Indexer::new(Rc::downgrade(&inner), index_rx, scan.end_pos);
    *inner.indexer.borrow_mut() = Some(glommio::spawn_local(indexer.run()));
    let period = Duration::from_millis(
        inner
            .cfg
            .flush_interval_ms
            .min(inner.cfg.checkpoint_interval_ms)
            .clamp(1, 100),
    );
    glommio::spawn_local(flusher::tick(Rc::downgrade(&inner), period)).detach();
    let retention_every = Duration::from_millis(inner.cfg.retention_check_interval_ms.max(1));
    glommio::spawn_local(super::retention::run(
        Rc::downgrade(&inner),
        retention_every,
    ))
    .detach();
    let store = Store { inner };
    store.repair_min_offsets().await?;
    store.spawn_prepare_next();
    Ok(store)
}

impl<D: Disk> Store<D> {
    /// After a crash between a retention deletion and the next checkpoint,
    /// a queue's recorded earliest offset may point into a deleted segment:
    /// move it to its first record in the oldest segment still present.
    async fn repair_min_offsets(&self) -> Result<(), StoreError> {
        let first = self
            .inner
            .state
            .borrow()
            .log
            .segments
            .keys()
            .next()
            .copied()
            .unwrap_or(0);
        let queues = self.inner.state.borrow().queues.len() as u32;
        for qnum in 1..=queues {
            let q = QueueNum(qnum);
            // Index files below the earliest offset may be gone already;
            // they always go from the oldest up.
            let floor = self.first_indexed_offset(q).await?;
            {
                let mut st = self.inner.state.borrow_mut();
                let qs = st.queue_mut(q)?;
                qs.min_offset = qs.min_offset.max(floor);
            }
            let (min, next) = self.offsets(q)?;
            if min < next && self.index_entry(q, min).await?.position < first {
                self.move_min_offset_past(q, first).await?;
                tracing::warn!(
                    queue = qnum,
                    earliest = self.offsets(q)?.0,
                    "earliest offset moved past deleted segments"
                );
            }
        }
        Ok(())
    }
}

impl<D: Disk> Store<D> {
    /// The first offset of queue `q` whose index entry still exists: the
    /// start of its oldest index file, else the first entry held in memory.
    async fn first_indexed_offset(&self, q: QueueNum) -> Result<u64, StoreError> {
        let dir = super::queue_index::index_dir(&self.inner.cfg.dir, q.0);
        let pending_from = self.inner.state.borrow().queue(q)?.index_pending_from;
        let names = self.inner.disk.list(&dir).await.unwrap_or_default();
        let oldest = names
            .iter()
            .filter_map(|n| n.strip_suffix(".idx").and_then(|n| n.parse::<u64>().ok()))
            .min();
        Ok(oldest.map_or(pending_from, |first| first.min(pending_from)))
    }
}

fn align_down_to(v: u64, unit: u64) -> u64 {
    v / unit * unit
}

fn initial_state<D: Disk>(
    cfg: &StoreConfig,
    rows: &[QueueRow],
    ckpt: &Checkpoint,
) -> Result<State<D::File>, StoreError> {
    let mut queues = Vec::with_capacity(rows.len());
    let mut by_name = HashMap::new();
    let at_checkpoint: HashMap<u32, QueueCheckpoint> =
        ckpt.queues.iter().map(|q| (q.qnum, *q)).collect();
    for row in rows {
        let at = at_checkpoint.get(&row.qnum).copied().unwrap_or_default();
        let mut q = QueueState::new(row.queue_id, at.next_offset);
        q.min_offset = at.min_offset;
        let key = (row.topic.clone(), row.queue_id);
        if row.deleted {
            by_name.remove(&key);
        } else {
            by_name.insert(key, QueueNum(row.qnum));
        }
        queues.push(q);
    }
    let mut offsets = BTreeMap::new();
    for (group, qnum, offset) in &ckpt.consumer_offsets {
        if let (Ok(g), true) = (
            GroupName::new(group.clone()),
            (*qnum as usize) <= queues.len(),
        ) {
            offsets.insert((g, *qnum), *offset);
        }
    }
    Ok(State {
        poisoned: None,
        closing: false,
        released: false,
        queues,
        by_name,
        log: LogState::new(cfg.segment_bytes, 0, 0),
        offsets,
        tail: RangeCache::new(cfg.tail_cache_bytes),
        read_ahead: RangeCache::new(cfg.read_ahead_bytes * cfg.read_ahead_windows),
        index_cache: FifoCache::new(cfg.index_cache_blocks),
        index_files: FifoCache::new(cfg.index_open_files),
        index_full: Vec::new(),
        index_pending_bytes: 0,
        meta_version: 0,
        segment_max_ts: ckpt.segment_max_ts.iter().copied().collect(),
        checkpoint_pos: ckpt.log_position,
        generation: 0,
        generation_start_pos: 0,
        previous_generation: ckpt.log_generation,
    })
}

#[derive(Debug)]
struct ScanResult {
    end_pos: u64,
    last_segment: u64,
    cut: Option<(u64, String)>,
    newest_generation: u32,
}

/// What the scan knows about generations: entries must not go below
/// `newest` (the newest seen so far) nor above `last_run`, and from
/// `last_run_start` on they must be of `last_run`.
#[derive(Debug, Clone, Copy)]
struct Generations {
    newest: u32,
    last_run: u32,
    last_run_start: Option<u64>,
}

impl Generations {
    /// The oldest generation an entry at log position `pos` may have.
    fn oldest_at(&self, pos: u64) -> u32 {
        if self.last_run_start.is_some_and(|start| pos >= start) {
            self.newest.max(self.last_run)
        } else {
            self.newest
        }
    }
}

/// Buffered sequential reads of one segment.
struct SegmentReader<'a, F> {
    file: &'a F,
    start: u64,
    len: u64,
    buf: bytes::Bytes,
    buf_from: u64,
}

impl<'a, F: DiskFile> SegmentReader<'a, F> {
    /// `[at, at + n)` of the segment, or `None` past its end.
    async fn bytes(&mut self, at: u64, n: usize) -> Result<Option<&[u8]>, StoreError> {
        let end = at + n as u64;
        if end > self.len {
            return Ok(None);
        }
        if at < self.buf_from || end > self.buf_from + self.buf.len() as u64 {
            self.buf_from = align_down(at);
            let want = (end - self.buf_from)
                .max(SCAN_READ_BYTES as u64)
                .min(self.len - self.buf_from);
            self.buf = self.file.read_at(self.buf_from, want as usize).await?;
        }
        let from = (at - self.buf_from) as usize;
        Ok(self.buf.get(from..from + n))
    }
}

enum Step {
    Entry { len: u64 },
    EndOfSegment,
    Bad(String),
}

/// Reads entries from `from` until the end of the log or the first bad
/// entry, appending index entries for each good one.
async fn scan<D: Disk>(
    cfg: &StoreConfig,
    segments: &BTreeMap<u64, Rc<D::File>>,
    from: u64,
    state: &RefCell<State<D::File>>,
    index: &mut IndexWriters<D>,
    mut generations: Generations,
) -> Result<ScanResult, StoreError> {
    let mut pos = from;
    let mut seg_start = align_down_to(from, cfg.segment_bytes);
    let mut last_report = from;
    let mut cut = None;
    while let Some(file) = segments.get(&seg_start) {
        let mut reader = SegmentReader {
            file: file.as_ref(),
            start: seg_start,
            len: cfg.segment_bytes,
            buf: bytes::Bytes::new(),
            buf_from: 0,
        };
        let step = loop {
            let step = scan_entry(&mut reader, pos - seg_start, state, &mut generations).await?;
            let Step::Entry { len } = step else {
                break step;
            };
            pos += len;
            if pos - last_report >= SCAN_PROGRESS_BYTES {
                tracing::info!(
                    position = pos,
                    scanned_mib = (pos - from) >> 20,
                    "recovering: scanning the log"
                );
                last_report = pos;
            }
            if state.borrow().index_pending_bytes > SCAN_INDEX_FLUSH_BYTES {
                flush_index(state, index, IndexFlush::EveryFullBlock).await?;
            }
        };
        match step {
            Step::Bad(reason) => {
                tracing::warn!(position = pos, segment = seg_start, %reason, "cutting the log: entries from here on are dropped");
                cut = Some((pos, reason));
                break;
            }
            _ => {
                // Zeros: the rest of this segment is unused. Go on only if the
                // next segment holds entries (we rolled into it).
                let next = seg_start + cfg.segment_bytes;
                // A recycled segment holds old entries: only a valid
                // continuation of the log counts.
                let has_data = match segments.get(&next) {
                    Some(f) => {
                        let mut next_reader = SegmentReader {
                            file: f.as_ref(),
                            start: next,
                            len: cfg.segment_bytes,
                            buf: bytes::Bytes::new(),
                            buf_from: 0,
                        };
                        matches!(
                            probe_entry(&mut next_reader, 0, state, &generations).await?,
                            Probe::Entry { .. }
                        )
                    }
                    None => false,
                };
                if !has_data {
                    break;
                }
                seg_start = next;
                pos = next;
            }
        }
    }
    Ok(ScanResult {
        end_pos: pos,
        last_segment: seg_start,
        cut,
        newest_generation: generations.newest,
    })
}

/// What is at a position of a segment.
enum Probe {
    /// A valid entry that continues the log.
    Entry {
        prefix: EntryPrefix,
        header: BatchHeader,
        len: usize,
    },
    /// Zeros, or the segment's end: no more entries here.
    End,
    /// Something that is not a continuation of the log.
    Bad(String),
}

/// Reads and checks the entry at `at` without changing anything: crc,
/// prefix, generation order, queue and offset continuity.
async fn probe_entry<F: DiskFile, G>(
    reader: &mut SegmentReader<'_, F>,
    at: u64,
    state: &RefCell<State<G>>,
    generations: &Generations,
) -> Result<Probe, StoreError> {
    let Some(head) = reader.bytes(at, ENTRY_PREFIX_BYTES).await? else {
        return Ok(Probe::End);
    };
    if EntryPrefix::is_empty(head) {
        return Ok(Probe::End);
    }
    let Some(head) = reader
        .bytes(at, ENTRY_PREFIX_BYTES + BATCH_HEADER_BYTES)
        .await?
    else {
        return Ok(Probe::Bad("entry header runs past the segment".into()));
    };
    let header = match BatchHeader::peek(&head[ENTRY_PREFIX_BYTES..]) {
        Ok(h) => h,
        Err(e) => return Ok(Probe::Bad(e.to_string())),
    };
    let len = ENTRY_PREFIX_BYTES + header.length as usize;
    let Some(entry) = reader.bytes(at, len).await? else {
        return Ok(Probe::Bad("entry runs past the segment".into()));
    };
    let verified = match batch::verify(&entry[ENTRY_PREFIX_BYTES..]) {
        Ok(v) => v,
        Err(e) => return Ok(Probe::Bad(e.to_string())),
    };
    let prefix = match EntryPrefix::read(entry, verified.header.crc) {
        Ok(p) => p,
        Err(e) => return Ok(Probe::Bad(e.into())),
    };
    let oldest = generations.oldest_at(reader.start + at);
    if prefix.generation < oldest {
        // Older than an entry before it, or than the run that wrote from
        // here on: the remains of a recycled segment or of writes a crash
        // lost. The log ends here; nothing is damaged.
        tracing::debug!(
            position = reader.start + at,
            generation = prefix.generation,
            oldest,
            "older generation after the end of the log"
        );
        return Ok(Probe::End);
    }
    if prefix.generation > generations.last_run {
        return Ok(Probe::Bad(format!(
            "entry of generation {} from no known run",
            prefix.generation
        )));
    }
    let st = state.borrow();
    let Some(q) = prefix
        .qnum
        .checked_sub(1)
        .and_then(|i| st.queues.get(i as usize))
    else {
        return Ok(Probe::Bad(format!("unknown queue number {}", prefix.qnum)));
    };
    if header.queue_id != q.queue_id {
        return Ok(Probe::Bad(format!(
            "batch for queue id {} in queue {}",
            header.queue_id, prefix.qnum
        )));
    }
    if header.base_offset != q.next_offset {
        return Ok(Probe::Bad(format!(
            "queue {} expects offset {} but the entry starts at {}",
            prefix.qnum, q.next_offset, header.base_offset
        )));
    }
    Ok(Probe::Entry {
        prefix,
        header,
        len,
    })
}

async fn scan_entry<F: DiskFile, G>(
    reader: &mut SegmentReader<'_, F>,
    at: u64,
    state: &RefCell<State<G>>,
    generations: &mut Generations,
) -> Result<Step, StoreError> {
    let (prefix, header, len) = match probe_entry(reader, at, state, generations).await? {
        Probe::Entry {
            prefix,
            header,
            len,
        } => (prefix, header, len),
        Probe::End => return Ok(Step::EndOfSegment),
        Probe::Bad(reason) => return Ok(Step::Bad(reason)),
    };
    generations.newest = prefix.generation;
    let mut st = state.borrow_mut();
    let st = &mut *st;
    let q = &mut st.queues[prefix.qnum as usize - 1];
    let entry = IndexEntry {
        position: reader.start + at,
        entry_len: len as u32,
        tag_hash: 0,
    }
    .encode();
    for _ in 0..header.record_count {
        q.index_pending.extend_from_slice(&entry);
    }
    q.next_offset = header.next_offset();
    st.index_grew(prefix.qnum, header.base_offset, header.next_offset());
    let newest = st
        .segment_max_ts
        .entry(reader.start)
        .or_insert(header.store_timestamp_ms);
    *newest = (*newest).max(header.store_timestamp_ms);
    Ok(Step::Entry { len: len as u64 })
}
