//! `ringmq-namesrv`: the ringmq name server. See `--help`.

use clap::Parser;
use ringmq_namesrv::NamesrvConfig;
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// ringmq name server: brokers register here; clients ask it for routes.
#[derive(Debug, Parser)]
#[command(name = "ringmq-namesrv", version, about, long_about = None)]
struct Args {
    /// TOML file with `listen`, `heartbeat_interval_ms` and `cpu`; flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on. [default: 0.0.0.0:9876]
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// How often brokers must heartbeat, in ms; a broker silent for three
    /// intervals leaves the routes. [default: 10000]
    #[arg(long, value_name = "MS")]
    heartbeat_interval_ms: Option<u64>,
    /// CPU to pin the server's thread to. [default: unpinned]
    #[arg(long, value_name = "CPU")]
    cpu: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    heartbeat_interval_ms: Option<u64>,
    cpu: Option<usize>,
}

fn resolve(args: Args) -> Result<NamesrvConfig, String> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let listen_text = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "0.0.0.0:9876".into());
    let listen: SocketAddr = listen_text
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("--listen {listen_text:?} is not a HOST:PORT address"))?;
    let interval = args
        .heartbeat_interval_ms
        .or(file.heartbeat_interval_ms)
        .unwrap_or(10_000);
    if interval == 0 {
        return Err("--heartbeat-interval-ms must be positive".into());
    }
    Ok(NamesrvConfig {
        listen,
        heartbeat_interval: Duration::from_millis(interval),
        cpu: args.cpu.or(file.cpu),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringmq-namesrv: {e}");
            return ExitCode::from(2);
        }
    };
    let running = match ringmq_namesrv::start(cfg) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    ringmq_namesrv::stop_on_signals(running.stop_flag(), "stopping");
    match running.join() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}
