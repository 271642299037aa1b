//! `ringmq-loadgen`: open-loop benchmarks of ringmq. See `--help`.

use clap::{Args, Parser, Subcommand};
use ringmq_loadgen::driver::{self, RunOptions, Target};
use ringmq_loadgen::embedded::{self, Embedded};
use ringmq_loadgen::report;
use ringmq_loadgen::workload::{Workload, WorkloadArgs};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// ringmq load generator: open-loop produce/consume runs with merged
/// HdrHistograms, a live progress line, and recorded reports.
#[derive(Debug, Parser)]
#[command(name = "ringmq-loadgen", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A 20-second produce-and-consume run on an embedded broker: the
    /// quickest look at ringmq.
    Quickstart(Common),
    /// Runs a workload (against --namesrv, or an embedded broker).
    Run(Box<RunArgs>),
    /// Reads a topic back and checks it against an ack log.
    Verify(VerifyArgs),
    /// Runs the workload on ringmq (embedded), NATS JetStream and Redis
    /// Streams one after another and prints them side by side.
    Compare(Box<CompareArgs>),
    /// Measures the latency this host adds before any broker code runs:
    /// CPU stalls on every CPU and, with --disk, direct-write latency
    /// (fio) and the bare request path (loopback TCP, one direct write,
    /// reply; and with no write). Run it on an idle machine.
    Floor(FloorArgs),
}

#[derive(Debug, Args)]
struct FloorArgs {
    /// Seconds of each probe (every CPU at once, then the disk, then the
    /// request path with and without the write).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Also time direct writes into this folder with fio, then the request
    /// path (TCP, one direct write, reply) into it (the broker's data disk).
    #[arg(long, value_name = "DIR")]
    disk: Option<PathBuf>,
    /// --disk: size of each write and request, KiB (a shard's log write under load).
    #[arg(long, default_value_t = 36, value_parser = clap::value_parser!(u64).range(4..=65536))]
    write_kib: u64,
    /// --disk: writes (and requests) a second per job (and pair).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    writes_per_sec: u64,
    /// --disk: jobs writing at once, and request path pairs (one per shard).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    disk_jobs: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Rounds per driver (alternating), for min/median/max.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    workload: WorkloadArgs,
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// Write JSON + Markdown + SVG reports into this folder (bench-results/ keeps an index).
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// A name for the report files.
    #[arg(long, default_value = "run")]
    name: String,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Name servers of the broker under test; none: an embedded broker.
    #[arg(long, env = "RINGMQ_NAMESRV", value_delimiter = ',')]
    namesrv: Vec<String>,
    /// PID of the broker under test, to report its CPU per message.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// `ringmq`, or a peer this command starts and stops: `nats`, `redis`.
    #[arg(long, default_value = "ringmq")]
    driver: String,
    /// Check order, gaps and duplicates live (one consumer group).
    #[arg(long)]
    verify: bool,
    /// Record every acknowledged message (`producer seq` lines; one topic).
    #[arg(long, value_name = "FILE")]
    ack_log: Option<PathBuf>,
    /// Run this many times (a fresh embedded broker each time) and add a
    /// median (min-max) summary.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    workload: WorkloadArgs,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Name servers.
    #[arg(long, env = "RINGMQ_NAMESRV", value_delimiter = ',', required = true)]
    namesrv: Vec<String>,
    /// The topic to read.
    #[arg(long)]
    topic: String,
    /// The ack log written by `run --ack-log`.
    #[arg(long, value_name = "FILE")]
    ack_log: PathBuf,
}

fn run(
    w: Workload,
    namesrv: Vec<String>,
    broker_pid: Option<u32>,
    opts: RunOptions,
    common: &Common,
) -> Result<(bool, report::Summary), String> {
    let embedded = if namesrv.is_empty() {
        eprintln!(
            "starting an embedded name server and broker ({} shard(s), {} flush)",
            w.shards, w.flush
        );
        Some(Embedded::start(&w)?)
    } else {
        None
    };
    let target = Target {
        namesrv: match &embedded {
            Some(e) => vec![e.namesrv_addr()],
            None => namesrv,
        },
        broker_cpu: match (&embedded, broker_pid) {
            (Some(_), _) => Box::new(embedded::shard_threads_cpu),
            (None, Some(pid)) => Box::new(move || embedded::process_cpu(pid)),
            (None, None) => Box::new(|| None),
        },
    };
    let out = driver::run(&w, &target, &opts)?;
    let summary = report::summarize(&w, &out);
    println!("\ntopics: {}", out.topics.join(", "));
    println!("{}", report::table(&w, &summary, &out));
    if let Some(dir) = &common.report {
        let dir = if dir.is_relative() && dir.starts_with("bench-results") {
            // Relative to the workspace when run with cargo from anywhere inside it.
            std::env::current_dir().map_or_else(|_| dir.clone(), |d| d.join(dir))
        } else {
            dir.clone()
        };
        let broker = match &embedded {
            Some(e) => json!({
                "embedded": true,
                "shards": e.config.shards,
                "cpus": e.config.cpus,
                "flush": format!("{:?}", e.config.flush),
                "flush_interval_ms": e.config.flush_interval_ms,
                "segment_bytes": e.config.segment_bytes,
                "catch_up_bytes_per_sec": e.config.catch_up_bytes_per_sec,
                "read_ahead_bytes": e.config.read_ahead_bytes,
                "memory_budget_bytes": e.config.memory_budget_bytes,
                "max_in_flight": e.config.max_in_flight,
            }),
            None => json!({"embedded": false, "namesrv": target.namesrv, "pid": broker_pid}),
        };
        let data_dir = embedded.as_ref().map(|e| e.dir.path().to_owned());
        let base = report::write(
            &dir,
            &common.name,
            &w,
            &out,
            &summary,
            broker,
            data_dir.as_deref(),
        )
        .map_err(|e| format!("writing the report: {e}"))?;
        eprintln!("report: {}.{{json,md}}", base.display());
    }
    let lost = out.lost.unwrap_or(0);
    if lost > 0 {
        eprintln!("verify: {lost} acknowledged messages were not consumed");
    }
    Ok((lost == 0, summary))
}

/// Median (min-max) of repeated runs, printed and (with --report) written.
fn repeat_summary(w: &Workload, common: &Common, runs: &[report::Summary]) -> Result<(), String> {
    let spread = |f: &dyn Fn(&report::Summary) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let mut md = String::from("| figure | median | min | max |\n|---|---:|---:|---:|\n");
    type Figure<'a> = (&'a str, &'a dyn Fn(&report::Summary) -> f64);
    let rows: [Figure; 8] = [
        ("published msg/s", &|s| s.msgs_per_s),
        ("published MB/s", &|s| s.mb_per_s),
        ("received msg/s", &|s| s.received_per_s),
        ("publish p50 ms", &|s| s.publish.p50 as f64 / 1000.0),
        ("publish p99 ms", &|s| s.publish.p99 as f64 / 1000.0),
        ("publish p99.9 ms", &|s| s.publish.p999 as f64 / 1000.0),
        ("end-to-end p99 ms", &|s| s.e2e.p99 as f64 / 1000.0),
        ("broker CPU µs/msg", &|s| {
            s.broker_cpu_us_per_msg.unwrap_or(f64::NAN)
        }),
    ];
    let mut json_rows = Vec::new();
    for (name, f) in rows {
        let (m, lo, hi) = spread(f);
        md += &format!("| {name} | {m:.3} | {lo:.3} | {hi:.3} |\n");
        json_rows.push(json!({"figure": name, "median": m, "min": lo, "max": hi}));
    }
    println!("\n{} runs:\n{md}", runs.len());
    if let Some(dir) = &common.report {
        report::write_compare(
            dir,
            &format!("{}-x{}", common.name, runs.len()),
            w,
            &md,
            json!(json_rows),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn peer_kind(name: &str) -> Option<ringmq_loadgen::peers::PeerKind> {
    use ringmq_loadgen::peers::PeerKind;
    match name {
        "nats" => Some(PeerKind::Nats),
        "redis" => Some(PeerKind::Redis),
        _ => None,
    }
}

/// One run on a peer; returns the summary and the output.
fn run_peer(
    kind: ringmq_loadgen::peers::PeerKind,
    w: &Workload,
    common: &Common,
) -> Result<(report::Summary, driver::RunOutput), String> {
    use ringmq_loadgen::peers::{self, Peer};
    let peer = Peer::start(kind, &w.flush)?;
    eprintln!(
        "{} started at {} (pid {})",
        kind.name(),
        peer.addr,
        peer.pid
    );
    let out = peers::run(&peer, w)?;
    let summary = report::summarize(w, &out);
    if let Some(dir) = &common.report {
        let broker = json!({"peer": kind.name(), "flush": w.flush, "addr": peer.addr});
        let name = format!("{}-{}", common.name, kind.name());
        report::write(dir, &name, w, &out, &summary, broker, Some(peer.dir.path()))
            .map_err(|e| format!("writing the report: {e}"))?;
    }
    Ok((summary, out))
}

fn compare(args: &CompareArgs) -> Result<bool, String> {
    use ringmq_loadgen::peers::{Peer, PeerKind};
    let w = Workload::resolve(&args.workload)?;
    let mut rows: Vec<(String, Vec<report::Summary>)> = Vec::new();
    let mut skipped = Vec::new();
    let drivers: Vec<Option<PeerKind>> = vec![None, Some(PeerKind::Nats), Some(PeerKind::Redis)];
    for round in 0..args.rounds.max(1) {
        for d in &drivers {
            let name = d.map_or("ringmq", |k| k.name());
            if let Some(k) = d {
                if !Peer::installed(*k) {
                    if round == 0 {
                        skipped.push(format!("{name}: not installed (apt-get install -y nats-server redis-server redis-tools)"));
                    }
                    continue;
                }
            }
            eprintln!("compare round {}/{}: {name}", round + 1, args.rounds.max(1));
            let summary = match d {
                None => {
                    let node = Embedded::start(&w)?;
                    let target = Target {
                        namesrv: vec![node.namesrv_addr()],
                        broker_cpu: Box::new(embedded::shard_threads_cpu),
                    };
                    let out = driver::run(
                        &w,
                        &target,
                        &RunOptions {
                            verify: false,
                            ack_log: None,
                            progress: false,
                        },
                    )?;
                    report::summarize(&w, &out)
                }
                Some(k) => {
                    run_peer(
                        *k,
                        &w,
                        &Common {
                            report: None,
                            name: args.common.name.clone(),
                        },
                    )?
                    .0
                }
            };
            match rows.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(summary),
                None => rows.push((name.to_owned(), vec![summary])),
            }
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let base = rows
        .iter()
        .find(|(n, _)| n == "ringmq")
        .map(|(_, v)| median(&v.iter().map(|s| s.msgs_per_s).collect::<Vec<_>>()).0);
    let mut md = String::from(
        "| driver | msg/s median (min-max) | MB/s | publish p50 ms | p99 ms | p99.9 ms | server CPU µs/msg | ringmq ÷ driver |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut json_rows = Vec::new();
    for (name, v) in &rows {
        let (m, lo, hi) = median(&v.iter().map(|s| s.msgs_per_s).collect::<Vec<_>>());
        let mid = v
            .iter()
            .min_by(|a, b| {
                (a.msgs_per_s - m)
                    .abs()
                    .total_cmp(&(b.msgs_per_s - m).abs())
            })
            .unwrap_or(&v[0]);
        md += &format!(
            "| {name} | {m:.0} ({lo:.0}-{hi:.0}) | {:.1} | {:.3} | {:.3} | {:.3} | {} | {} |\n",
            m * w.size as f64 / 1e6,
            mid.publish.p50 as f64 / 1000.0,
            mid.publish.p99 as f64 / 1000.0,
            mid.publish.p999 as f64 / 1000.0,
            mid.broker_cpu_us_per_msg
                .map_or_else(|| "n/a".into(), |c| format!("{c:.2}")),
            base.map_or_else(|| "n/a".into(), |b| format!("{:.2}", b / m.max(1e-9))),
        );
        json_rows.push(json!({"driver": name, "msgs_per_s": v.iter().map(|s| s.msgs_per_s).collect::<Vec<_>>(), "publish_us": mid.publish, "server_cpu_us_per_msg": mid.broker_cpu_us_per_msg}));
    }
    for s in &skipped {
        md += &format!("\nskipped {s}\n");
    }
    println!("{md}");
    if let Some(dir) = &args.common.report {
        report::write_compare(dir, &args.common.name, &w, &md, json!(json_rows))
            .map_err(|e| e.to_string())?;
    }
    Ok(true)
}

/// The peer drivers run one producer and one consumer group of one
/// consumer, keyless, for a duration (the comparison workloads): refuse
/// what they would otherwise ignore.
fn peer_supports(args: &RunArgs, w: &Workload) -> Result<(), String> {
    let d = Workload::default();
    let unsupported = [
        ("--verify", args.verify),
        ("--ack-log", args.ack_log.is_some()),
        ("--repeat", args.repeat > 1),
        ("--namesrv", !args.namesrv.is_empty()),
        ("--messages", w.messages.is_some()),
        ("--backlog", w.backlog.is_some()),
        ("--producers", w.producers != 1),
        ("--topics", w.topics != 1),
        ("--keys", w.keys != d.keys),
        ("--groups", w.groups != 1),
        ("--consumers", w.consumers != 1),
    ];
    match unsupported.iter().find(|(_, set)| *set) {
        Some((flag, _)) => Err(format!("{flag} is not supported by the peer drivers")),
        None => Ok(()),
    }
}

fn floor(args: &FloorArgs) -> Result<bool, String> {
    use ringmq_loadgen::floor;
    if let Some(dir) = &args.disk {
        floor::disk_ready(dir).map_err(|e| e.to_string())?;
    }
    eprintln!(
        "probing every CPU for {} s (keep the machine otherwise idle)",
        args.seconds
    );
    let cpu = floor::measure(args.seconds).map_err(|e| e.to_string())?;
    println!("{}", floor::table(&cpu));
    let mut reproduce = format!("--seconds {}", args.seconds);
    let disk = match &args.disk {
        None => None,
        Some(dir) => {
            let shape = floor::DiskShape {
                dir,
                seconds: args.seconds,
                write_kib: args.write_kib,
                per_s: args.writes_per_sec,
                jobs: args.disk_jobs,
            };
            eprintln!(
                "timing {} x {} KiB direct writes a second, {} job(s), in {} for {} s (fio)",
                shape.per_s,
                shape.write_kib,
                shape.jobs,
                dir.display(),
                shape.seconds
            );
            let d = floor::disk(&shape).map_err(|e| e.to_string())?;
            println!("{}", floor::disk_table(&d));
            eprintln!("timing the request path the same way: one client/server pair per job, over loopback TCP, with and without the write");
            let p = floor::round_trip(&shape, true).map_err(|e| e.to_string())?;
            let bare = floor::round_trip(&shape, false).map_err(|e| e.to_string())?;
            println!("{}", floor::path_table(&[&p, &bare]));
            reproduce += &format!(
                " --disk {} --write-kib {} --writes-per-sec {} --disk-jobs {}",
                dir.display(),
                shape.write_kib,
                shape.per_s,
                shape.jobs
            );
            Some(floor::DiskProbes {
                disk: d,
                request_path: p,
                request_path_no_write: bare,
            })
        }
    };
    if let Some(dir) = &args.common.report {
        let base = report::write_floor(dir, &args.common.name, &cpu, disk.as_ref(), &reproduce)
            .map_err(|e| format!("writing the report into {}: {e}", dir.display()))?;
        eprintln!("report: {}.md", base.display());
    }
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Quickstart(common) => {
            // A fixed rate both sides sustain on two shared cores, so the
            // table shows latency rather than a growing backlog.
            let w = Workload {
                duration: 20,
                warmup: 2,
                rate: 100_000,
                ..Workload::default()
            };
            run(
                w,
                Vec::new(),
                None,
                RunOptions {
                    verify: true,
                    ack_log: None,
                    progress: true,
                },
                &common,
            )
            .map(|(ok, _)| ok)
        }
        Command::Run(args) => match Workload::resolve(&args.workload) {
            Err(e) => {
                eprintln!("ringmq-loadgen: {e}");
                return ExitCode::from(2);
            }
            Ok(w) => {
                if args.verify && w.groups != 1 {
                    eprintln!("ringmq-loadgen: --verify checks one consumer group: use --groups 1");
                    return ExitCode::from(2);
                }
                if args.ack_log.is_some() && w.topics != 1 {
                    eprintln!("ringmq-loadgen: --ack-log records one topic: use --topics 1");
                    return ExitCode::from(2);
                }
                if args.driver != "ringmq" {
                    let Some(kind) = peer_kind(&args.driver) else {
                        eprintln!(
                            "ringmq-loadgen: --driver {:?}: ringmq, nats or redis",
                            args.driver
                        );
                        return ExitCode::from(2);
                    };
                    if let Err(e) = peer_supports(&args, &w) {
                        eprintln!("ringmq-loadgen: --driver {}: {e}", args.driver);
                        return ExitCode::from(2);
                    }
                    return match run_peer(kind, &w, &args.common) {
                        Ok((s, out)) => {
                            println!("{}", report::table(&w, &s, &out));
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("ringmq-loadgen: {e}");
                            ExitCode::from(1)
                        }
                    };
                }
                let mut ok = true;
                let mut runs = Vec::new();
                for i in 0..args.repeat.max(1) {
                    if args.repeat > 1 {
                        eprintln!("repeat {}/{}", i + 1, args.repeat);
                    }
                    match run(
                        w.clone(),
                        args.namesrv.clone(),
                        args.broker_pid,
                        RunOptions {
                            verify: args.verify,
                            ack_log: args.ack_log.clone(),
                            progress: true,
                        },
                        &args.common,
                    ) {
                        Ok((good, s)) => {
                            ok &= good;
                            runs.push(s);
                        }
                        Err(e) => {
                            eprintln!("ringmq-loadgen: {e}");
                            return ExitCode::from(1);
                        }
                    }
                }
                if runs.len() > 1 {
                    if let Err(e) = repeat_summary(&w, &args.common, &runs) {
                        eprintln!("ringmq-loadgen: {e}");
                        return ExitCode::from(1);
                    }
                }
                Ok(ok)
            }
        },
        Command::Compare(args) => compare(&args),
        Command::Floor(args) => floor(&args),
        Command::Verify(args) => {
            ringmq_loadgen::verify::read_ack_log(&args.ack_log).and_then(|acked| {
                let r = ringmq_loadgen::verify::verify(args.namesrv, &args.topic, &acked)?;
                println!(
                    "acknowledged {}  read {}  lost {}  duplicated {}  out of order {}",
                    r.acknowledged, r.read, r.lost, r.duplicated, r.out_of_order
                );
                Ok(r.lost == 0)
            })
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ringmq-loadgen: {e}");
            ExitCode::from(1)
        }
    }
}
