//! Broker settings: command-line flags over an optional TOML file over
//! defaults. Every field is documented in `ringmq-broker --help`.

use clap::Parser;
use ringmq_core::FlushMode;
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for these settings.
    #[error("config file {}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A setting is outside its domain.
    #[error("{0}")]
    Invalid(String),
}

/// `ringmq-broker`: a ringmq broker, one shard per core.
///
/// Flags override the config file (`--config`), which overrides defaults.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "ringmq-broker", version, about, long_about = None)]
pub struct BrokerArgs {
    /// TOML file with any of the settings below (same names, with `_` for `-`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Front port address: every shard accepts here (SO_REUSEPORT) and
    /// forwards requests for queues it does not own. [default: 0.0.0.0:10911]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// First port of the per-shard listeners: shard i listens on BASE + i.
    /// 0 picks free ports. [default: front port + 1]
    #[arg(long, value_name = "BASE")]
    pub shard_port_base: Option<u16>,
    /// Data folder; shard i stores under DIR/shard-i. Created if missing.
    /// [default: ./ringmq-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of shards. [default: one per available core]
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// CPUs to pin shards to, in shard order (e.g. `0,2-3`). [default: 0..shards]
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// When a send is acknowledged: `async` once written, `sync` once
    /// durable (log segments written through, `O_DSYNC`). [default: async]
    #[arg(long, value_name = "MODE")]
    pub flush: Option<String>,
    /// `async` mode: fdatasync at least this often. [default: 100]
    #[arg(long, value_name = "MS")]
    pub flush_interval_ms: Option<u64>,
    /// This broker's name in routes. [default: broker-a]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Cluster name reported to name servers. [default: DefaultCluster]
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Name servers to register with, comma-separated.
    #[arg(long, value_name = "ADDR[,ADDR]", value_delimiter = ',')]
    pub namesrv: Option<Vec<String>>,
    /// Commit-log segment size in MiB. [default: 1024]
    #[arg(long, value_name = "MIB")]
    pub segment_mib: Option<u64>,
    /// Delete log segments older than this many hours (0 keeps them). [default: 72]
    #[arg(long, value_name = "HOURS")]
    pub retention_hours: Option<u64>,
    /// Delete the oldest segments while a shard's log is bigger than this many MiB (0: no limit).
    #[arg(long, value_name = "MIB")]
    pub retention_mib: Option<u64>,
    /// Most MiB a second each shard reads from disk for consumers behind
    /// the tail (0: no limit). Keeps a draining backlog from starving
    /// appends of CPU. [default: 0]
    #[arg(long, value_name = "MIB")]
    pub catch_up_mib_per_sec: Option<u64>,
    /// Size of each disk read for consumers behind the tail, in KiB (4 to
    /// 16384, a multiple of 4). Small reads keep the disk free for appends
    /// on a device that serves one request at a time. [default: 64]
    #[arg(long, value_name = "KIB")]
    pub read_ahead_kib: Option<u64>,
    /// Per-shard memory budget in MiB for request buffers in flight; over
    /// it the shard stops reading from sockets. [default: 256]
    #[arg(long, value_name = "MIB")]
    pub memory_budget_mib: Option<u64>,
    /// Requests in flight per connection before the broker stops reading it. [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Largest frame accepted, in bytes. [default: 16777216]
    #[arg(long, value_name = "BYTES")]
    pub max_frame_bytes: Option<u32>,
    /// Longest a fetch may park at the end of a queue, in ms. [default: 30000]
    #[arg(long, value_name = "MS")]
    pub max_fetch_wait_ms: Option<u32>,
    /// A consumer group member silent this long (ms) leaves its group.
    /// [default: 30000]
    #[arg(long, value_name = "MS")]
    pub group_expiry_ms: Option<u64>,
    /// Also run a name server in this process (one command, a working
    /// node); brokers register with it besides any `--namesrv`.
    #[arg(long)]
    pub standalone: bool,
    /// `--standalone`: the embedded name server's port. [default: 9876]
    #[arg(long, value_name = "PORT")]
    pub namesrv_port: Option<u16>,
    /// Host or IP that routes give clients for this broker.
    /// [default: the --listen IP, or this host's outbound IP when that is 0.0.0.0]
    #[arg(long, value_name = "HOST")]
    pub advertise_host: Option<String>,
}

/// The same settings as read from a TOML file; all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    shard_port_base: Option<u16>,
    data_dir: Option<PathBuf>,
    shards: Option<usize>,
    cpus: Option<String>,
    flush: Option<String>,
    flush_interval_ms: Option<u64>,
    name: Option<String>,
    cluster: Option<String>,
    namesrv: Option<Vec<String>>,
    segment_mib: Option<u64>,
    retention_hours: Option<u64>,
    retention_mib: Option<u64>,
    catch_up_mib_per_sec: Option<u64>,
    read_ahead_kib: Option<u64>,
    memory_budget_mib: Option<u64>,
    max_in_flight: Option<usize>,
    max_frame_bytes: Option<u32>,
    max_fetch_wait_ms: Option<u32>,
    group_expiry_ms: Option<u64>,
    standalone: Option<bool>,
    namesrv_port: Option<u16>,
    advertise_host: Option<String>,
}

/// Resolved broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The front port's address.
    pub listen: SocketAddr,
    /// First per-shard port; `None`: front port + 1 (free ports when the front port is 0).
    pub shard_port_base: Option<u16>,
    /// The data folder.
    pub data_dir: PathBuf,
    /// Shard count.
    pub shards: usize,
    /// CPU of each shard.
    pub cpus: Vec<usize>,
    /// Durability of acknowledgements.
    pub flush: FlushMode,
    /// `async` flush interval.
    pub flush_interval_ms: u64,
    /// Broker name.
    pub name: String,
    /// Cluster name.
    pub cluster: String,
    /// Name servers.
    pub namesrv: Vec<String>,
    /// Segment size in bytes.
    pub segment_bytes: u64,
    /// Retention by age.
    pub retention_ms: Option<u64>,
    /// Retention by size per shard.
    pub retention_bytes: Option<u64>,
    /// Catch-up disk reads per shard, bytes a second (`None`: no limit).
    pub catch_up_bytes_per_sec: Option<u64>,
    /// Catch-up read size, bytes.
    pub read_ahead_bytes: usize,
    /// Request buffer budget per shard, bytes.
    pub memory_budget_bytes: u64,
    /// Requests in flight per connection.
    pub max_in_flight: usize,
    /// Frame cap.
    pub max_frame_bytes: u32,
    /// Longest fetch park.
    pub max_fetch_wait_ms: u32,
    /// Group member expiry.
    pub group_expiry_ms: u64,
    /// Run an embedded name server.
    pub standalone: bool,
    /// Its port.
    pub namesrv_port: u16,
    /// Host in routes.
    pub advertise_host: Option<String>,
}

impl BrokerConfig {
    /// Defaults for a broker storing in `data_dir` with `shards` shards,
    /// listening on free loopback ports (what tests want).
    pub fn for_test(data_dir: impl Into<PathBuf>, shards: usize) -> Self {
        let mut cfg = Self::resolve(BrokerArgs::default()).unwrap_or_else(|_| unreachable!());
        cfg.data_dir = data_dir.into();
        cfg.shards = shards;
        cfg.cpus = (0..shards).map(|i| i % online_cpus()).collect();
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.shard_port_base = None;
        cfg.namesrv_port = 0;
        cfg.segment_bytes = 64 << 20;
        cfg
    }

    /// Merges flags over the config file over defaults, and checks them.
    pub fn resolve(args: BrokerArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        macro_rules! pick {
            ($field:ident) => {
                args.$field.clone().or(file.$field.clone())
            };
        }
        let listen_text = pick!(listen).unwrap_or_else(|| "0.0.0.0:10911".into());
        let listen = listen_text
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "--listen {listen_text:?} is not a HOST:PORT address"
                ))
            })?;
        let shards = pick!(shards).unwrap_or_else(online_cpus);
        if shards == 0 || shards > 256 {
            return Err(ConfigError::Invalid(format!(
                "--shards {shards}: must be 1 to 256"
            )));
        }
        let cpus = match pick!(cpus) {
            Some(list) => parse_cpu_list(&list)?,
            None => (0..shards).map(|i| i % online_cpus()).collect(),
        };
        if cpus.len() < shards {
            return Err(ConfigError::Invalid(format!(
                "--cpus names {} CPUs for {shards} shards",
                cpus.len()
            )));
        }
        let flush: FlushMode = pick!(flush)
            .as_deref()
            .unwrap_or("async")
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("--flush: {e}")))?;
        let name = pick!(name).unwrap_or_else(|| "broker-a".into());
        if name.is_empty() || name.len() > 127 || name.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid(format!(
                "--name {name:?}: 1-127 characters, no spaces"
            )));
        }
        let segment_mib = pick!(segment_mib).unwrap_or(1024);
        if !(1..=64 * 1024).contains(&segment_mib) {
            return Err(ConfigError::Invalid(format!(
                "--segment-mib {segment_mib}: must be 1 to 65536"
            )));
        }
        // MiB and hours to bytes and ms, refusing what would overflow (a
        // wrapped retention would delete every segment).
        let scaled = |flag: &str, v: u64, by: u64| {
            v.checked_mul(by)
                .ok_or_else(|| ConfigError::Invalid(format!("{flag} {v}: too large")))
        };
        let memory_budget_mib = pick!(memory_budget_mib).unwrap_or(256);
        let memory_budget_bytes = scaled("--memory-budget-mib", memory_budget_mib, 1 << 20)?;
        let max_frame_bytes = pick!(max_frame_bytes).unwrap_or(16 << 20);
        if memory_budget_mib == 0 || memory_budget_bytes < u64::from(max_frame_bytes) {
            return Err(ConfigError::Invalid(format!(
                "--memory-budget-mib {memory_budget_mib} must hold at least one frame of --max-frame-bytes {max_frame_bytes}"
            )));
        }
        // 0 means no limit for each of these, as for --retention-hours.
        let limit = |flag: &str, v: u64, by: u64| match v {
            0 => Ok(None),
            v => scaled(flag, v, by).map(Some),
        };
        let retention_ms = limit(
            "--retention-hours",
            pick!(retention_hours).unwrap_or(72),
            3_600_000,
        )?;
        let retention_bytes = limit(
            "--retention-mib",
            pick!(retention_mib).unwrap_or(0),
            1 << 20,
        )?;
        let catch_up_bytes_per_sec = limit(
            "--catch-up-mib-per-sec",
            pick!(catch_up_mib_per_sec).unwrap_or(0),
            1 << 20,
        )?;
        let read_ahead_kib = pick!(read_ahead_kib).unwrap_or(64);
        if !(4..=16 * 1024).contains(&read_ahead_kib) || !read_ahead_kib.is_multiple_of(4) {
            return Err(ConfigError::Invalid(format!(
                "--read-ahead-kib {read_ahead_kib}: must be a multiple of 4 from 4 to 16384"
            )));
        }
        let max_in_flight = pick!(max_in_flight).unwrap_or(1024);
        if max_in_flight == 0 {
            return Err(ConfigError::Invalid(
                "--max-in-flight must be positive".into(),
            ));
        }
        Ok(Self {
            listen,
            shard_port_base: pick!(shard_port_base),
            data_dir: pick!(data_dir).unwrap_or_else(|| "ringmq-data".into()),
            shards,
            cpus,
            flush,
            flush_interval_ms: pick!(flush_interval_ms).unwrap_or(100),
            name,
            cluster: pick!(cluster).unwrap_or_else(|| "DefaultCluster".into()),
            namesrv: pick!(namesrv).unwrap_or_default(),
            segment_bytes: segment_mib << 20,
            retention_ms,
            retention_bytes,
            catch_up_bytes_per_sec,
            read_ahead_bytes: (read_ahead_kib << 10) as usize,
            memory_budget_bytes,
            max_in_flight,
            max_frame_bytes,
            max_fetch_wait_ms: pick!(max_fetch_wait_ms).unwrap_or(30_000),
            group_expiry_ms: pick!(group_expiry_ms).unwrap_or(30_000).max(1),
            standalone: args.standalone || file.standalone.unwrap_or(false),
            namesrv_port: pick!(namesrv_port).unwrap_or(9876),
            advertise_host: pick!(advertise_host),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// CPUs this process may run on.
pub(crate) fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Parses `0,2-3` into `[0, 2, 3]`.
fn parse_cpu_list(list: &str) -> Result<Vec<usize>, ConfigError> {
    crate::store::parse_cpu_list(list)
        .ok_or_else(|| ConfigError::Invalid(format!("--cpus {list:?}: expected a list like 0,2-3")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> BrokerArgs {
        BrokerArgs::try_parse_from(std::iter::once("ringmq-broker").chain(list.iter().copied()))
            .unwrap()
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        std::fs::write(
            &file,
            "name = \"from-file\"\nshards = 3\nflush = \"sync\"\n",
        )
        .unwrap();
        let cfg =
            BrokerConfig::resolve(args(&["--config", file.to_str().unwrap(), "--shards", "2"]))
                .unwrap();
        assert_eq!(cfg.name, "from-file");
        assert_eq!(cfg.shards, 2);
        assert_eq!(cfg.flush, FlushMode::Sync);
        assert_eq!(cfg.listen.port(), 10911);
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        for (list, needle) in [
            (&["--shards", "0"][..], "--shards"),
            (&["--flush", "later"][..], "--flush"),
            (&["--listen", "nowhere"][..], "--listen"),
            (&["--cpus", "3-1"][..], "--cpus"),
            (&["--shards", "3", "--cpus", "0,1"][..], "--cpus"),
            (&["--memory-budget-mib", "1"][..], "--memory-budget-mib"),
            (
                &["--retention-hours", "18446744073709551615"][..],
                "--retention-hours",
            ),
            (
                &["--retention-mib", "17592186044416"][..],
                "--retention-mib",
            ),
            (&["--read-ahead-kib", "6"][..], "--read-ahead-kib"),
            (&["--read-ahead-kib", "0"][..], "--read-ahead-kib"),
            (&["--read-ahead-kib", "32768"][..], "--read-ahead-kib"),
        ] {
            let err = BrokerConfig::resolve(args(list)).unwrap_err().to_string();
            assert!(err.contains(needle), "{list:?}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "nmae = \"typo\"\n").unwrap();
        let err = BrokerConfig::resolve(args(&["--config", file.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nmae"), "{err}");
    }

    #[test]
    fn zero_means_no_limit_for_retention_and_catch_up() {
        let cfg = BrokerConfig::resolve(args(&[
            "--retention-hours",
            "0",
            "--retention-mib",
            "0",
            "--catch-up-mib-per-sec",
            "0",
        ]))
        .unwrap();
        assert_eq!(
            (
                cfg.retention_ms,
                cfg.retention_bytes,
                cfg.catch_up_bytes_per_sec
            ),
            (None, None, None)
        );
        let cfg = BrokerConfig::resolve(args(&["--retention-mib", "5"])).unwrap();
        assert_eq!(cfg.retention_bytes, Some(5 << 20));
        assert_eq!(cfg.read_ahead_bytes, 64 << 10);
        let cfg = BrokerConfig::resolve(args(&["--read-ahead-kib", "1024"])).unwrap();
        assert_eq!(cfg.read_ahead_bytes, 1 << 20);
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0,2-3").unwrap(), vec![0, 2, 3]);
        assert!(parse_cpu_list("x").is_err());
    }
}
