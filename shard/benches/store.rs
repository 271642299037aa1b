//! Storage engine benchmark, each figure next to the machine's own limit
//! measured by fio in the same run (fio must be installed: `apt-get install
//! fio`; `shard/benches/store-bench.sh` does that and runs this).
//!
//! ```sh
//! cargo bench -p ringmq-shard --bench store -- [--dir /var/tmp/ringmq-bench] \
//!     [--out bench-results] [--seconds 8] [--rounds 3] \
//!     [--scale-records 100000000] [--scale-queues 1000] [--only async,sync,scale] \
//!     [--max-write-bytes N] [--writes-in-flight N] [--flush-mib N] [--flush-interval-ms N] \
//!     [--cpu N] [--write-through on|off] [--flip sync|async:N [--flip-ms 250]]
//! ```
//!
//! - async: 1 shard, 1 KiB records in 64 KiB batches, 16 and 64 appenders: MiB/s
//!   vs fio sequential 1 MiB direct writes (io_uring, iodepth 4) into a
//!   16 GiB file the run never wraps, so fio too writes fresh fallocated
//!   blocks, as the log does (overwriting written blocks is faster here).
//! - sync: 256 appenders of single 1 KiB records: acks/s and ack latency
//!   vs fio 4 KiB write + fdatasync (psync, one job); with fallocated,
//!   zero-filled and recycled segments (128 MiB, retention at three), to
//!   decide how segments are prepared. Beside it, fio does one group-commit
//!   round's disk work alone: the log bytes of all 256 appenders' entries
//!   as one direct write, then an fdatasync, round after round; the store's
//!   p99 is reported against that too.
//! - scale: 100 M 100-byte records over 1,000 queues written by a child
//!   process: peak RSS; store open time after a clean shutdown, and after
//!   SIGKILL during full-speed appends.
//!
//! - `--flip`: instead of all that, one case (sync with recycled segments,
//!   or async with N appenders) with `ringmq_shard::store::EXPERIMENT` off
//!   and on in turn every `--flip-ms`, each side's figures printed: an A/B
//!   of two variants of the store inside one process, side by side on the
//!   same disk (see `run_flip`).
//!
//! The store runs on one glommio executor pinned to `--cpu`; by default the
//! CPU that takes the data disk's completion interrupts (see
//! `ringmq_shard::store::disk_irq_cpu`), else CPU 0. fio, unpinned, wakes
//! where its completions land; a store pinned elsewhere would pay a
//! cross-CPU wake-up on every write and fdatasync that fio does not.

#[path = "../../core/benches/support/mod.rs"]
mod support;

use bytes::Bytes;
use ringmq_core::{BatchBuilder, FlushMode, QueueId, RecordInput, TopicName};
use ringmq_shard::store::{
    cpu_exists, disk_irq_cpu, lock_file, DmaDisk, QueueNum, SegmentPrepare, Store, StoreConfig,
    ENTRY_PREFIX_BYTES, EXPERIMENT,
};
use serde::Serialize;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};
use support::{fio, spread, Spread};

#[derive(Debug, Clone)]
struct Settings {
    dir: PathBuf,
    out: PathBuf,
    seconds: u64,
    rounds: usize,
    scale_records: u64,
    scale_queues: u32,
    only: Vec<String>,
    child: Option<String>,
    tuning: Tuning,
    /// `--cpu`: where the store's executor runs.
    cpu: Option<usize>,
    /// `--flip sync|async:N`: one case, two sides, see [`run_flip`].
    flip: Option<FlipCase>,
    /// `--flip-ms`: how long each side stays on.
    flip_ms: u64,
}

/// Store settings a run may change, `None` for the defaults.
#[derive(Debug, Clone, Copy, Default)]
struct Tuning {
    max_write_bytes: Option<usize>,
    writes_in_flight: Option<usize>,
    /// `async` mode: fdatasync after this many unsynced bytes.
    flush_bytes: Option<u64>,
    /// `async` mode: fdatasync at least this often.
    flush_interval_ms: Option<u64>,
    /// `sync` mode: write-through log segments (`StoreConfig::write_through`).
    write_through: Option<bool>,
}

/// The tuning of this run, for every store the bench opens.
static TUNING: std::sync::OnceLock<Tuning> = std::sync::OnceLock::new();

fn parse_args() -> Result<Settings, String> {
    let mut s = Settings {
        dir: "/var/tmp/ringmq-store-bench".into(),
        out: "bench-results".into(),
        seconds: 8,
        rounds: 3,
        scale_records: 100_000_000,
        scale_queues: 1000,
        only: vec!["async".into(), "sync".into(), "scale".into()],
        child: None,
        tuning: Tuning::default(),
        cpu: None,
        flip: None,
        flip_ms: 250,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let num = |name: &str, v: String| v.parse::<u64>().map_err(|e| format!("{name}: {e}"));
        match arg.as_str() {
            "--bench" => {}
            "--dir" => s.dir = value("--dir")?.into(),
            "--out" => s.out = value("--out")?.into(),
            "--seconds" => s.seconds = num("--seconds", value("--seconds")?)?,
            "--rounds" => s.rounds = num("--rounds", value("--rounds")?)? as usize,
            "--scale-records" => {
                s.scale_records = num("--scale-records", value("--scale-records")?)?
            }
            "--scale-queues" => {
                s.scale_queues = num("--scale-queues", value("--scale-queues")?)? as u32
            }
            "--only" => s.only = value("--only")?.split(',').map(str::to_owned).collect(),
            "--child" => s.child = Some(value("--child")?),
            "--flip" => s.flip = Some(flip_case(&value("--flip")?)?),
            "--flip-ms" => s.flip_ms = num("--flip-ms", value("--flip-ms")?)?,
            "--cpu" => {
                let cpu = num("--cpu", value("--cpu")?)? as usize;
                // An unknown CPU would fall back to an unpinned executor while
                // the report still named it.
                if !cpu_exists(cpu) {
                    return Err(format!("--cpu {cpu}: no such CPU on this machine"));
                }
                s.cpu = Some(cpu);
            }
            "--max-write-bytes" => {
                s.tuning.max_write_bytes =
                    Some(num("--max-write-bytes", value("--max-write-bytes")?)? as usize)
            }
            "--writes-in-flight" => {
                s.tuning.writes_in_flight =
                    Some(num("--writes-in-flight", value("--writes-in-flight")?)? as usize)
            }
            "--flush-mib" => {
                let mib = num("--flush-mib", value("--flush-mib")?)?;
                s.tuning.flush_bytes = Some(
                    mib.checked_mul(1 << 20)
                        .filter(|&b| b > 0)
                        .ok_or("--flush-mib: 1 or more, not too large")?,
                )
            }
            "--flush-interval-ms" => {
                s.tuning.flush_interval_ms =
                    Some(num("--flush-interval-ms", value("--flush-interval-ms")?)?)
            }
            "--write-through" => {
                s.tuning.write_through = Some(match value("--write-through")?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => return Err(format!("--write-through: on or off, not {v:?}")),
                })
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; see the header of shard/benches/store.rs"
                ))
            }
        }
    }
    if s.rounds == 0 || s.seconds == 0 || s.scale_queues == 0 || s.flip_ms == 0 {
        return Err("--rounds, --seconds, --scale-queues and --flip-ms must be positive".into());
    }
    s.out = support::out_dir(&s.out);
    Ok(s)
}

/// The CPU the store's executor is pinned to, set once in `main`.
static SHARD_CPU: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Where the store runs: `--cpu`, else the CPU taking the data disk's
/// completion interrupts, else 0; with the reason, for the report.
fn shard_cpu(s: &Settings) -> (usize, &'static str) {
    if let Some(cpu) = s.cpu {
        return (cpu, "--cpu");
    }
    // The folder may not exist yet: ask about the nearest one that does.
    let on_disk = s.dir.ancestors().find(|d| d.exists()).unwrap_or(&s.dir);
    match disk_irq_cpu(on_disk) {
        Some(cpu) => (cpu, "takes the data disk's completion interrupts"),
        None => (0, "default; the data disk's interrupt CPU is unknown"),
    }
}

/// Runs `f` on a glommio executor pinned to [`SHARD_CPU`] (falls back to
/// unpinned).
fn on_shard<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let cpu = SHARD_CPU.get().copied().unwrap_or(0);
    let pinned =
        glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu)).spawn(f.clone());
    match pinned {
        Ok(handle) => handle.join().expect("shard thread"),
        Err(_) => glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(f)
            .expect("executor")
            .join()
            .expect("shard thread"),
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass; zeroed is a valid rusage.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// (VmRSS, VmHWM) in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Takes `<dir>.lock` beside the bench folder for the whole run (the
/// folder itself is emptied by every case).
fn lock_bench_dir(dir: &Path) -> Result<std::fs::File, String> {
    let mut name = dir.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    lock_file(&path).map_err(|e| {
        if e.is_in_use() {
            format!(
                "another store bench is running on {} ({e}); wait for it or pass another --dir",
                dir.display()
            )
        } else {
            e.to_string()
        }
    })
}

fn fresh_dir(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("bench folder can be created");
    dir.to_owned()
}

/// A batch of `record_bytes` records filled up to `max_bytes`, or of exactly `n` records.
fn build_batch(queue: u32, record_bytes: usize, max_bytes: usize, n: Option<usize>) -> Bytes {
    let body = vec![0x42u8; record_bytes];
    let mut b = BatchBuilder::new(QueueId(queue)).max_bytes(max_bytes);
    let rec = RecordInput {
        timestamp_ms: 1_700_000_000_000,
        body: &body,
        ..Default::default()
    };
    while n.is_none_or(|n| (b.record_count() as usize) < n) && b.push(&rec).is_ok() {}
    b.finish().expect("at least one record fits")
}

fn bench_config(dir: &Path, flush: FlushMode) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    cfg.flush = flush;
    let t = TUNING.get().copied().unwrap_or_default();
    cfg.max_write_bytes = t.max_write_bytes.unwrap_or(cfg.max_write_bytes);
    cfg.writes_in_flight = t.writes_in_flight.unwrap_or(cfg.writes_in_flight);
    cfg.flush_bytes = t.flush_bytes.unwrap_or(cfg.flush_bytes);
    cfg.flush_interval_ms = t.flush_interval_ms.unwrap_or(cfg.flush_interval_ms);
    cfg.write_through = t.write_through.unwrap_or(cfg.write_through);
    cfg
}

fn topic() -> TopicName {
    TopicName::new("bench").expect("valid")
}

// ---- fio ----------------------------------------------------------------

fn fio_seq_write_mib_s(dir: &Path, seconds: u64) -> Result<f64, String> {
    let runtime = format!("--runtime={seconds}");
    let v = fio(
        dir,
        &[
            "--name=seq",
            "--rw=write",
            "--bs=1M",
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=4",
            "--size=16G",
            "--time_based",
            &runtime,
        ],
    )?;
    v["jobs"][0]["write"]["bw_bytes"]
        .as_f64()
        .map(|b| b / (1 << 20) as f64)
        .ok_or_else(|| "no bw in fio output".into())
}

#[derive(Debug, Serialize, Clone, Copy)]
struct FsyncFigures {
    iops: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

/// fio writing `bytes` at a time, each followed by an fdatasync, one at a
/// time (psync), through the page cache or `direct`; the 64 MiB file is
/// overwritten round after round.
fn fio_fdatasync(
    dir: &Path,
    seconds: u64,
    bytes: usize,
    direct: bool,
) -> Result<FsyncFigures, String> {
    let runtime = format!("--runtime={seconds}");
    let bs = format!("--bs={bytes}");
    let direct = format!("--direct={}", u8::from(direct));
    let v = fio(
        dir,
        &[
            "--name=fsync",
            "--rw=write",
            &bs,
            &direct,
            "--fdatasync=1",
            "--ioengine=psync",
            "--size=64M",
            "--time_based",
            &runtime,
        ],
    )?;
    let job = &v["jobs"][0];
    let pct = |p: &str| {
        // Each acknowledged write costs a write plus an fdatasync.
        let w = job["write"]["clat_ns"]["percentile"][p]
            .as_f64()
            .unwrap_or(0.0);
        let s = job["sync"]["lat_ns"]["percentile"][p]
            .as_f64()
            .unwrap_or(0.0);
        (w + s) / 1e3
    };
    Ok(FsyncFigures {
        iops: job["write"]["iops"]
            .as_f64()
            .ok_or("no iops in fio output")?,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        p999_us: pct("99.900000"),
    })
}

// ---- async throughput ----------------------------------------------------

#[derive(Debug, Serialize, Clone, Copy)]
struct ThroughputRound {
    mib_s: f64,
    records_s: f64,
    cpu_us_per_mib: f64,
}

fn async_throughput(dir: PathBuf, seconds: u64, appenders: usize) -> ThroughputRound {
    async_sides(dir, seconds, appenders, None)[0]
}

/// The async case; with `flip`, [`EXPERIMENT`] alternates every `flip` and
/// each side gets the bytes appended while it was on (see [`Flip`]).
fn async_sides(
    dir: PathBuf,
    seconds: u64,
    appenders: usize,
    flip: Option<Duration>,
) -> [ThroughputRound; 2] {
    on_shard(move || async move {
        let cfg = bench_config(&fresh_dir(&dir), FlushMode::Async);
        let store = Store::open(DmaDisk, cfg).await.expect("open");
        let q = store
            .create_queue(&topic(), QueueId(0))
            .await
            .expect("queue");
        let batch = build_batch(0, 1024, 64 * 1024, None);
        let records = u64::from(
            ringmq_core::Batch::parse(batch.clone())
                .expect("valid")
                .header()
                .record_count,
        );
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let clock = Flip::start(flip);
        let appenders: Vec<_> = (0..appenders)
            .map(|_| {
                let (store, batch) = (store.clone(), batch.clone());
                glommio::spawn_local(async move {
                    let mut n = [0u64; 2];
                    while Instant::now() < deadline {
                        let side = experiment_side();
                        store.append(q, batch.clone()).await.expect("append");
                        if side == experiment_side() {
                            n[side] += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let clock = clock.run(deadline).await;
        let mut batches = [0u64; 2];
        for a in appenders {
            let n = a.await;
            batches[0] += n[0];
            batches[1] += n[1];
        }
        let (secs, cpu) = clock.finish();
        store.close().await.expect("close");
        [0, 1].map(|i| {
            let mib = (batches[i] * batch.len() as u64) as f64 / (1 << 20) as f64;
            ThroughputRound {
                mib_s: mib / secs[i],
                records_s: (batches[i] * records) as f64 / secs[i],
                cpu_us_per_mib: cpu[i] * 1e6 / mib,
            }
        })
    })
}

/// Which side of an A/B run with `--flip` is on: 1 while [`EXPERIMENT`] is.
fn experiment_side() -> usize {
    usize::from(EXPERIMENT.load(std::sync::atomic::Ordering::Relaxed))
}

/// The time and CPU each side of a run got. Without a period, side 0 gets
/// it all, measured from [`Flip::start`] until [`Flip::finish`]. With one,
/// [`Flip::run`] turns [`EXPERIMENT`] on and off every period until the
/// deadline and charges each stretch to the side that was on.
struct Flip {
    period: Option<Duration>,
    secs: [f64; 2],
    cpu: [f64; 2],
    started: (f64, Instant),
}

impl Flip {
    fn start(period: Option<Duration>) -> Self {
        EXPERIMENT.store(false, std::sync::atomic::Ordering::Relaxed);
        Self {
            period,
            secs: [0.0; 2],
            cpu: [0.0; 2],
            started: (cpu_seconds(), Instant::now()),
        }
    }

    async fn run(mut self, deadline: Instant) -> Self {
        let Some(period) = self.period else {
            return self;
        };
        let mut side = 0;
        while Instant::now() < deadline {
            EXPERIMENT.store(side == 1, std::sync::atomic::Ordering::Relaxed);
            let (cpu0, t0) = (cpu_seconds(), Instant::now());
            glommio::timer::sleep(period.min(deadline.saturating_duration_since(t0))).await;
            self.cpu[side] += cpu_seconds() - cpu0;
            self.secs[side] += t0.elapsed().as_secs_f64();
            side ^= 1;
        }
        EXPERIMENT.store(false, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Seconds and CPU seconds per side.
    fn finish(mut self) -> ([f64; 2], [f64; 2]) {
        if self.period.is_none() {
            self.secs[0] = self.started.1.elapsed().as_secs_f64();
            self.cpu[0] = cpu_seconds() - self.started.0;
        }
        (self.secs, self.cpu)
    }
}

// ---- sync latency ----------------------------------------------------------

#[derive(Debug, Serialize, Clone, Copy)]
struct SyncRound {
    acks_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    cpu_us_per_ack: f64,
}

fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Segment size for the sync case: small enough that retention retires
/// (and Recycle reuses) segments within a run.
const SYNC_SEGMENT_BYTES: u64 = 128 << 20;
/// Appenders in the sync case, each with one 1 KiB record in flight.
const SYNC_APPENDERS: usize = 256;

/// What each sync-case appender appends: one 1 KiB record.
fn sync_batch() -> Bytes {
    build_batch(0, 1024, 64 * 1024, Some(1))
}

/// The log bytes of one group-commit round of the sync case: every
/// appender's entry (its one-record batch and the entry prefix), rounded
/// up to whole 4 KiB blocks.
fn sync_round_bytes() -> usize {
    let entry = sync_batch().len() + ENTRY_PREFIX_BYTES;
    (SYNC_APPENDERS * entry).next_multiple_of(4096)
}

/// Appends before measuring, so retention and recycling are in steady state.
const SYNC_WARMUP: Duration = Duration::from_secs(3);

fn sync_acks(dir: PathBuf, seconds: u64, prepare: SegmentPrepare) -> SyncRound {
    sync_sides(dir, seconds, prepare, None)[0]
}

/// The sync case; with `flip`, each side's latencies are those of the
/// appends sent and acknowledged while it was on (see [`Flip`]).
fn sync_sides(
    dir: PathBuf,
    seconds: u64,
    prepare: SegmentPrepare,
    flip: Option<Duration>,
) -> [SyncRound; 2] {
    on_shard(move || async move {
        let mut cfg = bench_config(&fresh_dir(&dir), FlushMode::Sync);
        cfg.segment_prepare = prepare;
        cfg.segment_bytes = SYNC_SEGMENT_BYTES;
        cfg.retention_bytes = Some(3 * SYNC_SEGMENT_BYTES);
        cfg.retention_check_interval_ms = 100;
        cfg.checkpoint_interval_ms = 100;
        let store = Store::open(DmaDisk, cfg).await.expect("open");
        let q = store
            .create_queue(&topic(), QueueId(0))
            .await
            .expect("queue");
        let batch = sync_batch();
        let measure_from = Instant::now() + SYNC_WARMUP;
        let deadline = measure_from + Duration::from_secs(seconds);
        // One histogram (per side) for every appender: the shard runs them
        // all on one thread. 256 of their own (130 KiB each, 33 MiB in all)
        // missed the CPU cache at nearly every record and took 13 % of the
        // shard's CPU (perf, store on CPU 1), charging the store for the
        // bench.
        let latencies = Rc::new(RefCell::new([histogram(), histogram()]));
        let tasks: Vec<_> = (0..SYNC_APPENDERS)
            .map(|_| {
                let (store, batch) = (store.clone(), batch.clone());
                let latencies = latencies.clone();
                glommio::spawn_local(async move {
                    // One clock read per append: the next append is sent
                    // the moment this one's acknowledgement is seen.
                    let mut sent = Instant::now();
                    while sent < deadline {
                        let side = experiment_side();
                        store.append(q, batch.clone()).await.expect("append");
                        let acked = Instant::now();
                        if sent >= measure_from && side == experiment_side() {
                            let us = acked.duration_since(sent).as_micros() as u64;
                            latencies.borrow_mut()[side].saturating_record(us);
                        }
                        sent = acked;
                    }
                })
            })
            .collect();
        glommio::timer::sleep(SYNC_WARMUP).await;
        let clock = Flip::start(flip).run(deadline).await;
        for t in tasks {
            t.await;
        }
        let all = latencies.replace([histogram(), histogram()]);
        let (secs, cpu) = clock.finish();
        store.close().await.expect("close");
        [0, 1].map(|i| SyncRound {
            acks_s: all[i].len() as f64 / secs[i],
            p50_us: all[i].value_at_quantile(0.5) as f64,
            p99_us: all[i].value_at_quantile(0.99) as f64,
            p999_us: all[i].value_at_quantile(0.999) as f64,
            max_us: all[i].max() as f64,
            cpu_us_per_ack: cpu[i] * 1e6 / all[i].len().max(1) as f64,
        })
    })
}

// ---- scale (child processes) -----------------------------------------------

/// Child: writes `scale_records` 100-byte records over `scale_queues`
/// queues in batches of 100, reports, then closes cleanly.
async fn child_write(s: Settings) {
    let store = Store::open(DmaDisk, bench_config(&s.dir, FlushMode::Async))
        .await
        .expect("open");
    let mut qs = Vec::new();
    for i in 0..s.scale_queues {
        qs.push(
            store
                .create_queue(&topic(), QueueId(i))
                .await
                .expect("queue"),
        );
    }
    let per_batch = 100u64;
    let batches: Vec<Bytes> = (0..s.scale_queues)
        .map(|i| build_batch(i, 100, 1 << 20, Some(per_batch as usize)))
        .collect();
    let total_batches = s.scale_records / per_batch;
    let t0 = Instant::now();
    let next = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let writers: Vec<_> = (0..64)
        .map(|_| {
            let (store, qs, batches, next) =
                (store.clone(), qs.clone(), batches.clone(), next.clone());
            glommio::spawn_local(async move {
                loop {
                    let i = next.get();
                    if i >= total_batches {
                        return;
                    }
                    next.set(i + 1);
                    let qi = (i % qs.len() as u64) as usize;
                    store
                        .append(qs[qi], batches[qi].clone())
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    let progress = glommio::spawn_local({
        let next = next.clone();
        async move {
            loop {
                glommio::timer::sleep(Duration::from_secs(10)).await;
                let done = next.get() * per_batch;
                eprintln!(
                    "scale: {done} of {} records, {:.0} records/s, RSS {} MiB",
                    total_batches * per_batch,
                    done as f64 / t0.elapsed().as_secs_f64(),
                    rss_kib().0 >> 10
                );
            }
        }
    });
    for w in writers {
        w.await;
    }
    drop(progress);
    let secs = t0.elapsed().as_secs_f64();
    let (rss, hwm) = rss_kib();
    store.close().await.expect("close");
    let line = json!({"phase": "written", "records": total_batches * per_batch, "secs": secs,
                      "rss_kib": rss, "rss_peak_kib": hwm});
    println!("{line}");
}

/// Child: opens the store (timed), reports, then appends at full speed until killed.
async fn child_open_then_write(s: Settings) {
    let t0 = Instant::now();
    let store = Store::open(DmaDisk, bench_config(&s.dir, FlushMode::Async))
        .await
        .expect("open");
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let report = store.recovery_report().clone();
    let line = json!({"phase": "opened", "open_ms": open_ms, "scanned_bytes": report.scanned_bytes,
                      "clean": report.clean_shutdown, "rss_kib": rss_kib().0});
    println!("{line}");
    let qs: Vec<QueueNum> = (0..s.scale_queues)
        .filter_map(|i| store.queue(&topic(), QueueId(i)))
        .collect();
    let batches: Vec<Bytes> = (0..s.scale_queues)
        .map(|i| build_batch(i, 100, 1 << 20, Some(100)))
        .collect();
    let writers: Vec<_> = (0..64usize)
        .map(|w| {
            let (store, qs, batches) = (store.clone(), qs.clone(), batches.clone());
            glommio::spawn_local(async move {
                let mut i = w;
                loop {
                    let qi = i % qs.len();
                    store
                        .append(qs[qi], batches[qi].clone())
                        .await
                        .expect("append");
                    i += 64;
                }
            })
        })
        .collect();
    for w in writers {
        w.await;
    }
}

/// Runs this bench binary as a child; returns its JSON lines; kills it
/// (SIGKILL) `kill_after` after its first line (the open, however long it
/// took, is always reported), if given.
fn run_child(s: &Settings, child: &str, kill_after: Option<Duration>) -> Vec<Value> {
    let exe = std::env::current_exe().expect("own path");
    let mut proc = Command::new(exe)
        .args(["--child", child, "--dir"])
        .arg(&s.dir)
        .args(["--scale-records", &s.scale_records.to_string()])
        .args(["--scale-queues", &s.scale_queues.to_string()])
        .args(["--cpu", &SHARD_CPU.get().copied().unwrap_or(0).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("child starts");
    let stdout = proc.stdout.take().expect("piped");
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                lines.push(v);
                let _ = first_tx.send(());
            }
        }
        lines
    });
    if let Some(after) = kill_after {
        // A child that never reports (it failed) is killed after a while.
        let _ = first_rx.recv_timeout(Duration::from_secs(120));
        std::thread::sleep(after);
        let _ = proc.kill();
    }
    let _ = proc.wait();
    reader.join().unwrap_or_default()
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and
    // statvfs only writes the struct we pass; zeroed is a valid statvfs.
    #[allow(unsafe_code)]
    let (rc, st) = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(path.as_ptr(), &mut st), st)
    };
    (rc == 0).then(|| st.f_bavail.saturating_mul(st.f_frsize))
}

/// The first JSON line of a scale child, which must be its `phase` report.
fn child_report(lines: Vec<Value>, phase: &str, what: &str) -> Result<Value, String> {
    match lines.into_iter().next() {
        Some(v) if v["phase"] == phase => Ok(v),
        _ => Err(format!(
            "scale: the child {what} failed before reporting (its output is above)"
        )),
    }
}

fn scale(s: &Settings) -> Result<Value, String> {
    fresh_dir(&s.dir);
    // 100 B records take ~135 B of log and 16 B of index each; the two
    // reopened children append ~11 s more at up to 1 GiB/s, plus 1 GiB of
    // slack. A run that hits a full disk measures nothing.
    let need = s.scale_records.saturating_mul(160).saturating_add(12 << 30);
    if let Some(free) = free_bytes(&s.dir) {
        if free < need {
            return Err(format!(
                "scale: needs about {} GiB free under {}, {} GiB available",
                need >> 30,
                s.dir.display(),
                free >> 30
            ));
        }
    }
    eprintln!(
        "scale: writing {} records over {} queues (child process)",
        s.scale_records, s.scale_queues
    );
    let result = scale_children(s);
    let _ = std::fs::remove_dir_all(&s.dir);
    result
}

/// The scale case's three children: write, reopen after a clean shutdown,
/// reopen after SIGKILL.
fn scale_children(s: &Settings) -> Result<Value, String> {
    let written = child_report(run_child(s, "write", None), "written", "writing")?;
    let bytes = dir_bytes(&s.dir);
    eprintln!("scale: reopening after a clean shutdown, then appending until SIGKILL");
    let clean = run_child(s, "open-then-write", Some(Duration::from_secs(8)));
    let clean = child_report(clean, "opened", "reopening after a clean shutdown")?;
    eprintln!("scale: reopening after SIGKILL");
    let crash = run_child(s, "open-then-write", Some(Duration::from_secs(3)));
    let crash = child_report(crash, "opened", "reopening after SIGKILL")?;
    Ok(json!({
        "written": written,
        "data_bytes_on_disk": bytes,
        "clean_restart": clean,
        "sigkill_restart": crash,
    }))
}

// ---- report ----------------------------------------------------------------

fn md_spread(x: &Spread, digits: usize) -> String {
    format!("{:.d$} ({:.d$}-{:.d$})", x.median, x.min, x.max, d = digits)
}

/// One figure `f` of every round in `rs`, as a table cell.
fn md_cell<T>(rs: &[T], f: impl Fn(&T) -> f64, digits: usize) -> String {
    md_spread(&spread(rs.iter().map(f).collect()), digits)
}

/// Appenders in flight for the async case: each has one append
/// outstanding, as a producer connection with that many pipelined sends.
const ASYNC_APPENDERS: [usize; 2] = [16, 64];

fn run_async(s: &Settings, md: &mut String) -> Result<Value, String> {
    let mut fio_mib = Vec::new();
    let mut rounds: Vec<Vec<ThroughputRound>> = vec![Vec::new(); ASYNC_APPENDERS.len()];
    for r in 0..s.rounds {
        eprintln!(
            "async round {}/{}: fio, then ringmq with {ASYNC_APPENDERS:?} appenders",
            r + 1,
            s.rounds
        );
        fio_mib.push(fio_seq_write_mib_s(&fresh_dir(&s.dir), s.seconds)?);
        for (i, &n) in ASYNC_APPENDERS.iter().enumerate() {
            rounds[i].push(async_throughput(s.dir.clone(), s.seconds, n));
        }
    }
    *md += "## async appends: 1 KiB records in 64 KiB batches, 1 shard\n\n\
            | appenders in flight | MiB/s | records/s | CPU µs per MiB | ratio to fio (per round) |\n\
            |---:|---:|---:|---:|---:|\n";
    let mut out = serde_json::Map::new();
    for (i, &n) in ASYNC_APPENDERS.iter().enumerate() {
        let rs = &rounds[i];
        let ratio = spread(rs.iter().zip(&fio_mib).map(|(r, f)| r.mib_s / f).collect());
        *md += &format!(
            "| {n} | {} | {} | {} | {} |\n",
            md_cell(rs, |r| r.mib_s, 1),
            md_cell(rs, |r| r.records_s, 0),
            md_cell(rs, |r| r.cpu_us_per_mib, 0),
            md_spread(&ratio, 2),
        );
        out.insert(
            format!("appenders_{n}"),
            json!({"rounds": rs, "ratio": ratio}),
        );
    }
    let cfg = bench_config(&s.dir, FlushMode::Async);
    *md += &format!(
        "\nThe store fdatasyncs every {} ms or {} MiB. fio sequential direct writes (1 MiB, io_uring, \
         iodepth 4, fresh blocks, no fdatasync), same rounds: {} MiB/s.\n\n",
        cfg.flush_interval_ms,
        cfg.flush_bytes >> 20,
        md_spread(&spread(fio_mib.clone()), 1)
    );
    out.insert("fio_mib_s".into(), json!(fio_mib));
    Ok(Value::Object(out))
}

/// The segment preparations measured side by side in the sync case.
const PREPARES: [(SegmentPrepare, &str); 3] = [
    (SegmentPrepare::Fallocate, "fallocate"),
    (SegmentPrepare::ZeroFill, "zero-fill"),
    (SegmentPrepare::Recycle, "recycle"),
];

fn run_sync(s: &Settings, md: &mut String) -> Result<Value, String> {
    let mut fio_r = Vec::new();
    let mut round_r = Vec::new();
    let round_bytes = sync_round_bytes();
    let mut rounds: Vec<Vec<SyncRound>> = vec![Vec::new(); PREPARES.len()];
    for r in 0..s.rounds {
        eprintln!(
            "sync round {}/{}: fio twice, then ringmq with each segment preparation",
            r + 1,
            s.rounds
        );
        fio_r.push(fio_fdatasync(&fresh_dir(&s.dir), s.seconds, 4096, false)?);
        round_r.push(fio_fdatasync(
            &fresh_dir(&s.dir),
            s.seconds,
            round_bytes,
            true,
        )?);
        for (i, (prepare, _)) in PREPARES.iter().enumerate() {
            rounds[i].push(sync_acks(s.dir.clone(), s.seconds, *prepare));
        }
    }
    let ratio = |a: &[f64], b: &[FsyncFigures], f: &dyn Fn(&FsyncFigures) -> f64| {
        spread(a.iter().zip(b).map(|(x, y)| x / f(y)).collect())
    };
    *md += &format!(
        "## sync appends: {SYNC_APPENDERS} appenders of single 1 KiB records, 1 shard\n\n\
         {} MiB segments, retention at three segments, checkpoints every 100 ms, {} s warm-up not counted. {}\n\n\
         | segments | acks/s | p50 µs | p99 µs | p99.9 µs | max µs | CPU µs/ack | acks/s ÷ fio IOPS | p99 ÷ fio p99 | p99 ÷ round p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        SYNC_SEGMENT_BYTES >> 20,
        SYNC_WARMUP.as_secs(),
        if bench_config(&s.dir, FlushMode::Sync).log_write_through() {
            "Segments are write-through (`O_DSYNC`): a log write is durable when it completes; no fdatasync follows it."
        } else {
            "Each round's writes are followed by one fdatasync (`--write-through off`)."
        }
    );
    let mut out = serde_json::Map::new();
    for (i, (_, name)) in PREPARES.iter().enumerate() {
        let rs = &rounds[i];
        let acks: Vec<f64> = rs.iter().map(|r| r.acks_s).collect();
        let p99s: Vec<f64> = rs.iter().map(|r| r.p99_us).collect();
        let tput = ratio(&acks, &fio_r, &|f| f.iops);
        let p99 = ratio(&p99s, &fio_r, &|f| f.p99_us);
        let p99_round = ratio(&p99s, &round_r, &|f| f.p99_us);
        *md += &format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            md_cell(rs, |r| r.acks_s, 0),
            md_cell(rs, |r| r.p50_us, 0),
            md_cell(rs, |r| r.p99_us, 0),
            md_cell(rs, |r| r.p999_us, 0),
            md_cell(rs, |r| r.max_us, 0),
            md_cell(rs, |r| r.cpu_us_per_ack, 1),
            md_spread(&tput, 1),
            md_spread(&p99, 2),
            md_spread(&p99_round, 2),
        );
        out.insert(
            name.to_string(),
            json!({"rounds": rs, "throughput_ratio": tput, "p99_ratio": p99,
                   "p99_ratio_to_round": p99_round}),
        );
    }
    for (label, rs) in [
        ("fio 4 KiB write+fdatasync".to_string(), &fio_r),
        (
            format!(
                "fio one round: {} KiB direct write+fdatasync",
                round_bytes >> 10
            ),
            &round_r,
        ),
    ] {
        *md += &format!(
            "| {label} | {} IOPS | {} | {} | {} | | | | | |\n",
            md_cell(rs, |f| f.iops, 0),
            md_cell(rs, |f| f.p50_us, 0),
            md_cell(rs, |f| f.p99_us, 0),
            md_cell(rs, |f| f.p999_us, 0),
        );
    }
    let round_p99: Vec<f64> = round_r.iter().map(|f| f.p99_us).collect();
    let round_ratio = ratio(&round_p99, &fio_r, &|f| f.p99_us);
    *md += &format!(
        "\nThe round row is the disk's work for one group-commit round with no store in \
         it: the log bytes of {SYNC_APPENDERS} appenders' entries written straight to disk, \
         then an fdatasync, one round at a time; like the 4 KiB row's, its percentiles add \
         the write's and the fdatasync's. Its p99 is {} times the 4 KiB row's (per round, \
         median (min-max)): what the disk alone charges for a round, against the figure the \
         p99 target is set by.\n\n",
        md_spread(&round_ratio, 2)
    );
    out.insert("fio".into(), json!(fio_r));
    out.insert(
        "fio_round".into(),
        json!({"bytes": round_bytes, "direct": true, "rounds": round_r,
               "p99_ratio_to_fio": round_ratio}),
    );
    Ok(Value::Object(out))
}

fn run_scale(s: &Settings, md: &mut String) -> Result<Value, String> {
    let v = scale(s)?;
    let g = |path: &[&str]| {
        path.iter()
            .fold(&v, |acc, k| &acc[*k])
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    *md += &format!(
        "## scale: {} records of 100 B over {} queues, async (one run)\n\n\
         | | value |\n|---|---:|\n| write time s | {:.1} |\n| records/s | {:.0} |\n\
         | data on disk GiB | {:.2} |\n| peak RSS while writing MiB | {:.0} |\n\
         | open after clean shutdown ms | {:.1} (scanned {} bytes) |\n\
         | open after SIGKILL ms | {:.1} (scanned {:.0} MiB) |\n| RSS right after open MiB | {:.0} |\n\n",
        s.scale_records,
        s.scale_queues,
        g(&["written", "secs"]),
        g(&["written", "records"]) / g(&["written", "secs"]),
        g(&["data_bytes_on_disk"]) / (1u64 << 30) as f64,
        g(&["written", "rss_peak_kib"]) / 1024.0,
        g(&["clean_restart", "open_ms"]),
        g(&["clean_restart", "scanned_bytes"]),
        g(&["sigkill_restart", "open_ms"]),
        g(&["sigkill_restart", "scanned_bytes"]) / (1u64 << 20) as f64,
        g(&["sigkill_restart", "rss_kib"]) / 1024.0,
    );
    Ok(v)
}

/// What `--flip` runs: the sync case with recycled segments, or the async
/// case with this many appenders.
#[derive(Debug, Clone, Copy)]
enum FlipCase {
    Sync,
    Async(usize),
}

fn flip_case(case: &str) -> Result<FlipCase, String> {
    match case.split_once(':') {
        None if case == "sync" => Ok(FlipCase::Sync),
        Some(("async", n)) => match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok(FlipCase::Async(n)),
            _ => Err(format!(
                "--flip {case:?}: async:N takes 1 or more appenders"
            )),
        },
        _ => Err(format!("--flip {case:?}: sync or async:N")),
    }
}

/// `--flip`: one case in one process, [`EXPERIMENT`] off (A) and on (B) in
/// turn every `--flip-ms`, each side's figures printed as a table. Both
/// sides see the same disk at nearly the same moments, so this resolves
/// differences of a few percent that alternating whole runs
/// (`store-ab.py`) lose in this machine's disk noise. `EXPERIMENT` is read
/// by no code on main: branch on it in the store to compare two variants.
/// The figures go to stdout only; record results with the full bench.
fn run_flip(s: &Settings, case: FlipCase) {
    let period = Some(Duration::from_millis(s.flip_ms));
    let every = format!("every {} ms, {} s", s.flip_ms, s.seconds);
    match case {
        FlipCase::Sync => {
            let sides = sync_sides(s.dir.clone(), s.seconds, SegmentPrepare::Recycle, period);
            println!(
                "sync, {SYNC_APPENDERS} appenders, recycled segments, EXPERIMENT off (A) and on (B) {every}\n\n\
                 | side | acks/s | p50 µs | p99 µs | p99.9 µs | CPU µs/ack |\n|---|---:|---:|---:|---:|---:|"
            );
            for (name, r) in ["A", "B"].iter().zip(sides) {
                println!(
                    "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} |",
                    r.acks_s, r.p50_us, r.p99_us, r.p999_us, r.cpu_us_per_ack
                );
            }
        }
        FlipCase::Async(n) => {
            let sides = async_sides(s.dir.clone(), s.seconds, n, period);
            println!(
                "async, {n} appenders of 64 KiB batches, EXPERIMENT off (A) and on (B) {every}\n\n\
                 | side | MiB/s | CPU µs/MiB |\n|---|---:|---:|"
            );
            for (name, r) in ["A", "B"].iter().zip(sides) {
                println!("| {name} | {:.0} | {:.0} |", r.mib_s, r.cpu_us_per_mib);
            }
        }
    }
}

fn main() -> ExitCode {
    let s = match parse_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("store bench: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = TUNING.set(s.tuning);
    // A second bench on the same folder would delete the first one's files
    // under it (each case starts from an empty folder) and share its disk.
    let _bench_lock = if s.child.is_none() {
        match lock_bench_dir(&s.dir) {
            Ok(lock) => Some(lock),
            Err(e) => {
                eprintln!("store bench: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let (cpu, why) = shard_cpu(&s);
    let _ = SHARD_CPU.set(cpu);
    if let Some(case) = s.flip {
        run_flip(&s, case);
        return ExitCode::SUCCESS;
    }
    if let Some(child) = s.child.clone() {
        let s2 = s.clone();
        match child.as_str() {
            "write" => on_shard(move || child_write(s2)),
            "open-then-write" => on_shard(move || child_open_then_write(s2)),
            other => {
                eprintln!("store bench: unknown child {other}");
                return ExitCode::from(2);
            }
        }
        return ExitCode::SUCCESS;
    }
    let started = support::utc_stamp();
    let mut results = serde_json::Map::new();
    let mut md = String::new();
    let wants = |name: &str| s.only.iter().any(|o| o == name);
    let mut outcome = Ok(());
    if wants("async") {
        outcome = outcome
            .and_then(|()| run_async(&s, &mut md).map(|v| drop(results.insert("async".into(), v))));
    }
    if wants("sync") {
        outcome = outcome
            .and_then(|()| run_sync(&s, &mut md).map(|v| drop(results.insert("sync".into(), v))));
    }
    if wants("scale") {
        outcome = outcome
            .and_then(|()| run_scale(&s, &mut md).map(|v| drop(results.insert("scale".into(), v))));
    }
    if let Err(e) = outcome {
        // A partial report would read as a result: write none.
        eprintln!("store bench: {e}");
        return ExitCode::FAILURE;
    }
    let commit = support::git_commit();
    let machine = support::machine();
    let md = format!(
        "# Store benchmark, {started}\n\nCommit `{commit}`; {} ({} cores), kernel {}; data in `{}`; \
         store on CPU {cpu} ({why}); {} rounds of {} s for async and sync.\n\n{md}Reproduce: `shard/benches/store-bench.sh` \
         (installs fio, then runs `cargo bench -p ringmq-shard --bench store -- --out bench-results`).\n",
        machine.cpu_model,
        machine.cores,
        machine.kernel,
        s.dir.display(),
        s.rounds,
        s.seconds
    );
    print!("{md}");
    let tuned = bench_config(&s.dir, FlushMode::Async);
    let report = json!({
        "bench": "store",
        "started_utc": started,
        "commit": commit,
        "machine": machine,
        "settings": {
            "dir": s.dir, "seconds": s.seconds, "rounds": s.rounds,
            "scale_records": s.scale_records, "scale_queues": s.scale_queues, "only": s.only,
            "executor": format!("glommio, pinned to CPU {cpu} ({why})"),
            "store": "StoreConfig::new defaults (1 GiB segments, 64 MiB pending, 64 MiB tail cache) unless set below",
            "max_write_bytes": tuned.max_write_bytes,
            "writes_in_flight": tuned.writes_in_flight,
            "async_flush_bytes": tuned.flush_bytes,
            "async_flush_interval_ms": tuned.flush_interval_ms,
            "sync_write_through": tuned.write_through,
        },
        "results": results,
    });
    match support::write_report(&s.out, "store", &started, &commit, &report, &md) {
        Ok(base) => {
            eprintln!("wrote {}.{{json,md}}", base.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("store bench: cannot write results: {e}");
            ExitCode::FAILURE
        }
    }
}
