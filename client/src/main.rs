//! `ringmq`: ringmq native client library on monoio, and the ringmq admin CLI.

use clap::Parser;
use std::process::ExitCode;

/// ringmq native client library on monoio, and the ringmq admin CLI.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!(
        "ringmq {}: not built yet (issue #6); only --help and --version work",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
