//! Retention deletes whole old segments; queues' earliest offsets move up
//! and fetches below them get OffsetOutOfRange.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use ringmq_core::QueueId;
use ringmq_shard::store::{MemDisk, QueueNum, Store, StoreConfig, StoreError};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

fn log_segments(disk: &MemDisk) -> usize {
    disk.paths()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .count()
}

fn config() -> StoreConfig {
    let mut cfg = small_config("/data");
    cfg.checkpoint_interval_ms = 1;
    cfg.retention_check_interval_ms = 3_600_000; // driven by the test
    cfg
}

/// Appends ~`kib` KiB to two queues; returns each queue's bodies.
async fn fill(store: &Store<MemDisk>, kib: usize) -> Vec<Vec<Vec<u8>>> {
    let qs = [
        store.create_queue(&topic(), QueueId(0)).await.unwrap(),
        store.create_queue(&topic(), QueueId(1)).await.unwrap(),
    ];
    let mut model = vec![Vec::new(), Vec::new()];
    append_round_robin(store, &qs, 0..kib as u64, &mut model).await;
    // Let a checkpoint cover everything: retention only deletes before one.
    glommio::timer::sleep(Duration::from_millis(30)).await;
    model
}

/// Appends a batch of two bodies per seed, alternating between the queues
/// (queue ids 0 and 1), and records the bodies in `model`.
async fn append_round_robin(
    store: &Store<MemDisk>,
    qs: &[QueueNum; 2],
    seeds: std::ops::Range<u64>,
    model: &mut [Vec<Vec<u8>>],
) {
    for i in seeds {
        let k = (i % 2) as usize;
        let b = bodies(i, 2, 480);
        store.append(qs[k], batch(k as u32, &b)).await.unwrap();
        model[k].extend(b);
    }
}

async fn check_suffixes(store: &Store<MemDisk>, model: &[Vec<Vec<u8>>]) {
    for (i, expect) in model.iter().enumerate() {
        let q = store.queue(&topic(), QueueId(i as u32)).unwrap();
        let (min, max) = store.offsets(q).unwrap();
        assert_eq!(max as usize, expect.len());
        let got: Vec<Vec<u8>> = read_bodies(store, q).await;
        assert_eq!(
            got,
            expect[min as usize..],
            "queue {i} keeps everything from its earliest offset"
        );
        if min > 0 {
            match store.fetch(q, min - 1, 1024).await {
                Err(StoreError::OffsetOutOfRange { offset, earliest }) => {
                    assert_eq!((offset, earliest), (min - 1, min));
                }
                other => panic!("fetch below the earliest offset: {other:?}"),
            }
        }
    }
}

#[test]
fn size_retention_deletes_old_segments_and_survives_a_crash() {
    run(|| async {
        let disk = MemDisk::new();
        let mut cfg = config();
        cfg.retention_bytes = Some(3 * cfg.segment_bytes);
        cfg.index_entries_per_file = 256;
        let store = Store::open(disk.clone(), cfg.clone()).await.unwrap();
        let model = fill(&store, 800).await;
        let before = log_segments(&disk);
        let deleted = store.apply_retention().await.unwrap();
        assert!(deleted >= 3, "deleted {deleted} of {before} segments");
        assert_eq!(log_segments(&disk), before - deleted);
        let q0 = store.queue(&topic(), QueueId(0)).unwrap();
        let min = store.offsets(q0).unwrap().0;
        assert!(
            min > 512,
            "earliest offset moved past two index files: {min}"
        );
        // Index files holding only offsets below the earliest are gone.
        let index_files: Vec<u64> = disk
            .paths()
            .iter()
            .filter(|p| p.starts_with("/data/index/00000001"))
            .filter_map(|p| p.file_stem()?.to_str()?.parse().ok())
            .collect();
        assert!(!index_files.is_empty());
        assert!(
            index_files.iter().all(|&first| first + 256 > min),
            "{index_files:?} below {min}"
        );
        check_suffixes(&store, &model).await;
        // Crash before the next checkpoint records the new earliest offsets:
        // recovery must move them past the deleted segments itself.
        drop(store);
        glommio::timer::sleep(Duration::from_millis(2)).await;
        disk.crash(None);
        let store = Store::open(disk.clone(), cfg.clone()).await.unwrap();
        check_suffixes(&store, &model).await;
        store.close().await.unwrap();
        let store = Store::open(disk, cfg).await.unwrap();
        check_suffixes(&store, &model).await;
        store.close().await.unwrap();
    });
}

static CLOCK_MS: AtomicI64 = AtomicI64::new(1_700_000_000_000);

fn test_clock() -> i64 {
    CLOCK_MS.load(Ordering::Relaxed)
}

#[test]
fn age_retention_deletes_segments_older_than_the_limit() {
    run(|| async {
        let disk = MemDisk::new();
        let mut cfg = config();
        cfg.retention_ms = Some(3_600_000);
        cfg.now_ms = test_clock;
        let store = Store::open(disk.clone(), cfg).await.unwrap();
        let model = fill(&store, 200).await;
        assert_eq!(
            store.apply_retention().await.unwrap(),
            0,
            "nothing is an hour old yet"
        );
        CLOCK_MS.fetch_add(2 * 3_600_000, Ordering::Relaxed);
        let deleted = store.apply_retention().await.unwrap();
        assert!(deleted >= 1, "old segments go");
        // The active segment always stays.
        assert!(log_segments(&disk) >= 1);
        check_suffixes(&store, &model).await;
        store.close().await.unwrap();
    });
}

fn spare_segments(disk: &MemDisk) -> usize {
    disk.paths()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "spare"))
        .count()
}

#[test]
fn recycled_segments_are_reused_and_their_old_entries_never_served() {
    run(|| async {
        let disk = MemDisk::new();
        let mut cfg = config();
        cfg.flush = ringmq_core::FlushMode::Sync;
        cfg.segment_prepare = ringmq_shard::store::SegmentPrepare::Recycle;
        cfg.retention_bytes = Some(3 * cfg.segment_bytes);
        let store = Store::open(disk.clone(), cfg.clone()).await.unwrap();
        let mut model = fill(&store, 400).await;
        assert!(store.apply_retention().await.unwrap() >= 1);
        assert_eq!(
            spare_segments(&disk),
            1,
            "the first retired segment is kept as the spare"
        );
        // Keep appending: the log rolls into the recycled file, whose old
        // entries sit right after the new ones.
        let qs = [
            store.queue(&topic(), QueueId(0)).unwrap(),
            store.queue(&topic(), QueueId(1)).unwrap(),
        ];
        let mut reused = false;
        for from in (1000..1300u64).step_by(50) {
            append_round_robin(&store, &qs, from..from + 50, &mut model).await;
            reused |= spare_segments(&disk) == 0;
            glommio::timer::sleep(Duration::from_millis(5)).await;
            store.apply_retention().await.unwrap();
        }
        assert!(reused, "a spare was renamed into place as a segment");
        check_suffixes(&store, &model).await;
        store.close().await.unwrap();

        let store = Store::open(disk.clone(), cfg.clone()).await.unwrap();
        let report = store.recovery_report().clone();
        assert_eq!(
            (report.scanned_bytes, report.cut),
            (0, None),
            "a clean restart neither rescans nor cuts"
        );
        check_suffixes(&store, &model).await;
        let q = store.queue(&topic(), QueueId(0)).unwrap();
        let b = bodies(5000, 2, 480);
        store.append(q, batch(0, &b)).await.unwrap();
        model[0].extend(b);
        // Power loss: every acknowledged record survives, nothing stale appears.
        drop(store);
        glommio::timer::sleep(Duration::from_millis(2)).await;
        disk.crash(Some(1));
        let store = Store::open(disk, cfg).await.unwrap();
        check_suffixes(&store, &model).await;
        store.close().await.unwrap();
    });
}
