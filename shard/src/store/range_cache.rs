//! Bounded caches of log byte ranges, first in first out. Two per store:
//! - the tail cache: the newest bytes, one chunk per flush round (so an
//!   entry never straddles two chunks), so tailing consumers never touch
//!   the disk;
//! - the read-ahead cache: large windows read for catching-up consumers, so
//!   one sequential read serves the next entries of every queue in it.
//!
//! Separate budgets: catch-up reads can never evict the tail.

use bytes::Bytes;
use std::collections::VecDeque;

#[derive(Debug)]
pub(crate) struct RangeCache {
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
    max_bytes: usize,
}

impl RangeCache {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Adds the bytes written at `pos`; evicts the oldest beyond the budget.
    pub(crate) fn push(&mut self, pos: u64, data: Bytes) {
        if data.len() > self.max_bytes {
            self.clear();
            return;
        }
        self.bytes += data.len();
        self.chunks.push_back((pos, data));
        while self.bytes > self.max_bytes {
            match self.chunks.pop_front() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// The bytes `[pos, pos + len)` if one chunk holds them all.
    pub(crate) fn get(&self, pos: u64, len: usize) -> Option<Bytes> {
        let i = self
            .chunks
            .partition_point(|(start, _)| *start <= pos)
            .checked_sub(1)?;
        let (start, data) = &self.chunks[i];
        let from = (pos - start) as usize;
        let to = from.checked_add(len)?;
        (to <= data.len()).then(|| data.slice(from..to))
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
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
}
