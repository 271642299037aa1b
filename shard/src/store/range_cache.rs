//! Bounded caches of log byte ranges, first in first out. Two per store:
//! - the tail cache: the newest bytes, as the flusher wrote them: one
//!   chunk per round, or a few when a round outgrew its buffer (an entry
//!   never straddles two chunks), so tailing consumers never touch the disk;
//! - the read-ahead cache: large windows read for catching-up consumers, so
//!   one sequential read serves the next entries of every queue in it.
//!
//! Separate budgets: catch-up reads can never evict the tail.

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug)]
pub(crate) struct RangeCache {
    /// Chunks by log position. Windows for catching-up queues arrive in
    /// any order (a queue behind the others reads an earlier one), so the
    /// lookup cannot rely on arrival order.
    chunks: BTreeMap<u64, Bytes>,
    /// Chunk positions, oldest first: eviction order.
    order: VecDeque<u64>,
    bytes: usize,
    max_bytes: usize,
}

impl RangeCache {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            chunks: BTreeMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Adds the bytes at `pos` (replacing a chunk at the same position);
    /// evicts the oldest beyond the budget.
    pub(crate) fn push(&mut self, pos: u64, data: Bytes) {
        if data.len() > self.max_bytes {
            self.clear();
            return;
        }
        if let Some(old) = self.chunks.remove(&pos) {
            self.bytes -= old.len();
            self.order.retain(|&p| p != pos);
        }
        self.bytes += data.len();
        self.chunks.insert(pos, data);
        self.order.push_back(pos);
        while self.bytes > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.chunks.remove(&oldest) {
                self.bytes -= old.len();
            }
        }
    }

    /// Swaps the chunk at `pos` for `data`, the same bytes held elsewhere,
    /// keeping its place in the eviction order; nothing if it is gone.
    pub(crate) fn replace(&mut self, pos: u64, data: Bytes) {
        if let Some(chunk) = self.chunks.get_mut(&pos) {
            if chunk.len() == data.len() {
                *chunk = data;
            }
        }
    }

    /// The bytes `[pos, pos + len)` if the chunk starting last at or before
    /// `pos` holds them all.
    pub(crate) fn get(&self, pos: u64, len: usize) -> Option<Bytes> {
        let (start, data) = self.chunks.range(..=pos).next_back()?;
        let from = (pos - start) as usize;
        let to = from.checked_add(len)?;
        (to <= data.len()).then(|| data.slice(from..to))
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.order.clear();
        self.bytes = 0;
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_whole_ranges_and_stays_bounded() {
        let mut c = RangeCache::new(100);
        c.push(0, Bytes::from(vec![1; 40]));
        c.push(40, Bytes::from(vec![2; 40]));
        assert_eq!(c.get(10, 20).unwrap(), vec![1; 20]);
        assert_eq!(c.get(40, 40).unwrap(), vec![2; 40]);
        assert!(c.get(30, 20).is_none(), "straddles two chunks");
        c.push(80, Bytes::from(vec![3; 40]));
        assert!(c.bytes() <= 100);
        assert!(c.get(0, 10).is_none(), "evicted");
        assert_eq!(c.get(90, 30).unwrap(), vec![3; 30]);
    }

    #[test]
    fn finds_chunks_pushed_out_of_order() {
        // Catch-up windows: a queue behind the others reads an earlier
        // window after a later one was cached.
        let mut c = RangeCache::new(1000);
        c.push(200, Bytes::from(vec![2; 100]));
        c.push(0, Bytes::from(vec![0; 100]));
        c.push(100, Bytes::from(vec![1; 100]));
        assert_eq!(c.get(250, 10).unwrap(), vec![2; 10]);
        assert_eq!(c.get(50, 10).unwrap(), vec![0; 10]);
        assert_eq!(c.get(150, 50).unwrap(), vec![1; 50]);
        // The same position read again replaces its chunk and counts once.
        c.push(100, Bytes::from(vec![7; 100]));
        assert_eq!(c.bytes(), 300);
        assert_eq!(c.get(100, 1).unwrap(), vec![7; 1]);
        // Eviction follows arrival: the window at 200 went in first.
        c.push(300, Bytes::from(vec![3; 800]));
        assert_eq!(c.bytes(), 1000);
        assert!(c.get(250, 1).is_none());
        assert_eq!(c.get(0, 1).unwrap(), vec![0; 1]);
        assert_eq!(c.get(150, 1).unwrap(), vec![7; 1]);
    }

    #[test]
    fn replace_swaps_a_chunk_in_place() {
        // The flusher caches a round as a slice of its 4 MiB buffer, then
        // swaps in a copy of its own size once the write is on its way.
        let mut c = RangeCache::new(100);
        let big = Bytes::from(vec![5u8; 4096]);
        c.push(0, big.slice(0..40));
        c.push(40, Bytes::from(vec![6; 40]));
        c.replace(0, Bytes::from(vec![5; 40]));
        assert_eq!(c.get(0, 40).unwrap(), vec![5; 40]);
        assert_eq!(c.bytes(), 80);
        // Its place in the eviction order is kept: it still goes first.
        c.push(80, Bytes::from(vec![7; 40]));
        assert!(c.get(0, 1).is_none());
        assert_eq!(c.get(40, 1).unwrap(), vec![6; 1]);
        // Gone (or of another length): nothing changes.
        c.replace(0, Bytes::from(vec![9; 40]));
        c.replace(40, Bytes::from(vec![9; 10]));
        assert!(c.get(0, 1).is_none());
        assert_eq!(c.get(40, 40).unwrap(), vec![6; 40]);
        assert_eq!(c.bytes(), 80);
    }
}
