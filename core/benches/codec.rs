//! Codec benchmark: build + frame encode + frame decode + verify + read of
//! record batches, next to raw crc32c speed measured in the same run.
//!
//! ```sh
//! cargo bench -p ringmq-core --bench codec -- [--out bench-results] [--rounds 5] [--round-ms 400]
//! ```
//!
//! Writes `codec-<utc>-<commit>.{json,md}` into the output folder (relative
//! paths are taken from the workspace root) and
//! refreshes its README index. Each figure is the median of the rounds, with
//! min and max, because this machine is shared and noisy.

use bytes::{Bytes, BytesMut};
use ringmq_core::messages::SendBatchRequest;
use ringmq_core::{
    Batch, BatchBuilder, Frame, FrameDecoder, QueueId, RecordInput, Request, TopicName,
};
use serde::Serialize;
use std::hint::black_box;
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{
    command_output, git_commit, machine, out_dir, spread, utc_stamp, write_report, Machine, Spread,
};

/// Batch size the producer side fills to: 64 KiB is the client's default
/// linger target and the storage engine's write unit.
const BATCH_TARGET_BYTES: usize = 64 * 1024;
const RECORD_SIZES: [usize; 2] = [100, 1024];
const CRC_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Debug)]
struct Settings {
    out: PathBuf,
    rounds: usize,
    round: Duration,
}

fn parse_args() -> Result<Settings, String> {
    let mut s = Settings {
        out: "bench-results".into(),
        rounds: 5,
        round: Duration::from_millis(400),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--bench" => {} // added by `cargo bench`
            "--out" => s.out = value("--out")?.into(),
            "--rounds" => {
                s.rounds = value("--rounds")?
                    .parse()
                    .map_err(|e| format!("--rounds: {e}"))?
            }
            "--round-ms" => {
                let ms: u64 = value("--round-ms")?
                    .parse()
                    .map_err(|e| format!("--round-ms: {e}"))?;
                s.round = Duration::from_millis(ms);
            }
            other => return Err(format!("unknown argument {other:?}; see the file's header")),
        }
    }
    if s.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    s.out = out_dir(&s.out);
    Ok(s)
}

/// Runs `op` repeatedly for `round`; returns operations per second.
fn rate(round: Duration, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < round {
        for _ in 0..16 {
            op();
        }
        n += 16;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[derive(Debug, Serialize)]
struct StageResult {
    stage: &'static str,
    record_bytes: usize,
    records_per_batch: u32,
    batch_bytes: usize,
    records_per_s: Spread,
    gb_per_s: Spread,
}

fn build(body: &[u8], n: u32) -> Bytes {
    let mut b =
        BatchBuilder::with_capacity(QueueId(0), BATCH_TARGET_BYTES).max_bytes(BATCH_TARGET_BYTES);
    for i in 0..n {
        let rec = RecordInput {
            timestamp_ms: 1_700_000_000_000 + i64::from(i),
            body,
            ..Default::default()
        };
        if b.push(&rec).is_err() {
            break;
        }
    }
    b.finish().expect("at least one record")
}

fn frame_round_trip(req: &Request, batch: &Bytes, buf: &mut BytesMut) -> Frame {
    buf.clear();
    Frame::request(1, req, batch.clone())
        .encode(buf)
        .expect("frame under the cap");
    let frame = FrameDecoder::default()
        .decode(buf)
        .expect("valid")
        .expect("whole");
    black_box(frame.decode_request().expect("valid header"));
    frame
}

/// What a broker does before appending: crc, then a structure walk.
fn broker_check(batch: Bytes) -> u32 {
    let batch = Batch::parse_validated(batch).expect("valid batch");
    batch.header().record_count
}

/// What a consumer does: crc, then every record as owned zero-copy slices.
fn consumer_read(batch: Bytes) -> usize {
    let batch = Batch::parse(batch).expect("valid batch");
    batch
        .records()
        .map(|r| r.map(|r| r.body.len()).unwrap_or(0))
        .sum()
}

/// A named operation timed by [`rate`].
type Stage<'a> = (&'static str, Box<dyn FnMut() + 'a>);

fn measure(s: &Settings, record_bytes: usize) -> Vec<StageResult> {
    let body = vec![0x5au8; record_bytes];
    let sample = build(&body, u32::MAX);
    let n = Batch::parse(sample.clone())
        .expect("valid")
        .header()
        .record_count;
    let batch_bytes = sample.len();
    let req = Request::SendBatch(SendBatchRequest {
        topic: TopicName::new("bench").expect("valid name"),
        queue_id: QueueId(0),
    });
    let mut buf = BytesMut::with_capacity(batch_bytes + 256);
    let stages: [Stage; 5] = [
        (
            "build (push + finish with crc)",
            Box::new(|| drop(black_box(build(&body, n)))),
        ),
        ("frame encode + decode", {
            let (req, sample) = (req.clone(), sample.clone());
            let mut buf = buf.clone();
            Box::new(move || drop(black_box(frame_round_trip(&req, &sample, &mut buf))))
        }),
        ("broker check: crc + structure walk", {
            let sample = sample.clone();
            Box::new(move || {
                black_box(broker_check(sample.clone()));
            })
        }),
        ("consumer read: crc + owned records", {
            let sample = sample.clone();
            Box::new(move || {
                black_box(consumer_read(sample.clone()));
            })
        }),
        (
            "pipeline: build, frame, check, read",
            Box::new(|| {
                let batch = build(&body, n);
                let frame = frame_round_trip(&req, &batch, &mut buf);
                black_box(broker_check(frame.body.clone()));
                black_box(consumer_read(frame.body));
            }),
        ),
    ];
    let mut out = Vec::new();
    for (stage, mut op) in stages {
        let batches_per_s: Vec<f64> = (0..s.rounds).map(|_| rate(s.round, &mut op)).collect();
        out.push(StageResult {
            stage,
            record_bytes,
            records_per_batch: n,
            batch_bytes,
            records_per_s: spread(batches_per_s.iter().map(|b| b * f64::from(n)).collect()),
            gb_per_s: spread(
                batches_per_s
                    .iter()
                    .map(|b| b * batch_bytes as f64 / 1e9)
                    .collect(),
            ),
        });
        eprintln!("  {record_bytes:>5} B  {stage}: done");
    }
    out
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    started_utc: String,
    commit: String,
    rustc: String,
    machine: Machine,
    settings: serde_json::Value,
    crc32c_gb_per_s: Spread,
    stages: Vec<StageResult>,
}

fn markdown(r: &Report) -> String {
    let mut md = format!(
        "# Codec benchmark, {}\n\nCommit `{}`, {}; {} ({} cores, SSE4.2 {}), kernel {}.\n\n\
         Settings: {}.\n\nRaw crc32c over {} KiB buffers: **{:.2} GB/s** (min {:.2}, max {:.2}).\n\n\
         | stage | record | records/batch | batch bytes | records/s median (min-max) | GB/s median (min-max) |\n\
         |---|---:|---:|---:|---:|---:|\n",
        r.started_utc, r.commit, r.rustc, r.machine.cpu_model, r.machine.cores, r.machine.sse42,
        r.machine.kernel, r.settings, CRC_BUFFER_BYTES / 1024, r.crc32c_gb_per_s.median,
        r.crc32c_gb_per_s.min, r.crc32c_gb_per_s.max,
    );
    for s in &r.stages {
        md += &format!(
            "| {} | {} B | {} | {} | {:.2}M ({:.2}-{:.2}M) | {:.2} ({:.2}-{:.2}) |\n",
            s.stage,
            s.record_bytes,
            s.records_per_batch,
            s.batch_bytes,
            s.records_per_s.median / 1e6,
            s.records_per_s.min / 1e6,
            s.records_per_s.max / 1e6,
            s.gb_per_s.median,
            s.gb_per_s.min,
            s.gb_per_s.max,
        );
    }
    md += "\nSingle thread, no I/O: this is the ceiling the codec puts on a shard, \
           not an end-to-end figure. Reproduce with \
           `cargo bench -p ringmq-core --bench codec -- --out bench-results`.\n";
    md
}

fn main() -> std::process::ExitCode {
    let s = match parse_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("codec bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    eprintln!(
        "codec bench: {} rounds of {:?} per stage",
        s.rounds, s.round
    );
    let crc_buf = vec![0xa5u8; CRC_BUFFER_BYTES];
    let crc = (0..s.rounds)
        .map(|_| {
            rate(s.round, || {
                black_box(crc32c::crc32c(black_box(&crc_buf)));
            }) * CRC_BUFFER_BYTES as f64
                / 1e9
        })
        .collect();
    let crc32c_gb_per_s = spread(crc);
    eprintln!("  crc32c: {:.2} GB/s", crc32c_gb_per_s.median);
    let stages = RECORD_SIZES
        .iter()
        .flat_map(|&size| measure(&s, size))
        .collect();
    let report = Report {
        bench: "codec",
        started_utc: utc_stamp(),
        commit: git_commit(),
        rustc: command_output("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
        machine: machine(),
        settings: serde_json::json!({
            "rounds": s.rounds,
            "round_ms": s.round.as_millis() as u64,
            "batch_target_bytes": BATCH_TARGET_BYTES,
            "record_bytes": RECORD_SIZES,
            "crc_buffer_bytes": CRC_BUFFER_BYTES,
            "profile": "bench (release, line tables)",
            "threads": 1,
        }),
        crc32c_gb_per_s,
        stages,
    };
    let md = markdown(&report);
    print!("{md}");
    match write_report(
        &s.out,
        "codec",
        &report.started_utc,
        &report.commit,
        &report,
        &md,
    ) {
        Ok(base) => {
            eprintln!("wrote {}.{{json,md}}", base.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "codec bench: cannot write results to {}: {e}",
                s.out.display()
            );
            std::process::ExitCode::FAILURE
        }
    }
}
