//! Broker benchmark: produce throughput through shard ports (no hop) vs
//! through the other shard's port and the front port (a mesh hop), and
//! long-poll end-to-end latency (append -> fetch answer).
//!
//! ```text
//! cargo bench -p ringmq-shard --bench broker -- [--out bench-results] \
//!     [--seconds 5] [--rounds 3] [--dir /var/tmp/ringmq-broker-bench]
//! ```
//!
//! The broker runs in this process (2 shards pinned to CPUs 0 and 1) and
//! the producers are plain blocking TCP clients on other threads, so on a
//! 2-core machine clients and shards share the CPUs: compare the modes
//! with each other (same run, alternating rounds), not with other hosts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench program

#[path = "../tests/common/client.rs"]
mod client;
#[path = "../../core/benches/support/mod.rs"]
mod support;

use bytes::Bytes;
use client::{batch, fetch, records, Client};
use hdrhistogram::Histogram;
use ringmq_core::messages::SendBatchRequest;
use ringmq_core::{QueueId, Response, TopicName};
use ringmq_shard::broker::{self, BrokerConfig};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const RECORDS_PER_BATCH: usize = 100;
const RECORD_BYTES: usize = 100;
const WINDOW: usize = 32;

struct Settings {
    out: PathBuf,
    seconds: u64,
    rounds: usize,
    dir: PathBuf,
}

fn parse_args() -> Result<Settings, String> {
    let mut s = Settings {
        out: "bench-results".into(),
        seconds: 5,
        rounds: 3,
        dir: "/var/tmp/ringmq-broker-bench".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--out" => s.out = value("--out")?.into(),
            "--dir" => s.dir = value("--dir")?.into(),
            "--seconds" => {
                s.seconds = value("--seconds")?
                    .parse()
                    .map_err(|_| "--seconds: a number")?
            }
            "--rounds" => {
                s.rounds = value("--rounds")?
                    .parse()
                    .map_err(|_| "--rounds: a number")?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if s.seconds == 0 || s.rounds == 0 {
        return Err("--seconds and --rounds must be positive".into());
    }
    s.out = support::out_dir(&s.out);
    Ok(s)
}

/// utime + stime of this process, seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, r)| r.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the name: state is index 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// Produces to `queue` through `addr` for `secs`, WINDOW batches in flight.
fn produce(addr: SocketAddr, queue: u32, secs: u64) -> u64 {
    let mut c = Client::connect(addr);
    let bodies: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH)
        .map(|_| vec![b'x'; RECORD_BYTES])
        .collect();
    let payload = batch(queue, &bodies);
    let req = SendBatchRequest {
        topic: TopicName::new("bench").unwrap(),
        queue_id: QueueId(queue),
    };
    let end = Instant::now() + Duration::from_secs(secs);
    let mut in_flight = 0;
    let mut acked = 0u64;
    while Instant::now() < end || in_flight > 0 {
        while in_flight < WINDOW && Instant::now() < end {
            c.send(req.clone().into(), payload.clone());
            in_flight += 1;
        }
        let (_, answer) = c.recv().expect("broker answers");
        answer.expect("send succeeds");
        in_flight -= 1;
        acked += RECORDS_PER_BATCH as u64;
    }
    acked
}

fn main() -> ExitCode {
    let s = match parse_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("broker bench: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = std::fs::remove_dir_all(&s.dir);
    let mut cfg = BrokerConfig::for_test(&s.dir, 2);
    cfg.cpus = vec![
        0,
        1.min(std::thread::available_parallelism().map_or(1, |n| n.get()) - 1),
    ];
    cfg.segment_bytes = 256 << 20;
    cfg.retention_bytes = Some(1 << 30);
    let running = broker::start(cfg.clone()).expect("broker starts");
    let mut admin = Client::connect(running.front_addr);
    let desc = admin.create_topic("bench", 2);
    let owner: Vec<usize> = desc
        .placement
        .iter()
        .map(|p| p.shard_id.0 as usize)
        .collect();
    assert_ne!(owner[0], owner[1], "the two queues sit on different shards");
    let shard = running.shard_addrs.clone();
    let front = running.front_addr;
    type AddrOf<'a> = Box<dyn Fn(u32) -> SocketAddr + 'a>;
    let modes: [(&str, AddrOf); 3] = [
        (
            "shard ports (owner, no hop)",
            Box::new(|q| shard[owner[q as usize]]),
        ),
        (
            "other shard's port (every request forwarded)",
            Box::new(|q| shard[1 - owner[q as usize]]),
        ),
        (
            "front port (SO_REUSEPORT; a hop when the other shard accepted)",
            Box::new(|_| front),
        ),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for round in 0..s.rounds {
        for (i, (name, addr_of)) in modes.iter().enumerate() {
            eprintln!("round {}/{}: {name}", round + 1, s.rounds);
            let cpu0 = cpu_seconds();
            let started = Instant::now();
            let producers: Vec<_> = (0..2u32)
                .map(|q| {
                    let addr = addr_of(q);
                    let secs = s.seconds;
                    std::thread::spawn(move || produce(addr, q, secs))
                })
                .collect();
            let total: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
            let secs = started.elapsed().as_secs_f64();
            rates[i].push(total as f64 / secs);
            cpu[i].push((cpu_seconds() - cpu0) * 1e6 / total as f64);
        }
    }

    // Long-poll end-to-end: one record at a time, consumer parked at the end.
    eprintln!("long-poll end-to-end latency");
    let epoch = Instant::now();
    let consumer_addr = shard[owner[0]];
    let samples = 3000u64;
    let warmup = 200u64;
    let consumer = std::thread::spawn(move || {
        let mut c = Client::connect(consumer_addr);
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let (resp, _) = c
            .call(
                ringmq_core::messages::QueryQueueOffsetsRequest {
                    topic: TopicName::new("bench").unwrap(),
                    queue_id: QueueId(0),
                },
                Bytes::new(),
            )
            .unwrap();
        let Response::QueryQueueOffsets(o) = resp else {
            panic!()
        };
        let mut offset = o.max_offset;
        let mut seen = 0u64;
        while seen < samples + warmup {
            let (resp, body) = c
                .call(fetch("bench", 0, offset, 1000), Bytes::new())
                .unwrap();
            let now = epoch.elapsed().as_micros() as u64;
            let Response::Fetch(f) = resp else { panic!() };
            for (o, b) in records(body) {
                if o < offset || b.len() != 8 {
                    continue;
                }
                let sent = u64::from_le_bytes(b[..8].try_into().unwrap());
                if seen >= warmup {
                    hist.record(now.saturating_sub(sent).max(1)).unwrap();
                }
                seen += 1;
            }
            offset = f.next_offset;
        }
        hist
    });
    std::thread::sleep(Duration::from_millis(100));
    let mut p = Client::connect(shard[owner[0]]);
    for _ in 0..samples + warmup + 50 {
        let ts = epoch.elapsed().as_micros() as u64;
        p.produce("bench", 0, &[ts.to_le_bytes().to_vec()]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        if consumer.is_finished() {
            break;
        }
    }
    let hist = consumer.join().unwrap();
    running.shutdown();
    let _ = running.join();
    let _ = std::fs::remove_dir_all(&s.dir);

    let started = support::utc_stamp();
    let commit = support::git_commit();
    let machine = support::machine();
    let mut md = format!(
        "# Broker benchmark, {started}\n\nCommit `{commit}`; {} ({} cores), kernel {}; 2 shards \
         pinned to CPUs {:?}, async flush, producers in the same process (they share the CPUs); \
         {} rounds of {} s per mode, alternating.\n\n\
         ## Produce: 2 producers (one per queue, queues on different shards), batches of \
         {RECORDS_PER_BATCH} x {RECORD_BYTES} B, {WINDOW} batches in flight each\n\n\
         | path | msg/s | MB/s | CPU µs per msg (broker + clients) | vs shard ports |\n|---|---:|---:|---:|---:|\n",
        machine.cpu_model, machine.cores, machine.kernel, cfg.cpus, s.rounds, s.seconds
    );
    let base = support::spread(rates[0].clone()).median;
    let mut produce_json = Vec::new();
    for (i, (name, _)) in modes.iter().enumerate() {
        let r = support::spread(rates[i].clone());
        let c = support::spread(cpu[i].clone());
        md += &format!(
            "| {name} | {:.0} ({:.0}-{:.0}) | {:.1} | {:.2} ({:.2}-{:.2}) | {:.2} |\n",
            r.median,
            r.min,
            r.max,
            r.median * RECORD_BYTES as f64 / 1e6,
            c.median,
            c.min,
            c.max,
            r.median / base
        );
        produce_json
            .push(json!({"path": name, "msgs_per_s": r, "cpu_us_per_msg": c, "rounds": rates[i]}));
    }
    let q = |p: f64| hist.value_at_quantile(p);
    md += &format!(
        "\n## Long-poll end-to-end latency (append -> parked fetch answered)\n\n\
         One record every ~1 ms through the owner's port; the consumer parks at the end \
         (max_wait 1000 ms). {} samples after {warmup} warm-up.\n\n\
         | p50 µs | p99 µs | p99.9 µs | max µs |\n|---:|---:|---:|---:|\n| {} | {} | {} | {} |\n\n\
         Reproduce: `cargo bench -p ringmq-shard --bench broker -- --out bench-results`.\n",
        hist.len(),
        q(0.5),
        q(0.99),
        q(0.999),
        hist.max()
    );
    print!("{md}");
    let report = json!({
        "bench": "broker",
        "started_utc": started,
        "commit": commit,
        "machine": machine,
        "settings": {
            "shards": 2, "cpus": cfg.cpus, "flush": "async", "seconds": s.seconds,
            "rounds": s.rounds, "records_per_batch": RECORDS_PER_BATCH,
            "record_bytes": RECORD_BYTES, "window": WINDOW, "dir": s.dir,
            "segment_bytes": cfg.segment_bytes,
        },
        "produce": produce_json,
        "long_poll_us": {"samples": hist.len(), "p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": hist.max()},
    });
    match support::write_report(&s.out, "broker", &started, &commit, &report, &md) {
        Ok(base) => {
            eprintln!("wrote {}.{{json,md}}", base.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot write the report: {e}");
            ExitCode::FAILURE
        }
    }
}
