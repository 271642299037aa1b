//! The flusher: the one task that writes the log, syncs it, acknowledges
//! appends, writes index blocks and takes checkpoints. Everything that
//! awaits the disk on the write side happens here, in order, so appends
//! never hold a borrow across an await and group commit falls out of the
//! loop: whatever was placed while the last round was on the disk is
//! written, and in `sync` mode covered by one fdatasync, in the next.

use super::aligned::{BlockStager, BlockWrite};
use super::checkpoint::{self, Checkpoint, QueueCheckpoint};
use super::disk::{Disk, DiskFile, BLOCK_BYTES};
use super::queue_index::{IndexWriters, ENTRIES_PER_BLOCK, INDEX_ENTRY_BYTES};
use super::{Inner, State, StoreError};
use futures::channel::oneshot;
use ringmq_core::FlushMode;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

pub(super) struct Flusher<D: Disk> {
    pub(super) inner: Weak<Inner<D>>,
    pub(super) wake: glommio::channels::local_channel::LocalReceiver<()>,
    pub(super) index: IndexWriters<D>,
    /// Stages writes to the segment being appended to.
    segment: Option<(u64, BlockStager<D::File>)>,
    /// Log writes in flight, completing in any order.
    writes: Rc<RefCell<WritesInFlight>>,
    /// Slots for log writes in flight ([`StoreConfig::writes_in_flight`]).
    write_slots: Rc<glommio::sync::Semaphore>,
    /// Completes when the write that ended mid-block at the stager's
    /// position is done: the next write rewrites that block.
    partial_write: Option<oneshot::Receiver<()>>,
    /// Log position the last started fdatasync covers.
    sync_started_to: u64,
    last_sync: Instant,
    last_checkpoint: Instant,
    /// (written position, metadata version) the last checkpoint recorded.
    checkpointed: Option<(u64, u64)>,
    /// Slots for fdatasyncs in flight ([`SYNCS_IN_FLIGHT`]).
    sync_slots: Rc<glommio::sync::Semaphore>,
    /// Completes when the last started fdatasync has acknowledged (or failed).
    last_sync_done: oneshot::Receiver<bool>,
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

/// Which index entries to write.
#[derive(Debug, Clone, Copy)]
pub(super) enum IndexFlush {
    /// Whole blocks of the queues that gathered
    /// [`super::queue_index::WRITE_BLOCKS`] of them: done every round.
    FullBlocks,
    /// Whole blocks of every queue: recovery, when pending entries of many
    /// queues add up.
    EveryFullBlock,
    /// Everything acknowledged, partial blocks too: for checkpoints.
    UpToVisible,
}

/// Writes pending index entries of every queue (per `mode`) and trims them
/// from memory once written. Shared by recovery and the flusher.
pub(super) async fn flush_index<D: Disk>(
    state: &RefCell<State<D::File>>,
    index: &mut IndexWriters<D>,
    mode: IndexFlush,
) -> Result<(), StoreError> {
    let work: Vec<(u32, u64, Vec<u8>)> = {
        let mut st = state.borrow_mut();
        let st = &mut *st;
        // Whole blocks: only the queues that gathered enough of them (or,
        // in recovery, every queue). A checkpoint: every queue, partial
        // blocks too.
        let candidates: Vec<u32> = match mode {
            IndexFlush::FullBlocks => std::mem::take(&mut st.index_full),
            IndexFlush::EveryFullBlock | IndexFlush::UpToVisible => {
                st.index_full.clear();
                (1..=st.queues.len() as u32).collect()
            }
        };
        candidates
            .into_iter()
            .filter_map(|qnum| {
                let q = st.queues.get_mut(qnum as usize - 1)?;
                q.index_queued = false;
                let upto = match mode {
                    IndexFlush::FullBlocks | IndexFlush::EveryFullBlock => {
                        (q.next_offset / ENTRIES_PER_BLOCK) * ENTRIES_PER_BLOCK
                    }
                    IndexFlush::UpToVisible => q.visible_next,
                };
                let from = q.index_pending_from;
                let n = upto.checked_sub(from).filter(|&n| n > 0)?;
                let bytes = q.index_pending.get(..(n * INDEX_ENTRY_BYTES) as usize)?;
                Some((qnum, from, bytes.to_vec()))
            })
            .collect()
    };
    for (qnum, from, bytes) in work {
        index.write(qnum, from, &bytes).await?;
        let mut st = state.borrow_mut();
        let st = &mut *st;
        let q = &mut st.queues[qnum as usize - 1];
        debug_assert_eq!(q.index_pending_from, from);
        q.index_pending.drain(..bytes.len());
        q.index_pending_from += bytes.len() as u64 / INDEX_ENTRY_BYTES;
        // Consumers at the tail ask for these entries next: keep the whole
        // blocks just written, or each one is read straight back from disk.
        for (block_no, block) in whole_blocks(from, &bytes) {
            st.index_cache.insert((qnum, block_no), block);
        }
    }
    Ok(())
}

/// The whole index blocks inside `bytes`, entries written from offset
/// `from`: (block number, its bytes). A partial first or last block is left
/// out; its start or end is not in `bytes`.
fn whole_blocks(from: u64, bytes: &[u8]) -> impl Iterator<Item = (u64, bytes::Bytes)> + '_ {
    let first = from.div_ceil(ENTRIES_PER_BLOCK);
    let skip = ((first * ENTRIES_PER_BLOCK - from) * INDEX_ENTRY_BYTES) as usize;
    bytes
        .get(skip..)
        .unwrap_or_default()
        .chunks_exact(BLOCK_BYTES as usize)
        .zip(first..)
        .map(|(b, n)| (n, bytes::Bytes::copy_from_slice(b)))
}

impl<D: Disk> Flusher<D> {
    pub(super) fn new(
        inner: Weak<Inner<D>>,
        wake: glommio::channels::local_channel::LocalReceiver<()>,
        index: IndexWriters<D>,
        writes_in_flight: usize,
    ) -> Self {
        let (done, last_sync_done) = oneshot::channel();
        let _ = done.send(true);
        Self {
            inner,
            wake,
            index,
            segment: None,
            writes: Rc::default(),
            write_slots: Rc::new(glommio::sync::Semaphore::new(writes_in_flight as u64)),
            partial_write: None,
            sync_started_to: 0,
            last_sync: Instant::now(),
            last_checkpoint: Instant::now(),
            checkpointed: None,
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
                    if let Err(e) = self.checkpoint(&inner, true).await {
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
    /// one is due, write full index blocks, checkpoint when due.
    async fn round(&mut self, inner: &Rc<Inner<D>>) -> Result<(), StoreError> {
        let chunks: Vec<_> = {
            let mut st = inner.state.borrow_mut();
            st.log.pending.drain(..).collect()
        };
        let max_write = inner.cfg.max_write_bytes.max(BLOCK_BYTES as usize);
        for chunk in chunks {
            // A chunk is allocated for a full round (4 MiB) but a quiet round
            // holds little. The tail cache counts bytes, not allocations, so
            // a small round is copied to its own size rather than pin a
            // mostly empty 4 MiB buffer for as long as it is cached.
            let data = if chunk.data.capacity() > 2 * chunk.data.len() + SMALL_ROUND_SLACK {
                bytes::Bytes::copy_from_slice(&chunk.data)
            } else {
                chunk.data.freeze()
            };
            inner.state.borrow_mut().tail.push(chunk.pos, data.clone());
            let mut at = 0;
            while at < data.len() {
                let piece = data.slice(at..(at + max_write).min(data.len()));
                at += piece.len();
                self.stage(
                    inner,
                    chunk.seg_start,
                    chunk.pos + at as u64 - piece.len() as u64,
                    piece,
                )
                .await?;
            }
        }
        // Bytes held back for the next write go out once nothing else is
        // in flight: they may be all there is for a while.
        if self.writes.borrow().ends.is_empty() {
            self.flush_held(inner).await?;
        }
        let cfg = &inner.cfg;
        let (closing, written, synced) = {
            let st = inner.state.borrow();
            (st.closing, st.log.written_pos, st.log.synced_pos)
        };
        self.sync_started_to = self.sync_started_to.max(synced);
        let unsynced = written.saturating_sub(self.sync_started_to);
        let sync_due = unsynced > 0
            && match cfg.flush {
                FlushMode::Sync => true,
                FlushMode::Async => {
                    closing
                        || unsynced >= cfg.flush_bytes
                        || self.last_sync.elapsed() >= Duration::from_millis(cfg.flush_interval_ms)
                }
            };
        if sync_due {
            self.start_sync(inner).await?;
        }
        flush_index(&inner.state, &mut self.index, IndexFlush::FullBlocks).await?;
        if self.last_checkpoint.elapsed() >= Duration::from_millis(cfg.checkpoint_interval_ms) {
            self.checkpoint(inner, false).await?;
        }
        Ok(())
    }

    /// Stages `data`, placed at log position `pos` in the segment starting
    /// at `seg_start`, and issues the write it completes, if any.
    async fn stage(
        &mut self,
        inner: &Rc<Inner<D>>,
        seg_start: u64,
        pos: u64,
        data: bytes::Bytes,
    ) -> Result<(), StoreError> {
        let offset_in_segment = pos - seg_start;
        let current = matches!(&self.segment, Some((s, w)) if *s == seg_start && w.staged() == offset_in_segment);
        if !current {
            // The old segment is finished: its held bytes go out first.
            self.flush_held(inner).await?;
            let file = inner.state.borrow().log.segments.get(&seg_start).cloned();
            let file = file
                .ok_or_else(|| StoreError::Internal(format!("no segment file at {seg_start}")))?;
            self.partial_write = None;
            self.segment = Some((seg_start, BlockStager::open(file, offset_in_segment).await?));
        }
        let Some((_, stager)) = self.segment.as_mut() else {
            return Err(StoreError::Internal("segment stager missing".into()));
        };
        // Keep the partial block back while other writes may be in flight:
        // two writes in flight must not share a block.
        let write = stager.stage(data, true);
        if let Some(write) = write {
            self.issue(inner, seg_start, write).await?;
        }
        Ok(())
    }

    /// Writes the held-back partial block of the current segment, if any.
    async fn flush_held(&mut self, inner: &Rc<Inner<D>>) -> Result<(), StoreError> {
        let Some((seg_start, stager)) = self.segment.as_mut() else {
            return Ok(());
        };
        let seg_start = *seg_start;
        if let Some(write) = stager.flush_held() {
            self.issue(inner, seg_start, write).await?;
        }
        Ok(())
    }

    /// Issues `write` as its own task once a write slot is free and any
    /// earlier write to its first block is done. Its completion moves
    /// `written_pos` (in order) and, in `async` mode, acknowledges.
    async fn issue(
        &mut self,
        inner: &Rc<Inner<D>>,
        seg_start: u64,
        write: BlockWrite,
    ) -> Result<(), StoreError> {
        if let Some(earlier) = self.partial_write.take() {
            let _ = earlier.await;
        }
        let slot = self
            .write_slots
            .acquire_static_permit(1)
            .await
            .map_err(|_| StoreError::Closed)?;
        let Some((_, stager)) = self.segment.as_ref() else {
            return Err(StoreError::Internal("segment stager missing".into()));
        };
        let file = stager.file().clone();
        let end = seg_start + write.end;
        let (partial_done, partial_wait) = oneshot::channel();
        if write.partial {
            self.partial_write = Some(partial_wait);
        }
        self.writes.borrow_mut().ends.push_back((end, false));
        let writes = self.writes.clone();
        let weak = Rc::downgrade(inner);
        glommio::spawn_local(async move {
            let result = write.run(file.as_ref()).await;
            drop(slot);
            let _ = partial_done.send(());
            let Some(inner) = weak.upgrade() else { return };
            match result {
                Ok(()) => {
                    if let Some(to) = writes.borrow_mut().complete(end) {
                        inner.state.borrow_mut().log.written_pos = to;
                        if inner.cfg.flush == FlushMode::Async {
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
        let written = inner.state.borrow().log.written_pos;
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

    /// Syncs the log, brings every index file up to the acknowledged
    /// offsets, syncs them, then records the position atomically.
    /// An idle store skips periodic checkpoints that would record nothing
    /// new (no fsyncs while nothing happens); a clean one is always written.
    async fn checkpoint(&mut self, inner: &Rc<Inner<D>>, clean: bool) -> Result<(), StoreError> {
        let now = {
            let st = inner.state.borrow();
            (st.log.written_pos, st.meta_version)
        };
        if !clean && self.checkpointed == Some(now) {
            self.last_checkpoint = Instant::now();
            return Ok(());
        }
        self.sync_all(inner).await?;
        flush_index(&inner.state, &mut self.index, IndexFlush::UpToVisible).await?;
        self.index.sync().await?;
        let ckpt = {
            let st = inner.state.borrow();
            Checkpoint {
                log_position: st.log.acked_pos,
                clean,
                queues: st
                    .queues
                    .iter()
                    .enumerate()
                    .map(|(i, q)| QueueCheckpoint {
                        qnum: i as u32 + 1,
                        next_offset: q.visible_next,
                        min_offset: q.min_offset,
                    })
                    .collect(),
                consumer_offsets: st
                    .offsets
                    .iter()
                    .map(|((g, q), o)| (g.as_str().to_owned(), *q, *o))
                    .collect(),
                segment_max_ts: st.segment_max_ts.iter().map(|(s, t)| (*s, *t)).collect(),
                log_generation: if st.log.acked_pos > st.generation_start_pos {
                    st.generation
                } else {
                    st.previous_generation
                },
            }
        };
        checkpoint::write_meta(
            &inner.disk,
            &inner.cfg.dir,
            checkpoint::CHECKPOINT_FILE,
            &ckpt,
        )
        .await?;
        inner.state.borrow_mut().checkpoint_pos = ckpt.log_position;
        self.last_checkpoint = Instant::now();
        self.checkpointed = Some(now);
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
            let _ = tx.send(Ok(()));
        }
    }
    st.log.acked_pos = st.log.acked_pos.max(ack_to);
}

/// A write or sync failed: nothing more may be acknowledged.
fn poison<D: Disk>(inner: &Inner<D>, e: &StoreError) {
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
            let _ = tx.send(Err(err));
        }
    }
}

/// Wakes the flusher periodically so `async` syncs and checkpoints happen
/// while no appends arrive. Ends with the store.
pub(super) async fn tick<D: Disk>(inner: Weak<Inner<D>>, period: Duration) {
    loop {
        glommio::timer::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.state.borrow().closing {
            return;
        }
        let _ = inner.wake.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(from: u64, n: u64) -> Vec<u8> {
        (from..from + n)
            .flat_map(|o| {
                let mut e = [0u8; INDEX_ENTRY_BYTES as usize];
                e[..8].copy_from_slice(&o.to_le_bytes());
                e
            })
            .collect()
    }

    #[test]
    fn only_whole_index_blocks_are_kept() {
        let epb = ENTRIES_PER_BLOCK;
        // From a block boundary: two whole blocks and a partial third.
        let bytes = entries(epb, 2 * epb + 5);
        let got: Vec<_> = whole_blocks(epb, &bytes).collect();
        assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(got[1].1[..8], (2 * epb).to_le_bytes());
        assert_eq!(got[1].1.len(), BLOCK_BYTES as usize);
        // From mid-block: the first block's start is not there.
        let bytes = entries(3, 2 * epb);
        let got: Vec<_> = whole_blocks(3, &bytes).collect();
        assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1]);
        assert_eq!(got[0].1[..8], epb.to_le_bytes());
        // Less than a block: nothing.
        assert_eq!(whole_blocks(7, &entries(7, 10)).count(), 0);
    }
}
