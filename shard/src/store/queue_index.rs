//! Per-queue indexes: one fixed-size entry per record offset, so the log
//! position of any offset is found by arithmetic.
//!
//! ```text
//! entry (16 bytes, LE): position u64 | entry_len u32 | tag_hash u32
//! ```
//!
//! `position` and `entry_len` locate the log entry holding the record's
//! batch; every record of a batch has the same two. `tag_hash` is reserved
//! for broker-side tag filtering and is 0 for now. Files live at
//! `index/<qnum:08>/<first_offset:020>.idx`, `entries_per_file` entries each.
//!
//! Memory stays bounded whatever the backlog: entries not yet written stay
//! in the queue's pending buffer (at most [`WRITE_BLOCKS`] blocks plus one
//! flush round, until the next checkpoint); the rest is read from disk
//! through a small FIFO cache of whole blocks.

use super::aligned::AlignedWriter;
use super::disk::{Disk, DiskFile, BLOCK_BYTES};
use super::StoreError;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Bytes per index entry.
pub(crate) const INDEX_ENTRY_BYTES: u64 = 16;
/// Entries per 4 KiB block.
pub(crate) const ENTRIES_PER_BLOCK: u64 = BLOCK_BYTES / INDEX_ENTRY_BYTES;
/// Whole blocks a queue gathers before they are written, in one write.
/// Every disk write costs tens of µs of CPU on a virtual disk and a turn
/// on a device that serves one request at a time, while recovery rebuilds
/// unwritten entries from the log anyway: one 16 KiB write instead of four
/// 4 KiB ones. Costs at most 16 KiB of memory per busy queue.
pub(crate) const WRITE_BLOCKS: u64 = 4;
/// Index bytes a shard may hold unwritten, over all its queues, before the
/// flusher stops writing the log to write them itself: the indexer runs
/// beside the log and must not fall behind it without bound. 32 MiB is two
/// million records, about a second of appends at full speed, and leaves
/// room for 1,000 queues each gathering [`WRITE_BLOCKS`] blocks.
pub(crate) const PENDING_MAX_BYTES: u64 = 32 << 20;

/// Where a record's batch is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) position: u64,
    pub(crate) entry_len: u32,
    pub(crate) tag_hash: u32,
}

impl IndexEntry {
    pub(crate) fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.position.to_le_bytes());
        b[8..12].copy_from_slice(&self.entry_len.to_le_bytes());
        b[12..].copy_from_slice(&self.tag_hash.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; 16] = b.get(..16)?.try_into().ok()?;
        Some(Self {
            position: u64::from_le_bytes(b[..8].try_into().ok()?),
            entry_len: u32::from_le_bytes(b[8..12].try_into().ok()?),
            tag_hash: u32::from_le_bytes(b[12..].try_into().ok()?),
        })
    }
}

pub(crate) fn index_dir(root: &Path, qnum: u32) -> PathBuf {
    root.join("index").join(format!("{qnum:08}"))
}

pub(crate) fn index_path(root: &Path, qnum: u32, file_no: u64, entries_per_file: u64) -> PathBuf {
    index_dir(root, qnum).join(format!("{:020}.idx", file_no * entries_per_file))
}

/// The index files being appended; owned by whoever writes (recovery, then
/// the flusher), so no borrow is held across their awaits.
#[derive(Debug)]
pub(crate) struct IndexWriters<D: Disk> {
    disk: D,
    root: PathBuf,
    entries_per_file: u64,
    writers: HashMap<u32, (u64, AlignedWriter<D::File>)>,
    unsynced: HashSet<(u32, u64)>,
}

impl<D: Disk> IndexWriters<D> {
    pub(crate) fn new(disk: D, root: PathBuf, entries_per_file: u64) -> Self {
        Self {
            disk,
            root,
            entries_per_file,
            writers: HashMap::new(),
            unsynced: HashSet::new(),
        }
    }

    /// Writes `entries` (encoded, whole entries) for offsets from `from`.
    pub(crate) async fn write(
        &mut self,
        qnum: u32,
        mut from: u64,
        mut entries: &[u8],
    ) -> Result<(), StoreError> {
        while !entries.is_empty() {
            let file_no = from / self.entries_per_file;
            let in_file =
                (self.entries_per_file - from % self.entries_per_file) * INDEX_ENTRY_BYTES;
            let take = entries.len().min(in_file as usize);
            let writer = self.writer(qnum, file_no, from).await?;
            writer.append(&entries[..take]).await?;
            self.unsynced.insert((qnum, file_no));
            from += take as u64 / INDEX_ENTRY_BYTES;
            entries = &entries[take..];
        }
        Ok(())
    }

    async fn writer(
        &mut self,
        qnum: u32,
        file_no: u64,
        from: u64,
    ) -> Result<&mut AlignedWriter<D::File>, StoreError> {
        let expected = (from % self.entries_per_file) * INDEX_ENTRY_BYTES;
        let reusable = self
            .writers
            .get(&qnum)
            .is_some_and(|(no, w)| *no == file_no && w.written() == expected);
        if !reusable {
            if let Some((old_no, old)) = self.writers.remove(&qnum) {
                // Leaving a file: make what was written to it durable first.
                if self.unsynced.remove(&(qnum, old_no)) {
                    old.file().sync().await?;
                }
            }
            self.disk
                .create_dir_all(&index_dir(&self.root, qnum))
                .await?;
            let path = index_path(&self.root, qnum, file_no, self.entries_per_file);
            let file = Rc::new(self.disk.open(&path, true).await?);
            let writer = AlignedWriter::open(file, expected).await?;
            self.writers.insert(qnum, (file_no, writer));
        }
        match self.writers.get_mut(&qnum) {
            Some((_, w)) => Ok(w),
            None => Err(StoreError::Internal("index writer vanished".into())),
        }
    }

    /// Gives up every open index file, for the store's close. What was
    /// not synced stays unsynced: a clean close synced everything first,
    /// and after a failed one recovery rebuilds entries from the log.
    pub(crate) fn release_files(&mut self) -> Vec<Rc<D::File>> {
        self.unsynced.clear();
        self.writers
            .drain()
            .map(|(_, (_, w))| w.file().clone())
            .collect()
    }

    /// fdatasyncs every index file written since the last call.
    pub(crate) async fn sync(&mut self) -> Result<(), StoreError> {
        // A file is synced when its writer leaves it, so every unsynced file
        // still has its writer.
        for (qnum, file_no) in std::mem::take(&mut self.unsynced) {
            if let Some((no, w)) = self.writers.get(&qnum) {
                debug_assert_eq!(*no, file_no);
                w.file().sync().await?;
            }
        }
        Ok(())
    }
}

/// A bounded map, first in first out: whole index blocks read from disk,
/// and index files held open for reads.
#[derive(Debug)]
pub(crate) struct FifoCache<K, V> {
    entries: HashMap<K, V>,
    order: VecDeque<K>,
    max_entries: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> FifoCache<K, V> {
    pub(crate) fn new(max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            max_entries,
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.entries.get(key).cloned()
    }

    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.max_entries == 0 || self.entries.insert(key.clone(), value).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.max_entries {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }

    /// Removes every entry.
    pub(crate) fn drain(&mut self) -> Vec<V> {
        self.order.clear();
        self.entries.drain().map(|(_, v)| v).collect()
    }

    /// Removes every entry whose key matches.
    pub(crate) fn remove_where(&mut self, mut doomed: impl FnMut(&K) -> bool) -> Vec<K> {
        let keys: Vec<K> = self.order.iter().filter(|k| doomed(k)).cloned().collect();
        for k in &keys {
            self.entries.remove(k);
        }
        self.order.retain(|k| !keys.contains(k));
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn entry_round_trips() {
        let e = IndexEntry {
            position: 1 << 40,
            entry_len: 70_000,
            tag_hash: 9,
        };
        assert_eq!(IndexEntry::decode(&e.encode()), Some(e));
        assert_eq!(IndexEntry::decode(&[0; 15]), None);
    }

    #[test]
    fn cache_is_bounded() {
        let mut c = FifoCache::new(2);
        for i in 0..5u64 {
            c.insert((1u32, i), Bytes::from_static(b"x"));
        }
        assert!(c.get(&(1, 0)).is_none());
        assert!(c.get(&(1, 4)).is_some());
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.remove_where(|(_, i)| *i == 4), vec![(1, 4)]);
        assert!(c.get(&(1, 4)).is_none());
    }
}
