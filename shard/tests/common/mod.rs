//! Helpers shared by the store tests: an executor per test, batch building,
//! and reading a whole queue back.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // test-only helpers

use bytes::Bytes;
use ringmq_core::{Batch, BatchBuilder, QueueId, RecordInput, TopicName};
use ringmq_shard::store::{Disk, MemDisk, QueueNum, Store, StoreConfig};
use std::future::Future;

/// Runs `f` on a fresh glommio executor thread and returns its output.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .expect("executor starts")
        .join()
        .expect("executor finishes")
}

/// A config for small, fast tests: 64 KiB segments, small index files.
pub fn small_config(dir: &str) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    cfg.segment_bytes = 64 * 1024;
    cfg.index_entries_per_file = 512;
    cfg.checkpoint_interval_ms = 3_600_000;
    cfg.flush_interval_ms = 5;
    cfg.tail_cache_bytes = 32 * 1024;
    cfg.index_cache_blocks = 4;
    cfg.read_ahead_bytes = 16 * 1024;
    cfg.read_ahead_windows = 2;
    // Rounds split into several writes in flight.
    cfg.max_write_bytes = 8 * 1024;
    cfg.writes_in_flight = 3;
    cfg
}

pub fn topic() -> TopicName {
    TopicName::new("orders").unwrap()
}

/// A batch of `bodies` for `queue`.
pub fn batch(queue: u32, bodies: &[Vec<u8>]) -> Bytes {
    let mut b = BatchBuilder::new(QueueId(queue));
    for (i, body) in bodies.iter().enumerate() {
        b.push(&RecordInput {
            timestamp_ms: 1_700_000_000_000 + i as i64,
            body,
            ..Default::default()
        })
        .unwrap();
    }
    b.finish().unwrap()
}

/// Every record of queue `q` from its first offset: (offset, body).
/// Checks that offsets are dense and batches verify.
pub async fn read_all<D: Disk>(store: &Store<D>, q: QueueNum) -> Vec<(u64, Vec<u8>)> {
    let (min, max) = store.offsets(q).unwrap();
    let mut out = Vec::new();
    let mut offset = min;
    while offset < max {
        let fetched = store.fetch(q, offset, 16 * 1024).await.unwrap();
        assert!(
            !fetched.batches.is_empty(),
            "no progress at offset {offset} of {max}"
        );
        for bytes in fetched.batches {
            let batch = Batch::parse_validated(bytes).unwrap();
            for r in batch.records() {
                let r = r.unwrap();
                if r.offset >= offset {
                    assert_eq!(r.offset, min + out.len() as u64, "offsets are dense");
                    out.push((r.offset, r.body.to_vec()));
                }
            }
        }
        offset = fetched.next_offset;
    }
    out
}

/// A fresh memory disk, a store on it, and queue 0 of [`topic`].
pub async fn fresh_store(cfg: StoreConfig) -> (MemDisk, Store<MemDisk>, QueueNum) {
    let disk = MemDisk::new();
    let store = Store::open(disk.clone(), cfg).await.unwrap();
    let q = store.create_queue(&topic(), QueueId(0)).await.unwrap();
    (disk, store, q)
}

/// Opens the store on `disk` again and reads queue 0's bodies back.
pub async fn reopen_and_read<D: Disk>(disk: D, cfg: StoreConfig) -> (Store<D>, Vec<Vec<u8>>) {
    let store = Store::open(disk, cfg).await.unwrap();
    let q = store.queue(&topic(), QueueId(0)).unwrap();
    let got = read_bodies(&store, q).await;
    (store, got)
}

/// The bodies of every record of queue `q`, in offset order.
pub async fn read_bodies<D: Disk>(store: &Store<D>, q: QueueNum) -> Vec<Vec<u8>> {
    read_all(store, q)
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect()
}

/// Appends one batch of `records` bodies of about `len` bytes to queue 0's
/// `q` for each seed in `seeds`; returns the bodies in order.
pub async fn append_bodies<D: Disk>(
    store: &Store<D>,
    q: QueueNum,
    seeds: std::ops::Range<u64>,
    records: usize,
    len: usize,
) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for seed in seeds {
        let b = bodies(seed, records, len);
        store.append(q, batch(0, &b)).await.unwrap();
        all.extend(b);
    }
    all
}

pub fn bodies(seed: u64, n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{seed}-{i}-{}", "x".repeat(len)).into_bytes())
        .collect()
}
pub mod client;
pub mod procs;
