//! The indexer: the task that writes whole index blocks and takes periodic
//! checkpoints, beside the flusher rather than in its loop. Neither is on
//! the path to an acknowledgement (recovery rebuilds unwritten index
//! entries from the log after the last checkpoint), so the log's next
//! write and fdatasync never wait behind them. Measured before this split,
//! in the store bench's sync case, the flusher spent ~10 % of its time in
//! index writes and ~2 % in checkpoints, each time holding back the next
//! round of acknowledgements.
//!
//! The index files are behind one lock, so the indexer's writes, its
//! checkpoints and the flusher's clean checkpoint at close never overlap.

use super::checkpoint::{self, Checkpoint, QueueCheckpoint};
use super::disk::{Disk, BLOCK_BYTES};
use super::flusher::poison;
use super::queue_index::{IndexWriters, ENTRIES_PER_BLOCK, INDEX_ENTRY_BYTES, WRITE_BLOCKS};
use super::{Inner, State, StoreError};
use ringmq_core::FlushMode;
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

pub(super) struct Indexer<D: Disk> {
    pub(super) inner: Weak<Inner<D>>,
    pub(super) wake: glommio::channels::local_channel::LocalReceiver<()>,
    last_checkpoint: Instant,
    /// Log position when the last checkpoint started.
    last_checkpoint_pos: u64,
    /// (written position, metadata version) the last checkpoint recorded.
    checkpointed: Option<(u64, u64)>,
}

impl<D: Disk> Indexer<D> {
    pub(super) fn new(
        inner: Weak<Inner<D>>,
        wake: glommio::channels::local_channel::LocalReceiver<()>,
        log_end: u64,
    ) -> Self {
        Self {
            inner,
            wake,
            last_checkpoint: Instant::now(),
            last_checkpoint_pos: log_end,
            checkpointed: None,
        }
    }

    /// Woken by the flusher when queues gathered whole index blocks, by
    /// every fdatasync, and by the tick; ends when the store closes (the
    /// flusher writes the clean checkpoint) or is dropped.
    pub(super) async fn run(mut self) {
        loop {
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            let (closing, poisoned) = {
                let st = inner.state.borrow();
                (st.closing, st.poisoned.is_some())
            };
            if closing {
                return;
            }
            if !poisoned {
                if let Err(e) = self.pass(&inner).await {
                    poison(&inner, &e);
                }
            }
            drop(inner);
            if self.wake.recv().await.is_none() {
                return;
            }
        }
    }

    async fn pass(&mut self, inner: &Rc<Inner<D>>) -> Result<(), StoreError> {
        {
            let mut index = inner.index.lock().await;
            flush_index(&inner.state, &mut index, IndexFlush::FullBlocks).await?;
        }
        let interval = Duration::from_millis(inner.cfg.checkpoint_interval_ms);
        let grown = inner.state.borrow().log.written_pos - self.last_checkpoint_pos;
        if self.last_checkpoint.elapsed() >= interval || grown >= inner.cfg.checkpoint_bytes {
            self.periodic_checkpoint(inner).await?;
        }
        Ok(())
    }

    /// A checkpoint of what is acknowledged now, once the log is durable
    /// that far. An idle store skips checkpoints that would record nothing
    /// new (no fsyncs while nothing happens).
    async fn periodic_checkpoint(&mut self, inner: &Rc<Inner<D>>) -> Result<(), StoreError> {
        let now = {
            let st = inner.state.borrow();
            (st.log.written_pos, st.meta_version)
        };
        self.last_checkpoint = Instant::now();
        self.last_checkpoint_pos = now.0;
        if self.checkpointed == Some(now) {
            return Ok(());
        }
        let ckpt = snapshot(&inner.state.borrow(), false);
        if !self.wait_synced(inner, ckpt.log_position).await? {
            return Ok(());
        }
        if write_checkpoint(inner, ckpt).await? {
            self.checkpointed = Some(now);
        }
        Ok(())
    }

    /// Waits until the log is durable up to `pos` (in `sync` mode it
    /// already is). In `async` mode the flusher's own fdatasync, due within
    /// `flush_interval_ms`, usually covers it: each extra fdatasync stalls
    /// the writes behind it. Only when that interval is longer than the
    /// checkpoints' is the flusher asked for one.
    /// `false`: the store is closing, and the clean checkpoint will do.
    async fn wait_synced(&mut self, inner: &Rc<Inner<D>>, pos: u64) -> Result<bool, StoreError> {
        let ask = inner.cfg.flush_interval_ms > inner.cfg.checkpoint_interval_ms;
        loop {
            {
                let mut st = inner.state.borrow_mut();
                if let Some(cause) = st.poisoned.clone() {
                    return Err(StoreError::Poisoned(cause));
                }
                if st.closing {
                    return Ok(false);
                }
                if st.log.synced_pos >= pos {
                    return Ok(true);
                }
                debug_assert_eq!(inner.cfg.flush, FlushMode::Async);
                if ask && st.log.sync_wanted_to < pos {
                    st.log.sync_wanted_to = pos;
                    let _ = inner.wake.try_send(());
                }
            }
            if self.wake.recv().await.is_none() {
                return Ok(false);
            }
        }
    }
}

/// What a checkpoint taken now records: the acknowledged log position and,
/// at that same instant, every queue's next and earliest offset, the
/// consumer offsets and the segments' newest times.
pub(super) fn snapshot<F>(st: &State<F>, clean: bool) -> Checkpoint {
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
}

/// Brings every index file up to the acknowledged offsets (at least those
/// `ckpt` records), syncs them, then records `ckpt` atomically. The log
/// must already be durable up to `ckpt.log_position`. A periodic
/// checkpoint that finds the store closing writes nothing (returns
/// `false`): the clean one, written after it, must stay the last.
pub(super) async fn write_checkpoint<D: Disk>(
    inner: &Inner<D>,
    ckpt: Checkpoint,
) -> Result<bool, StoreError> {
    let mut index = inner.index.lock().await;
    if !ckpt.clean && inner.state.borrow().closing {
        return Ok(false);
    }
    flush_index(&inner.state, &mut index, IndexFlush::UpToVisible).await?;
    index.sync().await?;
    checkpoint::write_meta(
        &inner.disk,
        &inner.cfg.dir,
        checkpoint::CHECKPOINT_FILE,
        &ckpt,
    )
    .await?;
    let mut st = inner.state.borrow_mut();
    st.checkpoint_pos = st.checkpoint_pos.max(ckpt.log_position);
    Ok(true)
}

/// Spare capacity a queue's pending index buffer keeps after a write:
/// what it gathers before the next one ([`WRITE_BLOCKS`] blocks) and a
/// block more.
const PENDING_KEEP_BYTES: usize = ((WRITE_BLOCKS + 1) * BLOCK_BYTES) as usize;

/// Which index entries to write.
#[derive(Debug, Clone, Copy)]
pub(super) enum IndexFlush {
    /// Whole blocks of the queues that gathered
    /// [`super::queue_index::WRITE_BLOCKS`] of them: done every round.
    FullBlocks,
    /// Whole blocks of every queue: when pending entries of many queues add
    /// up (in recovery's scan, or ahead of the log when the indexer fell
    /// behind).
    EveryFullBlock,
    /// Everything acknowledged, partial blocks too: for checkpoints.
    UpToVisible,
}

/// Writes pending index entries of every queue (per `mode`) and trims them
/// from memory once written. Shared by recovery and the indexer.
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
        // A queue that once fell far behind keeps no big buffer for ever.
        let keep = q.index_pending.len() + PENDING_KEEP_BYTES;
        if q.index_pending.capacity() > 2 * keep {
            q.index_pending.shrink_to(keep);
        }
        q.index_pending_from += bytes.len() as u64 / INDEX_ENTRY_BYTES;
        st.index_pending_bytes = st.index_pending_bytes.saturating_sub(bytes.len() as u64);
        debug_assert_eq!(
            st.index_pending_bytes,
            st.queues
                .iter()
                .map(|q| q.index_pending.len() as u64)
                .sum::<u64>(),
            "the pending index count matches the queues' buffers"
        );
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
