//! An in-process name server and broker on free loopback ports with a
//! temporary data directory: `quickstart`, and `run` without `--namesrv`.

use crate::workload::Workload;
use ringmq_namesrv::{NamesrvConfig, RunningNamesrv};
use ringmq_shard::broker::{self, BrokerArgs, BrokerConfig, RunningBroker};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A running embedded node; stops when dropped.
#[derive(Debug)]
pub struct Embedded {
    pub namesrv: Option<RunningNamesrv>,
    pub broker: Option<RunningBroker>,
    pub config: BrokerConfig,
    pub dir: tempfile::TempDir,
}

impl Embedded {
    /// Starts a name server and a broker as `w` asks: its shards (pinned
    /// to CPUs 0..), flush mode and catch-up read limit.
    pub fn start(w: &Workload) -> Result<Self, String> {
        // Settings first, through the broker's own flag checks: nothing is
        // started for a workload that is refused.
        let mut cfg = BrokerConfig::resolve(BrokerArgs {
            listen: Some("127.0.0.1:0".into()),
            shards: Some(w.shards),
            flush: Some(w.flush.clone()),
            catch_up_mib_per_sec: w.catch_up_mib_per_sec,
            advertise_host: Some("127.0.0.1".into()),
            ..BrokerArgs::default()
        })
        .map_err(|e| e.to_string())?;
        let dir = tempfile::Builder::new()
            .prefix("ringmq-loadgen-")
            .tempdir_in(std::env::var_os("RINGMQ_LOADGEN_DIR").unwrap_or_else(|| "/var/tmp".into()))
            .or_else(|_| tempfile::tempdir())
            .map_err(|e| format!("temporary data directory: {e}"))?;
        let namesrv = ringmq_namesrv::start(NamesrvConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            heartbeat_interval: Duration::from_secs(10),
            cpu: None,
        })
        .map_err(|e| e.to_string())?;
        cfg.data_dir = dir.path().join("data");
        cfg.namesrv = vec![namesrv.addr.to_string()];
        let broker = broker::start(cfg.clone()).map_err(|e| e.to_string())?;
        let node = Self {
            namesrv: Some(namesrv),
            broker: Some(broker),
            config: cfg,
            dir,
        };
        node.wait_registered()?;
        Ok(node)
    }

    pub fn namesrv_addr(&self) -> String {
        self.namesrv
            .as_ref()
            .map(|n| n.addr.to_string())
            .unwrap_or_default()
    }

    fn wait_registered(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = ringmq_client::admin::AdminConn::connect(
                &self.namesrv_addr(),
                Duration::from_secs(2),
            )
            .and_then(|mut c| c.call(ringmq_core::messages::ClusterInfoRequest {}))
            .is_ok_and(|r| !r.brokers.is_empty());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the embedded broker never registered".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown();
            if let Err(e) = b.join() {
                tracing::warn!(error = %e, "embedded broker");
            }
        }
        if let Some(n) = self.namesrv.take() {
            n.shutdown();
            let _ = n.join();
        }
    }
}

/// CPU seconds (user + system) of this process's broker shard threads.
pub fn shard_threads_cpu() -> Option<f64> {
    let mut total = 0.0;
    let mut found = false;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("ringmq-shard") {
            continue;
        }
        if let Some(t) = stat_cpu(&task.path().join("stat")) {
            total += t;
            found = true;
        }
    }
    found.then_some(total)
}

/// CPU seconds of a process from its `/proc/PID/stat`.
pub fn process_cpu(pid: u32) -> Option<f64> {
    stat_cpu(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

fn stat_cpu(path: &std::path::Path) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // After the name: state is 0, utime 11, stime 12 (clock ticks, 100/s).
    Some((ticks(11)? + ticks(12)?) / 100.0)
}
