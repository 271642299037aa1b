//! `ringmq-loadgen`: ringmq load generator: open-loop benchmarks with merged HdrHistograms and recorded reports.

use clap::Parser;
use std::process::ExitCode;

/// ringmq load generator: open-loop benchmarks with merged HdrHistograms and recorded reports.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!(
        "ringmq-loadgen {}: not built yet (issue #7); only --help and --version work",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
