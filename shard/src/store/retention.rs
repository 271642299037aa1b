//! Retention: whole segments are deleted, oldest first, once they are older
//! than `retention_ms` (by the newest store time in them) or while the log
//! is over `retention_bytes`. Only segments wholly before the last
//! checkpoint go (recovery never needs them), never the active one, and one
//! at a time with yields in between, so appends never wait on it.
//!
//! Before a segment's file is removed, each queue's earliest offset moves
//! past it (a binary search over the queue's index), so a fetch below gets
//! `OffsetOutOfRange { earliest }` instead of a missing file. Index files
//! wholly below a queue's earliest offset are removed too.

use super::disk::Disk;
use super::queue_index::index_dir;
use super::{commit_log, Inner, QueueNum, Store, StoreError};
use std::rc::Weak;
use std::time::Duration;

/// Runs retention every `retention_check_interval_ms` until the store is gone.
pub(super) async fn run<D: Disk>(inner: Weak<Inner<D>>, interval: Duration) {
    loop {
        glommio::timer::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.state.borrow().closing {
            return;
        }
        let store = Store { inner };
        if let Err(e) = store.apply_retention().await {
            tracing::warn!(error = %e, "retention pass failed; will retry");
        }
    }
}

impl<D: Disk> Store<D> {
    /// Deletes every segment that retention allows now; returns how many.
    pub async fn apply_retention(&self) -> Result<usize, StoreError> {
        let mut deleted = 0;
        while let Some(start) = self.retention_victim() {
            self.delete_segment(start).await?;
            deleted += 1;
            glommio::yield_if_needed().await;
        }
        Ok(deleted)
    }

    fn retention_victim(&self) -> Option<u64> {
        let cfg = &self.inner.cfg;
        let st = self.inner.state.borrow();
        if st.closing || (cfg.retention_ms.is_none() && cfg.retention_bytes.is_none()) {
            return None;
        }
        let (&oldest, _) = st.log.segments.iter().next()?;
        let end = oldest + st.log.segment_bytes;
        if oldest == st.log.active_start || end > st.checkpoint_pos {
            return None;
        }
        let total = st.log.segments.len() as u64 * st.log.segment_bytes;
        let over_size = cfg.retention_bytes.is_some_and(|max| total > max);
        let newest_ms = st.segment_max_ts.get(&oldest).copied().unwrap_or(i64::MIN);
        let expired = cfg
            .retention_ms
            .is_some_and(|age| newest_ms < (cfg.now_ms)().saturating_sub(age as i64));
        (over_size || expired).then_some(oldest)
    }

    async fn delete_segment(&self, start: u64) -> Result<(), StoreError> {
        let end = start + self.inner.cfg.segment_bytes;
        let queues = self.inner.state.borrow().queues.len() as u32;
        for qnum in 1..=queues {
            self.move_min_offset_past(QueueNum(qnum), end).await?;
            glommio::yield_if_needed().await;
        }
        {
            let mut st = self.inner.state.borrow_mut();
            st.log.segments.remove(&start);
            st.segment_max_ts.remove(&start);
        }
        commit_log::retire_segment(&self.inner.disk, &self.inner.cfg, start).await?;
        tracing::info!(segment = start, "retention retired a log segment");
        self.remove_index_files_below_min().await
    }

    /// Raises queue `q`'s earliest offset to its first record stored at or
    /// after log position `end`.
    pub(super) async fn move_min_offset_past(
        &self,
        q: QueueNum,
        end: u64,
    ) -> Result<(), StoreError> {
        let (mut lo, mut hi) = self.offsets(q)?;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.index_entry(q, mid).await?.position >= end {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let mut st = self.inner.state.borrow_mut();
        let qs = st.queue_mut(q)?;
        if lo > qs.min_offset {
            qs.min_offset = lo;
            st.meta_version += 1;
        }
        Ok(())
    }

    /// Removes each queue's index files that hold only offsets below its
    /// earliest one (and forgets their open read handles).
    async fn remove_index_files_below_min(&self) -> Result<(), StoreError> {
        let per_file = self.inner.cfg.index_entries_per_file;
        let mins: Vec<u64> = self
            .inner
            .state
            .borrow()
            .queues
            .iter()
            .map(|q| q.min_offset)
            .collect();
        for (i, &min) in mins.iter().enumerate() {
            let qnum = i as u32 + 1;
            let dir = index_dir(&self.inner.cfg.dir, qnum);
            let Ok(names) = self.inner.disk.list(&dir).await else {
                continue;
            };
            for name in names {
                let Some(first) = name
                    .strip_suffix(".idx")
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                if first + per_file > min {
                    continue;
                }
                let file_no = first / per_file;
                self.inner
                    .state
                    .borrow_mut()
                    .index_files
                    .remove_where(|k| *k == (qnum, file_no));
                if let Err(e) = self.inner.disk.remove(&dir.join(&name)).await {
                    tracing::warn!(error = %e, "could not remove an index file below the earliest offset");
                }
            }
            glommio::yield_if_needed().await;
        }
        Ok(())
    }
}
