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
    /// Check order, gaps and duplicates live (one consumer group).
    #[arg(long)]
    verify: bool,
    /// Record every acknowledged message (`producer seq` lines; one topic).
    #[arg(long, value_name = "FILE")]
    ack_log: Option<PathBuf>,
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
) -> Result<bool, String> {
    let embedded = if namesrv.is_empty() {
        eprintln!(
            "starting an embedded name server and broker ({} shard(s), {} flush)",
            w.shards, w.flush
        );
        Some(Embedded::start(w.shards, &w.flush)?)
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
                "segment_bytes": e.config.segment_bytes,
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
    Ok(lost == 0)
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
                run(
                    w,
                    args.namesrv,
                    args.broker_pid,
                    RunOptions {
                        verify: args.verify,
                        ack_log: args.ack_log,
                        progress: true,
                    },
                    &args.common,
                )
            }
        },
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
