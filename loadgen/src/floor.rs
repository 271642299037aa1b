//! `ringmq-loadgen floor`: the latency this host adds before any broker
//! code runs. Three probes:
//!
//! - **CPU stalls**: how often, and for how long, the host takes its CPUs
//!   away from a runnable thread;
//! - **disk writes** (with `--disk DIR`): fio's completion latency for
//!   direct writes shaped like a shard's log writes, one at a time per job.
//!   An `async` send is acknowledged once its write completed, so no
//!   percentile of publish latency can be below that percentile of the
//!   disk's write latency;
//! - **the request path** (with `--disk DIR`): the least any broker could
//!   do for an `async` send on this host. A paced client sends requests
//!   over loopback TCP to a server thread pinned to another CPU, which
//!   writes each with one direct write over already written blocks
//!   (blocking, in its own thread: no queueing, no batching, no hand-off)
//!   and then replies; latency runs from the request's intended send
//!   time, as loadgen's does. It adds up what the disk and the CPUs add
//!   along one publish: every wake-up on the way is another chance to
//!   meet a stall. The same path with no write beside it shows the CPUs'
//!   and loopback TCP's share alone.
//!
//! On a virtual machine the hypervisor preempts whole vCPUs; on a shared
//! host other work and interrupts do the same. No broker can answer a
//! request while the CPU it needs is gone, so those stalls set a floor
//! under every latency percentile measured here, and a latency target
//! only means something next to it.
//!
//! One thread per allowed CPU, pinned there, reads the monotonic clock in
//! a tight loop for the whole run. Any gap between two readings longer
//! than [`GAP_FLOOR`] is time the thread did not run: gaps are counted by
//! length, and the time inside them is summed. Run it on an otherwise
//! idle machine: any other runnable thread shows up as a stall too.

use serde::Serialize;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Gaps shorter than this are the loop itself (a clock read is tens of ns)
/// or cache misses, not stalls.
pub const GAP_FLOOR: Duration = Duration::from_micros(10);

/// What one CPU's probe saw.
#[derive(Debug, Clone, Serialize)]
pub struct CpuStalls {
    pub cpu: usize,
    pub seconds: f64,
    /// Gaps of at least 100 µs, 1 ms and 5 ms, per second.
    pub over_100us_per_s: f64,
    pub over_1ms_per_s: f64,
    pub over_5ms_per_s: f64,
    pub longest_ms: f64,
    /// Share of the run spent inside gaps of at least `GAP_FLOOR`, %.
    pub lost_pct: f64,
    /// The chance, in %, that a request needing this CPU at a random
    /// moment finds it gone for at least another 1 ms (or 5 ms): the sum
    /// over gaps of (gap - 1 ms), where positive, over the run's length.
    /// Compare with a p99 (1 %) or p99.9 (0.1 %) latency target.
    pub wait_1ms_pct: f64,
    pub wait_5ms_pct: f64,
    /// Steal time the kernel accounted to this CPU meanwhile, %
    /// (`/proc/stat`, 10 ms ticks), where readable.
    pub steal_pct: Option<f64>,
    /// Times per second the kernel switched the probe out for another
    /// thread of this machine (involuntary context switches): gaps beyond
    /// these were the vCPU itself, or interrupts, taken away.
    pub preempted_per_s: Option<f64>,
}

/// Stalls of every probed CPU.
#[derive(Debug, Clone, Serialize)]
pub struct StallReport {
    pub seconds: u64,
    pub cpus: Vec<CpuStalls>,
}

#[derive(Debug, thiserror::Error)]
pub enum StallError {
    #[error("reading this process's CPU set: {0}")]
    Affinity(std::io::Error),
    #[error("pinning the probe to CPU {cpu}: {source}")]
    Pin { cpu: usize, source: std::io::Error },
    #[error("starting a probe thread: {0}")]
    Thread(std::io::Error),
    #[error("a probe thread panicked")]
    Panicked,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskFloorError {
    #[error("--disk {0}: not a folder")]
    NotAFolder(std::path::PathBuf),
    #[error("preparing {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Fio(String),
    #[error("request path probe: {what}: {source}")]
    Path {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("a request path probe thread panicked")]
    PathPanicked,
    #[error("{0} must be at least 1")]
    Shape(&'static str),
}

/// The shape of the disk and request-path probes: `jobs` writers (or
/// client/server pairs), one per shard, each doing `per_s` writes (or
/// requests) of `write_kib` KiB a second for `seconds`, in `dir`.
#[derive(Debug, Clone, Copy)]
pub struct DiskShape<'a> {
    pub dir: &'a std::path::Path,
    pub seconds: u64,
    pub write_kib: u64,
    pub per_s: u64,
    pub jobs: u64,
}

impl DiskShape<'_> {
    /// Refuses a shape with nothing to measure (a zero size, rate or
    /// count would divide by zero further on).
    fn check(&self) -> Result<(), DiskFloorError> {
        let zero = [
            ("write size (KiB)", self.write_kib),
            ("rate", self.per_s),
            ("jobs", self.jobs),
            ("seconds", self.seconds),
        ]
        .into_iter()
        .find(|(_, v)| *v == 0);
        match zero {
            Some((what, _)) => Err(DiskFloorError::Shape(what)),
            None => Ok(()),
        }
    }
}

/// Latency percentiles of a probe, µs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latencies {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub p9999_us: f64,
    pub max_us: f64,
}

/// What the request-path probe measured: latency from each request's
/// intended send time until its reply, all pairs merged.
#[derive(Debug, Clone, Serialize)]
pub struct PathFloor {
    /// Client/server pairs, each server pinned to its own CPU where there
    /// are enough (one per shard).
    pub pairs: u64,
    pub request_kib: u64,
    pub requests_per_s_per_pair: u64,
    pub seconds: u64,
    /// Whether each request was written before its reply (`false`: the
    /// same path with no disk in it, to tell the CPUs' part from the disk's).
    pub written: bool,
    pub requests_per_s: f64,
    #[serde(flatten)]
    pub latency: Latencies,
}

/// The disk probes of one `floor --disk` run.
#[derive(Debug, Clone, Serialize)]
pub struct DiskProbes {
    pub disk: DiskFloor,
    pub request_path: PathFloor,
    pub request_path_no_write: PathFloor,
}

/// What fio measured for direct writes of one size at a fixed rate.
#[derive(Debug, Clone, Serialize)]
pub struct DiskFloor {
    pub write_kib: u64,
    pub jobs: u64,
    pub writes_per_s_per_job: u64,
    pub seconds: u64,
    pub writes_per_s: f64,
    #[serde(flatten)]
    pub latency: Latencies,
}

/// Checks, before anything is measured, that `dir` is a folder and fio
/// runs, so a run does not end in an error after the CPU probe.
pub fn disk_ready(dir: &std::path::Path) -> Result<(), DiskFloorError> {
    if !dir.is_dir() {
        return Err(DiskFloorError::NotAFolder(dir.to_owned()));
    }
    std::process::Command::new("fio")
        .arg("--version")
        .output()
        .map(drop)
        .map_err(|e| DiskFloorError::Fio(crate::report::support::fio_not_runnable(&e)))
}

/// Runs fio: `jobs` jobs, each writing `write_kib` KiB sequentially with
/// O_DIRECT through io_uring, one write at a time, `per_s` writes a
/// second, for `seconds`, into fallocated files in a fresh folder under
/// `dir` (removed afterwards).
pub fn disk(shape: &DiskShape<'_>) -> Result<DiskFloor, DiskFloorError> {
    shape.check()?;
    let DiskShape {
        dir,
        seconds,
        write_kib,
        per_s,
        jobs,
    } = *shape;
    let work = dir.join(format!("ringmq-floor-{}", std::process::id()));
    // `create_dir`, not `create_dir_all`: a mistyped DIR is an error, not
    // a new folder tree on some other disk.
    std::fs::create_dir(&work).map_err(|source| DiskFloorError::Dir {
        path: work.clone(),
        source,
    })?;
    let args = [
        "--name=floor".to_owned(),
        "--rw=write".to_owned(),
        format!("--bs={write_kib}k"),
        "--direct=1".to_owned(),
        "--ioengine=io_uring".to_owned(),
        "--iodepth=1".to_owned(),
        format!("--rate_iops={per_s}"),
        format!("--numjobs={jobs}"),
        "--group_reporting".to_owned(),
        "--size=1G".to_owned(),
        "--fallocate=native".to_owned(),
        "--time_based".to_owned(),
        format!("--runtime={seconds}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = crate::report::support::fio(&work, &args);
    let _ = std::fs::remove_dir_all(&work);
    let v = out.map_err(DiskFloorError::Fio)?;
    let w = &v["jobs"][0]["write"];
    let clat = &w["clat_ns"];
    let pct = |p: &str| clat["percentile"][p].as_f64().map(|ns| ns / 1e3);
    let missing = || DiskFloorError::Fio("fio's report has no write latencies".into());
    Ok(DiskFloor {
        write_kib,
        jobs,
        writes_per_s_per_job: per_s,
        seconds,
        writes_per_s: w["iops"].as_f64().ok_or_else(missing)?,
        latency: Latencies {
            p50_us: pct("50.000000").ok_or_else(missing)?,
            p90_us: pct("90.000000").ok_or_else(missing)?,
            p99_us: pct("99.000000").ok_or_else(missing)?,
            p999_us: pct("99.900000").ok_or_else(missing)?,
            p9999_us: pct("99.990000").ok_or_else(missing)?,
            max_us: clat["max"].as_f64().ok_or_else(missing)? / 1e3,
        },
    })
}

/// Requests before this much of a path probe has passed are not counted
/// (connection set-up, first touches of the file's pages and blocks).
const PATH_WARMUP: Duration = Duration::from_millis(500);

/// The file a path server writes into, over and over: written through once
/// before the first request, so every request's write overwrites written
/// blocks, the cheapest write a log can do (a recycled segment). A fresh,
/// fallocated one would add an extent conversion, and the journal commit
/// behind it, to writes of the probe that a broker can avoid.
const PATH_FILE_BYTES: u64 = 64 << 20;

/// The request-path probe's error for a failed `what`, from any error
/// that is an I/O error (std's, rustix's errno, an error kind).
fn io<E: Into<std::io::Error>>(what: &'static str) -> impl FnOnce(E) -> DiskFloorError {
    move |e| DiskFloorError::Path {
        what,
        source: e.into(),
    }
}

/// Runs `pairs` client/server pairs for `seconds` (plus a short warm-up):
/// each client sends `request_kib` KiB requests at `per_s` a second over
/// loopback TCP; its server, pinned to CPU `pair % cpus`, writes each
/// request with one O_DIRECT write into a written-through file under
/// `dir` (removed afterwards) and replies with 8 bytes. The client is
/// pinned to the next CPU and starts its schedule once its server is
/// ready. Latency is measured from each request's intended send time, so
/// a reply that came late delays the requests behind it and they count
/// it too (no coordinated omission).
pub fn round_trip(shape: &DiskShape<'_>, written: bool) -> Result<PathFloor, DiskFloorError> {
    shape.check()?;
    let DiskShape {
        dir,
        seconds,
        write_kib: request_kib,
        per_s,
        jobs: pairs,
    } = *shape;
    let cpus = allowed_cpus()
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or(DiskFloorError::Shape("this process's CPU set"))?;
    let work = dir.join(format!("ringmq-floor-path-{}", std::process::id()));
    std::fs::create_dir(&work).map_err(|source| DiskFloorError::Dir {
        path: work.clone(),
        source,
    })?;
    let request = (request_kib * 1024) as usize;
    let write_len = request.next_multiple_of(4096);
    let run_for = PATH_WARMUP + Duration::from_secs(seconds);
    let file_len = (PATH_FILE_BYTES / write_len as u64).max(1) * write_len as u64;
    let result = (|| {
        let mut threads = Vec::new();
        for pair in 0..pairs as usize {
            let listener =
                std::net::TcpListener::bind("127.0.0.1:0").map_err(io("binding loopback"))?;
            let addr = listener.local_addr().map_err(io("binding loopback"))?;
            let file = work.join(format!("pair-{pair}"));
            let server_cpu = cpus[pair % cpus.len()];
            let client_cpu = cpus[(pair + 1) % cpus.len()];
            let server = std::thread::Builder::new()
                .name(format!("path-server-{pair}"))
                .spawn(move || {
                    pin_to(server_cpu).map_err(io("pinning the server"))?;
                    let file = written.then_some(file.as_path());
                    serve(&listener, file, request, write_len, file_len)
                })
                .map_err(io("starting a thread"))?;
            let client = std::thread::Builder::new()
                .name(format!("path-client-{pair}"))
                .spawn(move || {
                    pin_to(client_cpu).map_err(io("pinning the client"))?;
                    drive(addr, request, per_s, run_for)
                })
                .map_err(|e| {
                    // Its server would wait in accept for good.
                    let _ = std::net::TcpStream::connect(addr);
                    io("starting a thread")(e)
                })?;
            threads.push((server, client, addr));
        }
        let mut all = crate::stats::histogram();
        let mut first_error = None;
        for (server, client, addr) in threads {
            // The client ends first; its server then sees the connection
            // close (or fails on its own, and so does the client).
            let c = client.join().map_err(|_| DiskFloorError::PathPanicked)?;
            if c.is_err() {
                // A client that failed before connecting leaves its server
                // waiting in accept: a connection that closes at once ends it.
                let _ = std::net::TcpStream::connect(addr);
            }
            let s = server.join().map_err(|_| DiskFloorError::PathPanicked)?;
            match (c, s) {
                (Ok(h), Ok(())) => all.add(h).map_err(|e| DiskFloorError::Path {
                    what: "merging histograms",
                    source: std::io::Error::other(e.to_string()),
                })?,
                (_, Err(e)) | (Err(e), _) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(all),
        }
    })();
    let _ = std::fs::remove_dir_all(&work);
    let h = result?;
    let us = |q: f64| h.value_at_quantile(q) as f64;
    Ok(PathFloor {
        pairs,
        request_kib,
        requests_per_s_per_pair: per_s,
        seconds,
        written,
        requests_per_s: h.len() as f64 / seconds.max(1) as f64,
        latency: Latencies {
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            p9999_us: us(0.9999),
            max_us: h.max() as f64,
        },
    })
}

/// The path server: for each request, one direct write into `file` (none
/// without one), then the reply.
fn serve(
    listener: &std::net::TcpListener,
    file: Option<&std::path::Path>,
    request: usize,
    write_len: usize,
    file_len: u64,
) -> Result<(), DiskFloorError> {
    let (mut sock, _) = listener.accept().map_err(io("accepting the client"))?;
    sock.set_nodelay(true).map_err(io("setting TCP_NODELAY"))?;
    let mut log = file
        .map(|f| PathLog::prepare(f, write_len, file_len))
        .transpose()?;
    let mut buf = if log.is_some() {
        Vec::new()
    } else {
        vec![0u8; request]
    };
    // Ready: the client starts its schedule now.
    sock.write_all(&[0])
        .map_err(io("telling the client it is ready"))?;
    loop {
        // Straight into the write's buffer when there is a write.
        let into = match log.as_mut() {
            Some(log) => log.slot(request),
            None => &mut buf[..],
        };
        match sock.read_exact(into) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io("reading a request")(e)),
        }
        if let Some(log) = log.as_mut() {
            log.write_next()?;
        }
        sock.write_all(&[1; 8]).map_err(io("replying"))?;
    }
}

/// A path server's file: written through before the first request, then
/// overwritten in turn, one direct write of `block`'s length per request.
struct PathLog {
    fd: rustix::fd::OwnedFd,
    /// Block-aligned space for one write (O_DIRECT wants an aligned
    /// address): `buf[skip..skip + len]`.
    buf: Vec<u8>,
    skip: usize,
    len: usize,
    file_len: u64,
    at: u64,
}

impl PathLog {
    fn prepare(file: &std::path::Path, len: usize, file_len: u64) -> Result<Self, DiskFloorError> {
        use rustix::fs::{FallocateFlags, Mode, OFlags};
        let fd = rustix::fs::open(
            file,
            OFlags::WRONLY | OFlags::CREATE | OFlags::DIRECT | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io("opening the file with O_DIRECT"))?;
        rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, file_len)
            .map_err(io("fallocate"))?;
        let buf = vec![0u8; len + 4095];
        let skip = buf.as_ptr().align_offset(4096);
        let mut log = Self {
            fd,
            buf,
            skip,
            len,
            file_len,
            at: 0,
        };
        while log.write_next()? != 0 {}
        rustix::fs::fdatasync(&log.fd).map_err(io("fdatasync"))?;
        Ok(log)
    }

    /// The first `n` bytes of the next write, to read a request into.
    fn slot(&mut self, n: usize) -> &mut [u8] {
        &mut self.buf[self.skip..self.skip + n]
    }

    /// One write of the block at the next place; returns where the one
    /// after goes (0: the file starts over).
    fn write_next(&mut self) -> Result<u64, DiskFloorError> {
        let block = &self.buf[self.skip..self.skip + self.len];
        let mut done = 0;
        while done < block.len() {
            let n = rustix::io::pwrite(&self.fd, &block[done..], self.at + done as u64)
                .map_err(io("writing"))?;
            if n == 0 {
                return Err(io("writing")(std::io::ErrorKind::WriteZero));
            }
            done += n;
        }
        self.at = (self.at + self.len as u64) % self.file_len;
        Ok(self.at)
    }
}

/// The path client: requests on a fixed schedule, each timed from when it
/// was due.
fn drive(
    addr: std::net::SocketAddr,
    request: usize,
    per_s: u64,
    run_for: Duration,
) -> Result<hdrhistogram::Histogram<u64>, DiskFloorError> {
    // Sleeps end when due, not up to 50 µs later (the default timer
    // slack): loadgen's producers pace on timerfds, which have none.
    rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1))
        .map_err(io("setting the timer slack"))?;
    let mut sock = std::net::TcpStream::connect(addr).map_err(io("connecting"))?;
    sock.set_nodelay(true).map_err(io("setting TCP_NODELAY"))?;
    let (req, mut reply) = (vec![0x5a_u8; request], [0u8; 8]);
    sock.read_exact(&mut reply[..1])
        .map_err(io("waiting for the server to be ready"))?;
    let mut h = crate::stats::histogram();
    let start = Instant::now();
    let (measure_from, end) = (start + PATH_WARMUP, start + run_for);
    for i in 0u64.. {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / per_s);
        if due >= end {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sock.write_all(&req).map_err(io("sending a request"))?;
        sock.read_exact(&mut reply).map_err(io("reading a reply"))?;
        if due >= measure_from {
            h.saturating_record((due.elapsed().as_micros() as u64).max(1));
        }
    }
    Ok(h)
}

/// The Markdown table of request-path probes, a row each.
pub fn path_table(paths: &[&PathFloor]) -> String {
    let rows: Vec<_> = paths
        .iter()
        .map(|p| {
            let how = if p.written {
                "each written directly, then answered"
            } else {
                "each answered at once (no write)"
            };
            let row = format!(
                "{} pair(s) x {} KiB over loopback TCP, {how}, {}/s each",
                p.pairs, p.request_kib, p.requests_per_s_per_pair
            );
            (row, p.requests_per_s, p.latency)
        })
        .collect();
    latency_table("requests", &rows)
}

/// The Markdown table of a disk probe.
pub fn disk_table(d: &DiskFloor) -> String {
    let row = format!(
        "{} job(s) x {} KiB, one at a time, {}/s each",
        d.jobs, d.write_kib, d.writes_per_s_per_job
    );
    latency_table("writes", &[(row, d.writes_per_s, d.latency)])
}

/// Rows of `what`: its rate a second and percentiles in ms, under a header.
fn latency_table(what: &str, rows: &[(String, f64, Latencies)]) -> String {
    let mut t = format!(
        "| {what} | {what}/s | p50 ms | p90 ms | p99 ms | p99.9 ms | p99.99 ms | max ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for (row, per_s, l) in rows {
        t += &format!(
            "| {row} | {per_s:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            l.p50_us / 1e3,
            l.p90_us / 1e3,
            l.p99_us / 1e3,
            l.p999_us / 1e3,
            l.p9999_us / 1e3,
            l.max_us / 1e3,
        );
    }
    t
}

/// CPUs this process may run on.
fn allowed_cpus() -> Result<Vec<usize>, StallError> {
    let set =
        rustix::thread::sched_getaffinity(None).map_err(|e| StallError::Affinity(e.into()))?;
    Ok((0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect())
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(Into::into)
}

/// Per-CPU cumulative steal ticks from `/proc/stat`, by CPU number.
fn steal_ticks() -> Vec<(usize, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_steal(&stat)
}

fn parse_steal(stat: &str) -> Vec<(usize, u64)> {
    stat.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let cpu = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            // user nice system idle iowait irq softirq steal
            let steal = f.nth(7)?.parse().ok()?;
            Some((cpu, steal))
        })
        .collect()
}

/// What one probe thread measures, before it becomes a [`CpuStalls`].
#[derive(Debug, Default)]
struct Probe {
    /// Gaps of at least 100 µs, 1 ms and 5 ms.
    over_100us: u64,
    over_1ms: u64,
    over_5ms: u64,
    longest: Duration,
    lost: Duration,
    wait_1ms: Duration,
    wait_5ms: Duration,
    elapsed: Duration,
    preempted: Option<u64>,
}

impl Probe {
    /// One interval between two clock readings.
    fn account(&mut self, gap: Duration) {
        if gap < GAP_FLOOR {
            return;
        }
        let (ms1, ms5) = (Duration::from_millis(1), Duration::from_millis(5));
        self.over_100us += u64::from(gap >= Duration::from_micros(100));
        self.over_1ms += u64::from(gap >= ms1);
        self.over_5ms += u64::from(gap >= ms5);
        self.longest = self.longest.max(gap);
        self.lost += gap;
        self.wait_1ms += gap.saturating_sub(ms1);
        self.wait_5ms += gap.saturating_sub(ms5);
    }

    fn summary(&self, cpu: usize, steal_ticks: Option<u64>) -> CpuStalls {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let per_s = |n: u64| n as f64 / secs;
        let pct = |d: Duration| d.as_secs_f64() * 100.0 / secs;
        CpuStalls {
            cpu,
            seconds: secs,
            over_100us_per_s: per_s(self.over_100us),
            over_1ms_per_s: per_s(self.over_1ms),
            over_5ms_per_s: per_s(self.over_5ms),
            longest_ms: self.longest.as_secs_f64() * 1e3,
            lost_pct: pct(self.lost),
            wait_1ms_pct: pct(self.wait_1ms),
            wait_5ms_pct: pct(self.wait_5ms),
            // A tick is 10 ms (USER_HZ is 100 on every Linux architecture
            // ringmq builds for): ticks per second are per cent.
            steal_pct: steal_ticks.map(|t| t as f64 / secs),
            preempted_per_s: self.preempted.map(per_s),
        }
    }
}

/// This thread's involuntary context switches so far.
fn preemptions() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

fn spin(run_for: Duration) -> Probe {
    let mut probe = Probe::default();
    let preempted_before = preemptions();
    let start = Instant::now();
    let end = start + run_for;
    let mut prev = start;
    loop {
        let now = Instant::now();
        probe.account(now - prev);
        prev = now;
        if now >= end {
            probe.elapsed = now - start;
            probe.preempted = preemptions()
                .zip(preempted_before)
                .map(|(a, b)| a.saturating_sub(b));
            return probe;
        }
    }
}

/// Runs one pinned probe per allowed CPU, all at once, for `seconds`.
pub fn measure(seconds: u64) -> Result<StallReport, StallError> {
    let cpus = allowed_cpus()?;
    let run_for = Duration::from_secs(seconds);
    let steal_before = steal_ticks();
    let probes: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            std::thread::Builder::new()
                .name(format!("stall-probe-{cpu}"))
                .spawn(move || {
                    pin_to(cpu).map_err(|source| StallError::Pin { cpu, source })?;
                    Ok(spin(run_for))
                })
                .map_err(StallError::Thread)
        })
        .collect::<Result<_, _>>()?;
    let mut done = Vec::new();
    for (cpu, p) in cpus.iter().zip(probes) {
        done.push((*cpu, p.join().map_err(|_| StallError::Panicked)??));
    }
    let steal_after = steal_ticks();
    let steal_of = |cpu: usize| {
        let find = |v: &[(usize, u64)]| v.iter().find(|(c, _)| *c == cpu).map(|(_, t)| *t);
        Some(find(&steal_after)?.saturating_sub(find(&steal_before)?))
    };
    Ok(StallReport {
        seconds,
        cpus: done
            .iter()
            .map(|(cpu, p)| p.summary(*cpu, steal_of(*cpu)))
            .collect(),
    })
}

/// The Markdown table of a report.
pub fn table(r: &StallReport) -> String {
    let mut t = String::from(
        "| CPU | gaps ≥ 0.1 ms /s | ≥ 1 ms /s | ≥ 5 ms /s | longest ms | time lost % | P(wait ≥ 1 ms) % | P(wait ≥ 5 ms) % | steal % | preempted /s |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in &r.cpus {
        t += &format!(
            "| {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {} | {} |\n",
            c.cpu,
            c.over_100us_per_s,
            c.over_1ms_per_s,
            c.over_5ms_per_s,
            c.longest_ms,
            c.lost_pct,
            c.wait_1ms_pct,
            c.wait_5ms_pct,
            c.steal_pct
                .map_or_else(|| "n/a".into(), |s| format!("{s:.1}")),
            c.preempted_per_s
                .map_or_else(|| "n/a".into(), |s| format!("{s:.1}")),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_counter_of_each_cpu_line() {
        let stat = "cpu  10 0 5 100 1 0 2 7 0 0\n\
                    cpu0 1 2 3 4 5 6 7 8 9 10\n\
                    cpu1 9 9 9 9 9 9 9 42\n\
                    intr 12345\n";
        assert_eq!(parse_steal(stat), vec![(0, 8), (1, 42)]);
    }

    #[test]
    fn gaps_are_counted_by_length_and_their_excess_over_1_and_5_ms_summed() {
        let mut p = Probe::default();
        for us in [2, 5, 200, 3_000, 7_000] {
            p.account(Duration::from_micros(us));
        }
        p.elapsed = Duration::from_secs(1);
        p.preempted = Some(4);
        let s = p.summary(3, Some(2));
        assert_eq!(s.cpu, 3);
        // 5 µs and 2 µs are the loop, not stalls.
        assert_eq!(
            (s.over_100us_per_s, s.over_1ms_per_s, s.over_5ms_per_s),
            (3.0, 2.0, 1.0)
        );
        assert!((s.longest_ms - 7.0).abs() < 0.01, "{s:?}");
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // 10.2 ms lost of 1 s; waits past 1 ms: 2 + 6 ms; past 5 ms: 2 ms.
        assert!(close(s.lost_pct, 1.02), "{s:?}");
        assert!(close(s.wait_1ms_pct, 0.8), "{s:?}");
        assert!(close(s.wait_5ms_pct, 0.2), "{s:?}");
        // Two 10 ms ticks of steal in 1 s.
        assert!(close(s.steal_pct.expect("steal"), 2.0), "{s:?}");
        assert_eq!(s.preempted_per_s, Some(4.0));
    }

    #[test]
    fn the_request_path_answers_every_request_on_schedule_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shape = DiskShape {
            dir: dir.path(),
            seconds: 1,
            write_kib: 8,
            per_s: 300,
            jobs: 2,
        };
        let p = round_trip(&shape, true).expect("round trip");
        let bare = round_trip(&shape, false).expect("round trip without writes");
        assert!((500.0..=600.0).contains(&bare.requests_per_s), "{bare:?}");
        assert!(!bare.written && p.written);
        // Two pairs at 300 a second for 1 s (the warm-up not counted).
        assert!((500.0..=600.0).contains(&p.requests_per_s), "{p:?}");
        let l = &p.latency;
        assert!(
            0.0 < l.p50_us && l.p50_us <= l.p99_us && l.p99_us <= l.max_us,
            "{p:?}"
        );
        assert!(path_table(&[&p, &bare]).lines().count() == 4);
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        // A folder that is not there is refused, not created.
        let missing = dir.path().join("missing");
        let shape = DiskShape {
            dir: &missing,
            ..shape
        };
        assert!(matches!(
            round_trip(&shape, true),
            Err(DiskFloorError::Dir { .. })
        ));
        assert!(!missing.exists());
        // Nothing to measure is refused before anything runs (a zero would
        // divide by zero further on).
        for (zero, what) in [
            (
                DiskShape {
                    write_kib: 0,
                    ..shape
                },
                "write size (KiB)",
            ),
            (DiskShape { per_s: 0, ..shape }, "rate"),
            (DiskShape { jobs: 0, ..shape }, "jobs"),
        ] {
            assert!(
                matches!(round_trip(&zero, true), Err(DiskFloorError::Shape(w)) if w == what),
                "{what}"
            );
            assert!(
                matches!(disk(&zero), Err(DiskFloorError::Shape(w)) if w == what),
                "{what}"
            );
        }
        assert!(!missing.exists());
    }

    #[test]
    fn every_allowed_cpu_gets_a_probe_for_the_whole_run() {
        let r = measure(1).expect("measure");
        assert_eq!(r.cpus.len(), allowed_cpus().expect("cpus").len());
        for c in &r.cpus {
            assert!(c.seconds >= 1.0, "{c:?}");
            assert!(c.lost_pct < 100.0, "{c:?}");
        }
        assert!(table(&r).lines().count() == 2 + r.cpus.len());
    }
}
