//! `ringmq-broker`: a ringmq broker, one shard per core. See `--help`.

use clap::Parser;
use ringmq_shard::broker::{self, BrokerArgs, BrokerConfig};
use std::process::ExitCode;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Logs to stderr, `RUST_LOG` to filter (default `info`). glommio's reactor
/// logs one error per device when its iopoll probe read fails, which is
/// harmless here (the store primes the probe; see store/disk.rs): its only
/// ERROR event is dropped.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            !(meta.target() == "glommio::reactor" && *meta.level() == tracing::Level::ERROR)
        }));
    let _ = tracing_subscriber::registry().with(fmt).try_init();
}

fn main() -> ExitCode {
    let args = BrokerArgs::parse();
    init_logs();
    let cfg = match BrokerConfig::resolve(args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("ringmq-broker: {e}");
            return ExitCode::from(2);
        }
    };
    let running = match broker::start(cfg) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    ringmq_namesrv::stop_on_signals(
        running.stop_flag(),
        "stopping: finishing requests in flight",
    );
    match running.join() {
        Ok(()) => {
            tracing::info!("broker stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}
