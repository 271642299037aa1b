//! Model-based test: random operation sequences against the store on the
//! fault-injecting memory disk, checked after every step against a model
//! (a Vec of bodies per queue).
//!
//! In `sync` mode a crash keeps every acknowledged record, in order, at its
//! offset. In `async` mode it keeps an in-order prefix. Nothing damaged is
//! ever returned (every fetched batch is verified by `read_all`).

mod common;

use common::*;
use proptest::prelude::*;
use ringmq_core::{Batch, FlushMode, GroupName, QueueId};
use ringmq_shard::store::{MemDisk, Store};

const QUEUES: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Append {
        queue: usize,
        records: usize,
        body_len: usize,
        concurrent: usize,
    },
    Fetch {
        queue: usize,
        at: prop::sample::Index,
        max_bytes: usize,
    },
    Commit {
        queue: usize,
        at: prop::sample::Index,
    },
    Restart,
    Crash {
        torn_blocks: Option<usize>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..QUEUES, 1usize..6, 0usize..400, 1usize..5)
            .prop_map(|(queue, records, body_len, concurrent)| Op::Append { queue, records, body_len, concurrent }),
        3 => (0..QUEUES, any::<prop::sample::Index>(), 1usize..4096)
            .prop_map(|(queue, at, max_bytes)| Op::Fetch { queue, at, max_bytes }),
        1 => (0..QUEUES, any::<prop::sample::Index>()).prop_map(|(queue, at)| Op::Commit { queue, at }),
        1 => Just(Op::Restart),
        1 => proptest::option::of(0usize..4).prop_map(|torn_blocks| Op::Crash { torn_blocks }),
    ]
}

#[derive(Debug, Default, Clone)]
struct Model {
    queues: Vec<Vec<Vec<u8>>>,
    committed: Vec<Option<u64>>,
    /// Per queue, every committed offset a crash may bring back: the one
    /// durable at the last clean restart and each commit since (periodic
    /// checkpoints make them durable at times the test does not know).
    may_survive: Vec<Vec<Option<u64>>>,
}

async fn check_all(store: &Store<MemDisk>, model: &Model) -> Result<(), String> {
    for (i, expect) in model.queues.iter().enumerate() {
        let q = store
            .queue(&topic(), QueueId(i as u32))
            .ok_or("queue vanished")?;
        let got: Vec<Vec<u8>> = read_bodies(store, q).await;
        if &got != expect {
            return Err(format!(
                "queue {i}: got {} records, expected {}",
                got.len(),
                expect.len()
            ));
        }
    }
    Ok(())
}

/// Runs `ops` against a store in `flush` mode (with write-through log
/// segments or not) and the model.
async fn run_ops(
    flush: FlushMode,
    write_through: bool,
    jitter_seed: Option<u64>,
    ops: Vec<Op>,
) -> Result<(), String> {
    let disk = MemDisk::new();
    disk.set_write_jitter(jitter_seed);
    let mut cfg = small_config("/data");
    cfg.flush = flush;
    cfg.write_through = write_through;
    // Async syncs only when forced, so crashes really lose unsynced data.
    cfg.flush_interval_ms = 3_600_000;
    // Periodic checkpoints all along, taken while writes and fdatasyncs
    // are in flight, so crashes recover from them too.
    cfg.checkpoint_interval_ms = 1;
    let group = GroupName::new("g").map_err(|e| e.to_string())?;
    let mut store = Store::open(disk.clone(), cfg.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut qs = Vec::new();
    for i in 0..QUEUES {
        qs.push(
            store
                .create_queue(&topic(), QueueId(i as u32))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let mut model = Model {
        queues: vec![Vec::new(); QUEUES],
        committed: vec![None; QUEUES],
        ..Default::default()
    };
    model.may_survive = model.committed.iter().map(|c| vec![*c]).collect();
    let mut seq = 0u64;
    for op in ops {
        match op {
            Op::Append {
                queue,
                records,
                body_len,
                concurrent,
            } => {
                let mut sends = Vec::new();
                for _ in 0..concurrent {
                    seq += 1;
                    let b: Vec<Vec<u8>> = (0..records)
                        .map(|r| {
                            format!("q{queue}-{seq}-{r}-{}", "b".repeat(body_len)).into_bytes()
                        })
                        .collect();
                    let store = store.clone();
                    let q = qs[queue];
                    sends.push(async move { (store.append(q, batch(queue as u32, &b)).await, b) });
                }
                let mut results = Vec::new();
                for (res, b) in futures::future::join_all(sends).await {
                    let appended = res.map_err(|e| format!("append: {e}"))?;
                    results.push((appended.base_offset, b));
                }
                results.sort_by_key(|(base, _)| *base);
                for (base, b) in results {
                    if base != model.queues[queue].len() as u64 {
                        return Err(format!(
                            "queue {queue}: base offset {base}, model has {}",
                            model.queues[queue].len()
                        ));
                    }
                    model.queues[queue].extend(b);
                }
            }
            Op::Fetch {
                queue,
                at,
                max_bytes,
            } => {
                let len = model.queues[queue].len();
                let offset = at.index(len + 1) as u64;
                let fetched = store
                    .fetch(qs[queue], offset, max_bytes)
                    .await
                    .map_err(|e| format!("fetch: {e}"))?;
                if (offset as usize) < len && fetched.batches.is_empty() {
                    return Err(format!("fetch at {offset} of {len} returned nothing"));
                }
                let mut expect = offset;
                for bytes in fetched.batches {
                    let batch = Batch::parse_validated(bytes)
                        .map_err(|e| format!("damaged batch served: {e}"))?;
                    for r in batch.records() {
                        let r = r.map_err(|e| e.to_string())?;
                        if r.offset < offset {
                            continue;
                        }
                        if r.offset != expect
                            || model.queues[queue].get(r.offset as usize) != Some(&r.body.to_vec())
                        {
                            return Err(format!(
                                "queue {queue}: wrong record at offset {}",
                                r.offset
                            ));
                        }
                        expect += 1;
                    }
                }
                if fetched.next_offset != expect.max(offset) {
                    return Err(format!(
                        "next_offset {} but records end at {expect}",
                        fetched.next_offset
                    ));
                }
            }
            Op::Commit { queue, at } => {
                let offset = at.index(model.queues[queue].len() + 1) as u64;
                store
                    .commit_offset(&group, qs[queue], offset)
                    .map_err(|e| e.to_string())?;
                model.committed[queue] = Some(offset);
                model.may_survive[queue].push(Some(offset));
            }
            Op::Restart => {
                store.close().await.map_err(|e| format!("close: {e}"))?;
                model.may_survive = model.committed.iter().map(|c| vec![*c]).collect();
                store = Store::open(disk.clone(), cfg.clone())
                    .await
                    .map_err(|e| format!("reopen: {e}"))?;
                if store.recovery_report().scanned_bytes != 0 {
                    return Err("a clean restart rescanned the log".into());
                }
                check_all(&store, &model).await?;
            }
            Op::Crash { torn_blocks } => {
                drop(store);
                // Let the old store's tasks notice it is gone before "power loss".
                glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
                disk.crash(torn_blocks);
                store = Store::open(disk.clone(), cfg.clone())
                    .await
                    .map_err(|e| format!("recover: {e}"))?;
                for (i, expect) in model.queues.iter_mut().enumerate() {
                    let q = store
                        .queue(&topic(), QueueId(i as u32))
                        .ok_or("queue lost in crash")?;
                    let got: Vec<Vec<u8>> = read_bodies(&store, q).await;
                    let ok = match flush {
                        FlushMode::Sync => &got == expect,
                        FlushMode::Async => expect.starts_with(&got),
                    };
                    if !ok {
                        let first_bad = got.iter().zip(expect.iter()).position(|(g, e)| g != e);
                        let show = |r: Option<&Vec<u8>>| {
                            r.map(|b| String::from_utf8_lossy(&b[..b.len().min(24)]).into_owned())
                        };
                        return Err(format!(
                            "queue {i} after crash: {} records, {} acknowledged; first difference at {first_bad:?}: got {:?}, acknowledged {:?}",
                            got.len(),
                            expect.len(),
                            show(first_bad.and_then(|k| got.get(k))),
                            show(first_bad.and_then(|k| expect.get(k))),
                        ));
                    }
                    expect.truncate(got.len());
                }
                for (i, q) in qs.iter().enumerate() {
                    let got = store
                        .committed_offset(&group, *q)
                        .map_err(|e| e.to_string())?;
                    if !model.may_survive[i].contains(&got) {
                        return Err(format!(
                            "queue {i} after crash: committed offset {got:?}, none of {:?}",
                            model.may_survive[i]
                        ));
                    }
                    model.committed[i] = got;
                    model.may_survive[i] = vec![got];
                }
            }
        }
        for (i, q) in qs.iter().enumerate() {
            let got = store
                .committed_offset(&group, *q)
                .map_err(|e| e.to_string())?;
            if got != model.committed[i] {
                return Err(format!(
                    "queue {i}: committed offset {got:?}, model {:?}",
                    model.committed[i]
                ));
            }
        }
    }
    check_all(&store, &model).await?;
    store.close().await.map_err(|e| e.to_string())
}

proptest! {
    // 48 cases per run by default; PROPTEST_CASES=N for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn sync_store_matches_model(
        seed in 1u64..,
        write_through in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let result = run(move || run_ops(FlushMode::Sync, write_through, Some(seed), ops));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }

    #[test]
    fn async_store_keeps_a_prefix(seed in 1u64.., ops in proptest::collection::vec(op(), 1..40)) {
        let result = run(move || run_ops(FlushMode::Async, true, Some(seed), ops));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
