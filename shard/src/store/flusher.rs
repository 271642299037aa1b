//! The flusher: the one task that writes the log, syncs it, acknowledges
//! appends, writes index blocks and takes checkpoints. Everything that
//! awaits the disk on the write side happens here, in order, so appends
//! never hold a borrow across an await and group commit falls out of the
//! loop: whatever was placed while the last round was on the disk is
//! written, and in `sync` mode covered by one fdatasync, in the next.

use super::aligned::AlignedWriter;
use super::checkpoint::{self, Checkpoint, QueueCheckpoint};
use super::disk::{Disk, DiskFile};
use super::queue_index::{IndexWriters, ENTRIES_PER_BLOCK, INDEX_ENTRY_BYTES};
use super::{Inner, State, StoreError};
use futures::channel::oneshot;
use ringmq_core::FlushMode;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

pub(super) struct Flusher<D: Disk> {
    pub(super) inner: Weak<Inner<D>>,
    pub(super) wake: glommio::channels::local_channel::LocalReceiver<()>,
    pub(super) index: IndexWriters<D>,
    segment: Option<(u64, AlignedWriter<D::File>)>,
    unsynced: BTreeMap<u64, Rc<D::File>>,
    unsynced_bytes: u64,
    last_sync: Instant,
    last_checkpoint: Instant,
    /// (written position, metadata version) the last checkpoint recorded.
    checkpointed: Option<(u64, u64)>,
    /// Slots for fdatasyncs in flight ([`SYNCS_IN_FLIGHT`]).
    sync_slots: Rc<glommio::sync::Semaphore>,
    /// Completes when the last started fdatasync has acknowledged (or failed).
    last_sync_done: oneshot::Receiver<bool>,
}

/// fdatasyncs in flight at once: while one runs, the next round is written
/// and its fdatasync queued, so writing and syncing overlap instead of
/// alternating.
const SYNCS_IN_FLIGHT: u64 = 2;

/// Which index entries to write.
#[derive(Debug, Clone, Copy)]
pub(super) enum IndexFlush {
    /// Only whole blocks: cheap, done every round.
    FullBlocks,
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
        // Whole blocks: only queues that completed one since the last pass.
        // A checkpoint: every queue, partial blocks too.
        let candidates: Vec<u32> = match mode {
            IndexFlush::FullBlocks => std::mem::take(&mut st.index_full),
            IndexFlush::UpToVisible => (1..=st.queues.len() as u32).collect(),
        };
        candidates
            .into_iter()
            .filter_map(|qnum| {
                let q = st.queues.get_mut(qnum as usize - 1)?;
                let upto = match mode {
                    IndexFlush::FullBlocks => {
                        q.index_queued = false;
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
        let q = &mut st.queues[qnum as usize - 1];
        debug_assert_eq!(q.index_pending_from, from);
        q.index_pending.drain(..bytes.len());
        q.index_pending_from += bytes.len() as u64 / INDEX_ENTRY_BYTES;
    }
    Ok(())
}

impl<D: Disk> Flusher<D> {
    pub(super) fn new(
        inner: Weak<Inner<D>>,
        wake: glommio::channels::local_channel::LocalReceiver<()>,
        index: IndexWriters<D>,
    ) -> Self {
        let (done, last_sync_done) = oneshot::channel();
        let _ = done.send(true);
        Self {
            inner,
            wake,
            index,
            segment: None,
            unsynced: BTreeMap::new(),
            unsynced_bytes: 0,
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
                drop(inner);
                if self.wake.recv().await.is_none() {
                    return;
                }
            }
        }
    }

    async fn round(&mut self, inner: &Rc<Inner<D>>) -> Result<(), StoreError> {
        let chunks: Vec<_> = {
            let mut st = inner.state.borrow_mut();
            st.log.pending.drain(..).collect()
        };
        for chunk in chunks {
            let data = chunk.data.freeze();
            self.write_segment(inner, chunk.seg_start, chunk.pos, &data)
                .await?;
            let mut st = inner.state.borrow_mut();
            st.log.written_pos = chunk.pos + data.len() as u64;
            self.unsynced_bytes += data.len() as u64;
            st.tail.push(chunk.pos, data);
        }
        let cfg = &inner.cfg;
        let closing = inner.state.borrow().closing;
        let sync_due = !self.unsynced.is_empty()
            && match cfg.flush {
                FlushMode::Sync => true,
                FlushMode::Async => {
                    closing
                        || self.unsynced_bytes >= cfg.flush_bytes
                        || self.last_sync.elapsed() >= Duration::from_millis(cfg.flush_interval_ms)
                }
            };
        if sync_due {
            self.start_sync(inner).await?;
        }
        if cfg.flush == FlushMode::Async {
            let written = inner.state.borrow().log.written_pos;
            acknowledge(inner, written);
        }
        flush_index(&inner.state, &mut self.index, IndexFlush::FullBlocks).await?;
        if self.last_checkpoint.elapsed() >= Duration::from_millis(cfg.checkpoint_interval_ms) {
            self.checkpoint(inner, false).await?;
        }
        Ok(())
    }

    async fn write_segment(
        &mut self,
        inner: &Inner<D>,
        seg_start: u64,
        pos: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let offset_in_segment = pos - seg_start;
        let current = matches!(&self.segment, Some((s, w)) if *s == seg_start && w.written() == offset_in_segment);
        if !current {
            let file = inner.state.borrow().log.segments.get(&seg_start).cloned();
            let file = file
                .ok_or_else(|| StoreError::Internal(format!("no segment file at {seg_start}")))?;
            self.segment = Some((
                seg_start,
                AlignedWriter::open(file, offset_in_segment).await?,
            ));
        }
        let Some((_, writer)) = self.segment.as_mut() else {
            return Err(StoreError::Internal("segment writer missing".into()));
        };
        writer.append(data).await?;
        self.unsynced.insert(seg_start, writer.file().clone());
        Ok(())
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
        let files: Vec<Rc<D::File>> = std::mem::take(&mut self.unsynced).into_values().collect();
        let covered = inner.state.borrow().log.written_pos;
        self.unsynced_bytes = 0;
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
        })
        .detach();
        Ok(())
    }

    /// Waits for every fdatasync in flight, then syncs what is left inline:
    /// afterwards everything written is durable (or the store is poisoned).
    async fn sync_all(&mut self, inner: &Rc<Inner<D>>) -> Result<(), StoreError> {
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
        for file in std::mem::take(&mut self.unsynced).into_values() {
            file.sync().await?;
        }
        self.unsynced_bytes = 0;
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
