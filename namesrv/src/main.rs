//! `ringmq-namesrv`: ringmq name server: broker registry and core-aware topic routes.

use clap::Parser;
use std::process::ExitCode;

/// ringmq name server: broker registry and core-aware topic routes.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!(
        "ringmq-namesrv {}: not built yet (issue #5); only --help and --version work",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
