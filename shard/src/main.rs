//! `ringmq-broker`: ringmq broker: thread-per-core shards on glommio, each with its own store and listener.

use clap::Parser;
use std::process::ExitCode;

/// ringmq broker: thread-per-core shards on glommio, each with its own store and listener.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!(
        "ringmq-broker {}: not built yet (issue #4); only --help and --version work",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
