//! The flusher: the one task that writes the log, syncs it and
//! acknowledges appends. Everything that awaits the log on the write side
//! happens here, in order, so appends never hold a borrow across an await
//! and group commit falls out of the loop: whatever was placed while the
//! last round was on the disk is written, and in `sync` mode covered by
//! one fdatasync, in the next (or, with write-through segments, durable
//! when its write completes). Index blocks and periodic checkpoints are
//! the indexer's, beside it; the clean checkpoint at close is the
//! flusher's, once everything is written and synced.

use super::aligned::partial_block;
use super::commit_log::Chunk;
use super::disk::{align_down, align_up, Disk, DiskFile, BLOCK_BYTES};
use super::indexer::{self, IndexFlush};
use super::queue_index::PENDING_MAX_BYTES;
use super::{Inner, StoreError};
use futures::channel::oneshot;
use ringmq_core::FlushMode;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

pub(super) struct Flusher<D: Disk> {
    pub(super) inner: Weak<Inner<D>>,
    pub(super) wake: glommio::channels::local_channel::LocalReceiver<()>,
    /// Where the flusher is in the segment being appended to.
    segment: Option<Cursor<D::File>>,
    /// Log writes in flight, completing in any order.
    writes: Rc<RefCell<WritesInFlight>>,
    /// Slots for log writes in flight ([`StoreConfig::writes_in_flight`]).
    write_slots: Rc<glommio::sync::Semaphore>,
    /// Completes when the write that ended mid-block at the stager's
    /// position is done: the next write rewrites that block.
    partial_write: Option<oneshot::Receiver<()>>,
    /// Log position the last started fdatasync covers.
    sync_started_to: u64,
    /// `sync` mode: the end of the log writes that were in flight when an
    /// fdatasync first came due; it starts once they have completed.
    sync_waits_for: Option<u64>,
    last_sync: Instant,
    /// Slots for fdatasyncs in flight ([`SYNCS_IN_FLIGHT`]).
    sync_slots: Rc<glommio::sync::Semaphore>,
    /// Completes when the last started fdatasync has acknowledged (or failed).
    last_sync_done: oneshot::Receiver<bool>,
}

/// The flusher's place in the segment it appends to.
struct Cursor<F> {
    seg_start: u64,
    file: Rc<F>,
    /// Bytes of the segment handed to the flusher: written, in flight or held.
    staged: u64,
    /// The bytes of the block holding `staged`, up to it: they lead the
    /// next chunk, whose first write rewrites that block.
    block: Vec<u8>,
    /// A write of that block, held back while other writes are in flight
    /// (two writes in flight must never share a block). It keeps its
    /// chunk's buffer alive until the next chunk supersedes it or it is
    /// written: one chunk at most.
    held: Option<LogWrite>,
}

/// One write of the log: whole blocks of a chunk, as placed.
struct LogWrite {
    /// Offset in the segment, block-aligned.
    start: u64,
    /// Whole blocks, zero-padded past the last entry.
    data: bytes::Bytes,
    /// Bytes of the segment this write completes: everything before `end`
    /// is on disk once it (and every earlier write) has completed.
    end: u64,
}

impl LogWrite {
    /// Whether it ends mid-block (the next write rewrites that block).
    fn partial(&self) -> bool {
        !self.end.is_multiple_of(BLOCK_BYTES)
    }
}

/// The log writes in flight, by log position, oldest first: `written_pos`
/// moves over a write only once it and every write before it completed.
#[derive(Debug, Default)]
struct WritesInFlight {
    /// (log position the write completes, whether it has completed).
    ends: VecDeque<(u64, bool)>,
}

impl WritesInFlight {
    /// Marks the write ending at `end` done; returns the new contiguous
    /// written position if it moved.
    fn complete(&mut self, end: u64) -> Option<u64> {
        if let Some(w) = self.ends.iter_mut().find(|(e, done)| *e == end && !*done) {
            w.1 = true;
        }
        let mut moved = None;
        while let Some(&(e, true)) = self.ends.front() {
            moved = Some(e);
            self.ends.pop_front();
        }
        moved
    }
}

/// Unused capacity a cached round may keep before it is copied to size.
const SMALL_ROUND_SLACK: usize = 64 * 1024;

/// fdatasyncs in flight at once: while one runs, the next round is written
/// and its fdatasync queued, so writing and syncing overlap instead of
/// alternating.
const SYNCS_IN_FLIGHT: u64 = 2;

impl<D: Disk> Flusher<D> {
    pub(super) fn new(
        inner: Weak<Inner<D>>,
        wake: glommio::channels::local_channel::LocalReceiver<()>,
        writes_in_flight: usize,
    ) -> Self {
        let (done, last_sync_done) = oneshot::channel();
        let _ = done.send(true);
        Self {
            inner,
            wake,
            segment: None,
            writes: Rc::default(),
            write_slots: Rc::new(glommio::sync::Semaphore::new(writes_in_flight as u64)),
            partial_write: None,
            sync_started_to: 0,
            sync_waits_for: None,
            last_sync: Instant::now(),
            sync_slots: Rc::new(glommio::sync::Semaphore::new(SYNCS_IN_FLIGHT)),
            last_sync_done,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            if inner.state.borrow().poisoned.is_none() {
                if let Err(e) = self.round(&inner).await {
                    poison(&inner, &e);
                }
            }
            let (closing, idle, poisoned) = {
                let st = inner.state.borrow();
                (st.closing, st.log.pending.is_empty(), st.poisoned.is_some())
            };
            if closing && (idle || poisoned) {
                if !poisoned {
                    if let Err(e) = self.clean_checkpoint(&inner).await {
                        poison(&inner, &e);
                    }
                }
                fail_waiters(&inner);
                return;
            }
            if idle || poisoned {
                // New appends, a finished write or fdatasync, or the tick
                // wake us; none is lost (the channel keeps one wake).
                drop(inner);
                if self.wake.recv().await.is_none() {
                    return;
                }
            }
        }
    }

    /// One pass: hand what was placed to the disk, start an fdatasync when
    /// one is due, and wake the indexer when queues gathered index blocks.
    async fn round(&mut self, inner: &Rc<Inner<D>>) -> Result<(), StoreError> {
        if inner.state.borrow().index_pending_bytes > PENDING_MAX_BYTES {
            // The indexer fell behind: hold the log (and so the appends
            // behind it) back until the index catches up.
            let mut index = inner.index.lock().await;
            indexer::flush_index(&inner.state, &mut index, IndexFlush::EveryFullBlock).await?;
        }
        let chunks: Vec<_> = inner.state.borrow_mut().log.pending.drain(..).collect();
        let last_chunk = chunks.len().saturating_sub(1);
        for (chunk_no, chunk) in chunks.into_iter().enumerate() {
            // With no write in flight, the round's last bytes go out at
            // once, partial block and all; the next write, which rewrites
            // that block, waits for this one. Held back, they would need a
            // write (and in `sync` mode an fdatasync) of their own after
            // it. With writes in flight (a busy log), the partial block is
            // held so writes keep overlapping.
            let hold = chunk_no != last_chunk || !self.writes.borrow().ends.is_empty();
            self.stage(inner, chunk, hold).await?;
        }
        // Bytes held back go out once nothing else is in flight: they may
        // be all there is for a while.
        if self.writes.borrow().ends.is_empty() {
            self.flush_held(inner).await?;
        }
        let cfg = &inner.cfg;
        let (closing, written, synced, wanted, index_due) = {
            let st = inner.state.borrow();
            (
                st.closing,
                st.log.written_pos,
                st.log.synced_pos,
                st.log.sync_wanted_to,
                !st.index_full.is_empty(),
            )
        };
        self.sync_started_to = self.sync_started_to.max(synced);
        let unsynced = written.saturating_sub(self.sync_started_to);
        let sync_due = unsynced > 0
            && match cfg.flush {
                FlushMode::Sync => self.round_written(written),
                FlushMode::Async => {
                    closing
                        || wanted > self.sync_started_to
                        || unsynced >= cfg.flush_bytes
                        || self.last_sync.elapsed() >= Duration::from_millis(cfg.flush_interval_ms)
                }
            };
        if sync_due {
            self.sync_waits_for = None;
            self.start_sync(inner).await?;
        }
        if index_due {
            let _ = inner.index_wake.try_send(());
        }
        Ok(())
    }

    /// `sync` mode, with bytes written but not yet synced: whether the
    /// writes in flight when this first came up have all completed. A round
    /// split into several writes (a held partial block, a segment roll, a
    /// round over `max_write_bytes`) is so covered by one fdatasync, not by
    /// one for its first writes and a second, queued behind the first, for
    /// the rest. Writes issued later do not hold it back, so it waits for
    /// one round of writes at most. Store bench `sync` case, 3 pairs on
    /// this machine: an fdatasync's own p50 fell from 225-274 to 100-136 µs
    /// (half as many ran, and none beside a write), acks/s rose in 2 of 3.
    fn round_written(&mut self, written: u64) -> bool {
        let last_in_flight = self.writes.borrow().ends.back().map(|&(end, _)| end);
        let waits_for = *self
            .sync_waits_for
            .get_or_insert(last_in_flight.unwrap_or(written));
        written >= waits_for
    }

    /// Hands `chunk` to the disk: caches its bytes as the tail and issues
    /// its whole blocks as writes, straight from its buffer. With `hold` a
    /// partial last block is kept back for the next chunk (or
    /// [`Self::flush_held`]).
    async fn stage(
        &mut self,
        inner: &Rc<Inner<D>>,
        mut chunk: Chunk,
        hold: bool,
    ) -> Result<(), StoreError> {
        let off = chunk.pos - chunk.seg_start;
        let len = chunk.len();
        let cursor = self.cursor(inner, chunk.seg_start, off).await?;
        // The block's earlier bytes lead the chunk; a held write of that
        // block is superseded by the chunk's first write.
        if cursor.block.len() != chunk.lead {
            return Err(StoreError::Internal(format!(
                "chunk at {} leads with {} bytes, the flusher has {}",
                chunk.pos,
                chunk.lead,
                cursor.block.len()
            )));
        }
        let (first, lead) = (chunk.start, chunk.lead);
        chunk.buf[first..first + lead].copy_from_slice(&cursor.block);
        cursor.held = None;
        let end = off + len as u64;
        let file_start = align_down(off);
        let last_block = (align_down(end) - file_start) as usize;
        cursor.block.clear();
        cursor
            .block
            .extend_from_slice(&chunk.buf[first + last_block..]);
        cursor.staged = end;
        let padded = align_up((lead + len) as u64) as usize;
        let capacity = chunk.buf.capacity();
        chunk.buf.resize(first + padded, 0);
        let all = bytes::Bytes::from(chunk.buf);
        let data = all.slice(first + lead..first + lead + len);
        // The tail cache takes the round's bytes as they are for now; a
        // small round is swapped for a copy of its own size (below).
        inner.state.borrow_mut().tail.push(chunk.pos, data.clone());

        let blocks = all.slice(first..first + padded);
        let write_end = if hold { align_down(end) } else { end };
        let held = (write_end < end).then(|| LogWrite {
            start: align_down(end),
            data: blocks.slice(last_block..last_block + BLOCK_BYTES as usize),
            end,
        });
        let write_len = (align_up(write_end) - file_start) as usize;
        let max_write = align_down(inner.cfg.max_write_bytes as u64).max(BLOCK_BYTES) as usize;
        let mut at = 0;
        while at < write_len {
            let n = max_write.min(write_len - at);
            let piece_end = (file_start + (at + n) as u64).min(write_end);
            let write = LogWrite {
                start: file_start + at as u64,
                data: blocks.slice(at..at + n),
                end: piece_end,
            };
            self.issue(inner, write).await?;
            at += n;
        }
        if let Some(cursor) = self.segment.as_mut() {
            cursor.held = held;
        }
        // A chunk is allocated for a full round (4 MiB) but a quiet round
        // holds little. The tail cache counts bytes, not allocations, so a
        // small round is copied to its own size rather than pin a mostly
        // empty buffer for as long as it is cached.
        //
        // The copy is made once the round's writes are in the kernel (the
        // yield lets their tasks submit them), while the device works, not
        // before: it writes into memory the cache last held 64 MiB ago, out
        // of every CPU cache, and was about a tenth of the CPU per
        // acknowledgement in the sync case (store bench, recycled segments
        // alone in a fresh process, 2026-12-03, 4 pairs: 0.88-1.11 µs with
        // no tail cache at all against 1.11-1.21 with it). Tried instead:
        // the copy with non-temporal stores (lower CPU in 6 of 10 pairs,
        // not kept), and chunks sized so the cache keeps them with no copy
        // (worse: see `CHUNK_CAPACITY_BYTES`).
        if capacity > 2 * len + SMALL_ROUND_SLACK {
            glommio::executor().yield_now().await;
            let copy = bytes::Bytes::copy_from_slice(&data);
            inner.state.borrow_mut().tail.replace(chunk.pos, copy);
        }
        Ok(())
    }

    /// The cursor of the segment starting at `seg_start`, at offset `off`:
    /// the current one, or (after a roll, or at the first round) a new one,
    /// reading the partial block at `off` back from disk.
    async fn cursor(
        &mut self,
        inner: &Rc<Inner<D>>,
        seg_start: u64,
        off: u64,
    ) -> Result<&mut Cursor<D::File>, StoreError> {
        let current =
            matches!(&self.segment, Some(c) if c.seg_start == seg_start && c.staged == off);
        if !current {
            // The old segment is finished: its held bytes go out first.
            self.flush_held(inner).await?;
            let file = inner.state.borrow().log.segments.get(&seg_start).cloned();
            let file = file
                .ok_or_else(|| StoreError::Internal(format!("no segment file at {seg_start}")))?;
            let block = partial_block(file.as_ref(), off).await?;
            self.partial_write = None;
            self.segment = Some(Cursor {
                seg_start,
                file,
                staged: off,
                block,
                held: None,
            });
        }
        self.segment
            .as_mut()
            .ok_or_else(|| StoreError::Internal("segment cursor missing".into()))
    }

    /// Writes the held-back partial block of the current segment, if any.
    async fn flush_held(&mut self, inner: &Rc<Inner<D>>) -> Result<(), StoreError> {
        if let Some(write) = self.segment.as_mut().and_then(|c| c.held.take()) {
            self.issue(inner, write).await?;
        }
        Ok(())
    }

    /// Issues `write`, a write of the current segment, as its own task
    /// once a write slot is free and any earlier write to its first block
    /// is done. Its completion moves `written_pos` (in order) and
    /// acknowledges in `async` mode, and in `sync` mode when the log is
    /// write-through (the write was durable when it completed).
    async fn issue(&mut self, inner: &Rc<Inner<D>>, write: LogWrite) -> Result<(), StoreError> {
        if let Some(earlier) = self.partial_write.take() {
            let _ = earlier.await;
        }
        let slot = self
            .write_slots
            .acquire_static_permit(1)
            .await
            .map_err(|_| StoreError::Closed)?;
        let Some(cursor) = self.segment.as_ref() else {
            return Err(StoreError::Internal("segment cursor missing".into()));
        };
        let file = cursor.file.clone();
        let end = cursor.seg_start + write.end;
        let (partial_done, partial_wait) = oneshot::channel();
        if write.partial() {
            self.partial_write = Some(partial_wait);
        }
        self.writes.borrow_mut().ends.push_back((end, false));
        let writes = self.writes.clone();
        let weak = Rc::downgrade(inner);
        glommio::spawn_local(async move {
            let result = file.write_aligned(write.start, write.data).await;
            drop(slot);
            let _ = partial_done.send(());
            let Some(inner) = weak.upgrade() else { return };
            match result {
                Ok(()) => {
                    if let Some(to) = writes.borrow_mut().complete(end) {
                        inner.state.borrow_mut().log.written_pos = to;
                        if inner.cfg.log_write_through() {
                            // Durable already: no fdatasync follows.
                            mark_synced(&inner, to);
                        } else if inner.cfg.flush == FlushMode::Async {
                            acknowledge(&inner, to);
                        }
                    }
                }
                Err(e) => poison(&inner, &StoreError::from(e)),
            }
            let _ = inner.wake.try_send(());
        })
        .detach();
        Ok(())
    }

    /// Waits until every log write has completed, the held bytes included.
    async fn drain_writes(&mut self, inner: &Rc<Inner<D>>) -> Result<(), StoreError> {
        self.flush_held(inner).await?;
        let all = self
            .write_slots
            .acquire_permit(inner.cfg.writes_in_flight as u64)
            .await
            .map_err(|_| StoreError::Closed)?;
        drop(all);
        match inner.state.borrow().poisoned.clone() {
            Some(cause) => Err(StoreError::Poisoned(cause)),
            None => Ok(()),
        }
    }

    /// The segment files holding log bytes in `[from, to)`.
    fn files_between(inner: &Inner<D>, from: u64, to: u64) -> Vec<Rc<D::File>> {
        let st = inner.state.borrow();
        let first = from - from % st.log.segment_bytes;
        st.log
            .segments
            .range(first..to)
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// Starts an fdatasync of every segment written since the last one, as
    /// its own task: it covers everything written so far, and (in `sync`
    /// mode) acknowledges it once it and every earlier fdatasync succeeded.
    /// Waits only while [`SYNCS_IN_FLIGHT`] are running.
    async fn start_sync(&mut self, inner: &Rc<Inner<D>>) -> Result<(), StoreError> {
        let slot = self
            .sync_slots
            .acquire_static_permit(1)
            .await
            .map_err(|_| StoreError::Closed)?;
        let covered = inner.state.borrow().log.written_pos;
        let files = Self::files_between(inner, self.sync_started_to, covered);
        self.sync_started_to = covered;
        self.last_sync = Instant::now();
        let (done, next_done) = oneshot::channel();
        let previous = std::mem::replace(&mut self.last_sync_done, next_done);
        let weak = Rc::downgrade(inner);
        glommio::spawn_local(async move {
            let _slot = slot;
            let mut result = Ok(());
            for file in files {
                if let Err(e) = file.sync().await {
                    result = Err(StoreError::from(e));
                    break;
                }
            }
            // A later fdatasync says nothing about an older segment still
            // being synced: acknowledge in the order the syncs started.
            let earlier_ok = previous.await.unwrap_or(false);
            let Some(inner) = weak.upgrade() else { return };
            let ok = match result {
                Ok(()) if earlier_ok => {
                    mark_synced(&inner, covered);
                    true
                }
                Ok(()) => false,
                Err(e) => {
                    poison(&inner, &e);
                    false
                }
            };
            let _ = done.send(ok);
            // Writes that completed meanwhile may want the next fdatasync.
            let _ = inner.wake.try_send(());
        })
        .detach();
        Ok(())
    }

    /// Waits for every write and fdatasync in flight, then syncs what is
    /// left inline: afterwards everything placed is durable (or the store
    /// is poisoned).
    async fn sync_all(&mut self, inner: &Rc<Inner<D>>) -> Result<(), StoreError> {
        self.drain_writes(inner).await?;
        let all = self
            .sync_slots
            .acquire_permit(SYNCS_IN_FLIGHT)
            .await
            .map_err(|_| StoreError::Closed)?;
        drop(all);
        if let Some(cause) = inner.state.borrow().poisoned.clone() {
            return Err(StoreError::Poisoned(cause));
        }
        let (written, synced) = {
            let st = inner.state.borrow();
            (st.log.written_pos, st.log.synced_pos)
        };
        self.sync_started_to = self.sync_started_to.max(synced);
        if written > self.sync_started_to {
            for file in Self::files_between(inner, self.sync_started_to, written) {
                file.sync().await?;
            }
        }
        self.sync_started_to = written;
        self.last_sync = Instant::now();
        mark_synced(inner, written);
        Ok(())
    }

    /// At close, once no append can come: syncs everything, then records
    /// a clean checkpoint, so the next open does not rescan.
    async fn clean_checkpoint(&mut self, inner: &Rc<Inner<D>>) -> Result<(), StoreError> {
        self.sync_all(inner).await?;
        let ckpt = indexer::snapshot(&inner.state.borrow(), true);
        indexer::write_checkpoint(inner, ckpt).await?;
        Ok(())
    }
}

/// Records that everything before `pos` is durable; in `sync` mode that
/// is what acknowledges appends.
fn mark_synced<D: Disk>(inner: &Inner<D>, pos: u64) {
    {
        let mut st = inner.state.borrow_mut();
        st.log.synced_pos = st.log.synced_pos.max(pos);
    }
    let written = inner.state.borrow().log.written_pos;
    match inner.cfg.flush {
        FlushMode::Sync => acknowledge(inner, pos),
        FlushMode::Async => acknowledge(inner, written),
    }
    // A checkpoint may be waiting for the log to be durable.
    let _ = inner.index_wake.try_send(());
}

/// Completes every waiter whose bytes end at or before `ack_to` and makes
/// its records visible to fetches.
fn acknowledge<D: Disk>(inner: &Inner<D>, ack_to: u64) {
    let mut st = inner.state.borrow_mut();
    let st = &mut *st;
    while st.log.waiters.front().is_some_and(|w| w.end_pos <= ack_to) {
        let Some(mut w) = st.log.waiters.pop_front() else {
            break;
        };
        if let Some(q) = st.queues.get_mut(w.qnum as usize - 1) {
            q.visible_next = w.next_offset;
        }
        if let Some(tx) = w.tx.take() {
            tx.send(Ok(()));
        }
        // The end of an entry, never `ack_to` itself: a write or fdatasync
        // may end mid-entry, and a checkpoint records this position as
        // where recovery's scan starts.
        st.log.acked_pos = st.log.acked_pos.max(w.end_pos);
    }
}

/// A write or sync failed: nothing more may be acknowledged.
pub(super) fn poison<D: Disk>(inner: &Inner<D>, e: &StoreError) {
    tracing::error!(error = %e, dir = %inner.cfg.dir.display(), "store poisoned: refusing writes until restart");
    let mut st = inner.state.borrow_mut();
    if st.poisoned.is_none() {
        st.poisoned = Some(e.to_string());
    }
    st.log.pending.clear();
    drop(st);
    fail_waiters(inner);
}

/// Fails every waiting append: with the poisoning cause, or as closed.
fn fail_waiters<D: Disk>(inner: &Inner<D>) {
    let mut st = inner.state.borrow_mut();
    let cause = st.poisoned.clone();
    for mut w in st.log.waiters.drain(..) {
        if let Some(tx) = w.tx.take() {
            let err = cause
                .clone()
                .map_or(StoreError::Closed, StoreError::Poisoned);
            tx.send(Err(err));
        }
    }
}

/// Wakes the flusher and the indexer periodically so `async` syncs and
/// checkpoints happen while no appends arrive. Ends with the store.
pub(super) async fn tick<D: Disk>(inner: Weak<Inner<D>>, period: Duration) {
    loop {
        glommio::timer::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.state.borrow().closing {
            return;
        }
        let _ = inner.wake.try_send(());
        let _ = inner.index_wake.try_send(());
    }
}
