//! The broker process: one glommio executor per shard, pinned to its CPU,
//! each with its own store (`DATA_DIR/shard-<i>`), its own listener (front
//! port + 1 + i by default) and a share of the front port (SO_REUSEPORT),
//! joined by a full mesh of SPSC channels.
//!
//! Start-up: every shard opens its store and binds its ports, then all meet
//! at a barrier and join the mesh; [`start`] returns once every shard
//! serves, or with the first shard's error. Shutdown ([`RunningBroker::shutdown`],
//! or SIGTERM/SIGINT in the binary): shards stop accepting and reading,
//! answer parked fetches, finish every request in flight (forwarded ones
//! included: a shard keeps serving mesh calls until every peer is done),
//! then close their stores (flush and checkpoint).

mod config;
mod conn;
mod mesh;
mod meta;
mod register;
mod shard;

pub use config::{BrokerArgs, BrokerConfig, ConfigError};

use crate::store::{DmaDisk, Store, StoreConfig};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use mesh::{Mesh, MeshMsg};
use shard::Shard;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{mpsc, Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

/// Why the broker could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data folder cannot be used.
    #[error("data directory {}: {source}", path.display())]
    DataDir {
        /// The folder.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A shard failed to start or to stop cleanly.
    #[error("shard {shard}: {reason}")]
    Shard {
        /// The shard.
        shard: usize,
        /// What failed.
        reason: String,
    },
}

/// How long a stopping shard waits for requests in flight and for peers.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How often a shard looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// A started broker.
#[derive(Debug)]
pub struct RunningBroker {
    /// The front port's address.
    pub front_addr: SocketAddr,
    /// Each shard's own listener, by shard id.
    pub shard_addrs: Vec<SocketAddr>,
    /// The embedded name server's address (`--standalone`).
    pub namesrv_addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<glommio::ExecutorJoinHandle<Result<(), String>>>,
    namesrv: Option<ringmq_namesrv::RunningNamesrv>,
}

impl RunningBroker {
    /// Asks every shard to stop (returns at once; [`RunningBroker::join`] waits).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// A flag that stops the broker when set (for signal handlers).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits for every shard to finish (then stops an embedded name server).
    pub fn join(self) -> Result<(), BrokerError> {
        let mut first = Ok(());
        for (shard, t) in self.threads.into_iter().enumerate() {
            let result = match t.join() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(reason)) => Err(BrokerError::Shard { shard, reason }),
                Err(e) => Err(BrokerError::Shard {
                    shard,
                    reason: format!("executor failed: {e}"),
                }),
            };
            if first.is_ok() {
                first = result;
            }
        }
        if let Some(ns) = self.namesrv {
            ns.shutdown();
            if let Err(e) = ns.join() {
                tracing::warn!(error = %e, "embedded name server");
            }
        }
        first
    }
}

/// Whether this process runs as root (glommio can register all the
/// io_uring memory it wants only then; see README).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// What a shard reports when it is serving (or why it is not).
type Ready = (usize, Result<SocketAddr, String>);

/// Starts the broker's shards; returns once all serve.
pub fn start(cfg: BrokerConfig) -> Result<RunningBroker, BrokerError> {
    let mut cfg = cfg;
    let namesrv = if cfg.standalone {
        let ns = ringmq_namesrv::start(ringmq_namesrv::NamesrvConfig {
            listen: SocketAddr::new(cfg.listen.ip(), cfg.namesrv_port),
            heartbeat_interval: Duration::from_secs(10),
            cpu: None,
        })
        .map_err(|e| ConfigError::Invalid(format!("embedded name server: {e}")))?;
        let advertised = SocketAddr::new(advertise_ip(&cfg), ns.addr.port());
        cfg.namesrv.push(advertised.to_string());
        Some(ns)
    } else {
        None
    };
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| BrokerError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let probe = cfg.data_dir.join(".ringmq-write-probe");
    std::fs::write(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|source| BrokerError::DataDir {
            path: cfg.data_dir.clone(),
            source,
        })?;
    if let Some(cpu) = crate::store::disk_irq_cpu(&cfg.data_dir) {
        // Where write and fdatasync completions land: a shard elsewhere pays
        // a cross-CPU wake-up for each (README, "Deployment").
        tracing::info!(
            irq_cpu = cpu,
            shard_cpus = ?&cfg.cpus[..cfg.shards.min(cfg.cpus.len())],
            "the data disk's completion interrupts land on CPU {cpu}"
        );
    }
    let root = is_root();
    if !root {
        tracing::warn!(
            "not running as root: each shard registers only 1 MiB of io_uring memory \
             (RLIMIT_MEMLOCK), so fewer I/O buffers are pre-registered"
        );
    }
    let n = cfg.shards;
    let cfg = Arc::new(cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let front_port = Arc::new(AtomicU16::new(cfg.listen.port()));
    let barrier = Arc::new(Barrier::new(n));
    let mesh = MeshBuilder::<Vec<MeshMsg>, _>::full(n, mesh::MESH_CHANNEL_BATCHES);
    let (ready_tx, ready_rx) = mpsc::channel::<Ready>();
    let routes = Arc::new(OnceLock::new());
    let mut threads = Vec::with_capacity(n);
    for id in 0..n {
        let ctx = ShardStart {
            id,
            cfg: cfg.clone(),
            stop: stop.clone(),
            front_port: front_port.clone(),
            barrier: barrier.clone(),
            mesh: mesh.clone(),
            ready: ready_tx.clone(),
            routes: routes.clone(),
        };
        let mut builder =
            glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cfg.cpus[id]))
                .name(&format!("ringmq-shard-{id}"));
        if !root {
            builder = builder.io_memory(1 << 20);
        }
        match builder.spawn(move || run_shard(ctx)) {
            Ok(t) => threads.push(t),
            Err(e) => {
                // The others wait at the barrier for this one: let them go.
                stop.store(true, Ordering::SeqCst);
                return Err(BrokerError::Shard {
                    shard: id,
                    reason: format!("cannot start its executor: {e}"),
                });
            }
        }
    }
    drop(ready_tx);
    let mut shard_addrs = vec![None; n];
    let mut error = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok((id, Ok(addr))) => shard_addrs[id] = Some(addr),
            Ok((id, Err(reason))) => {
                error.get_or_insert(BrokerError::Shard { shard: id, reason });
            }
            Err(_) => {
                error.get_or_insert(BrokerError::Shard {
                    shard: 0,
                    reason: "a shard thread ended before reporting".into(),
                });
                break;
            }
        }
    }
    let running = RunningBroker {
        front_addr: SocketAddr::new(cfg.listen.ip(), front_port.load(Ordering::SeqCst)),
        shard_addrs: shard_addrs.iter().flatten().copied().collect(),
        namesrv_addr: namesrv.as_ref().map(|n| n.addr),
        stop,
        threads,
        namesrv,
    };
    let host = advertise_host(&cfg);
    let _ = routes.set(register::Advertised {
        front: format!("{host}:{}", running.front_addr.port()),
        shards: running
            .shard_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| ringmq_core::route::ShardRoute {
                shard_id: ringmq_core::ShardId(i as u16),
                addr: format!("{host}:{}", a.port()),
            })
            .collect(),
    });
    if let Some(e) = error {
        running.shutdown();
        let _ = running.join();
        return Err(e);
    }
    tracing::info!(
        front = %running.front_addr,
        shards = ?running.shard_addrs,
        data_dir = %cfg.data_dir.display(),
        flush = ?cfg.flush,
        "broker serving"
    );
    Ok(running)
}

struct ShardStart {
    id: usize,
    cfg: Arc<BrokerConfig>,
    stop: Arc<AtomicBool>,
    front_port: Arc<AtomicU16>,
    barrier: Arc<Barrier>,
    mesh: MeshBuilder<Vec<MeshMsg>, glommio::channels::channel_mesh::Full>,
    ready: mpsc::Sender<Ready>,
    /// Every shard's advertised address, set once all serve.
    routes: Arc<OnceLock<register::Advertised>>,
}

/// The IP routes give for this broker when `--advertise-host` is not set:
/// the listen IP, or when that is unspecified the IP this host would use
/// to reach others (a UDP "connect" sends nothing), or loopback.
fn advertise_ip(cfg: &BrokerConfig) -> std::net::IpAddr {
    if !cfg.listen.ip().is_unspecified() {
        return cfg.listen.ip();
    }
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.ip())
}

fn advertise_host(cfg: &BrokerConfig) -> String {
    cfg.advertise_host
        .clone()
        .unwrap_or_else(|| advertise_ip(cfg).to_string())
}

fn store_config(cfg: &BrokerConfig, id: usize) -> StoreConfig {
    let mut s = StoreConfig::new(cfg.data_dir.join(format!("shard-{id}")));
    s.flush = cfg.flush;
    s.flush_interval_ms = cfg.flush_interval_ms;
    s.segment_bytes = cfg.segment_bytes;
    s.retention_ms = cfg.retention_ms;
    s.retention_bytes = cfg.retention_bytes;
    s.catch_up_bytes_per_sec = cfg.catch_up_bytes_per_sec;
    s.read_ahead_bytes = cfg.read_ahead_bytes;
    s
}

/// A listener on a port that is this shard's alone: glommio's `bind` sets
/// `SO_REUSEPORT`, which would let a second broker on the same port start
/// without an error and take a share of its connections.
fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind_exclusive(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// A listener on the front port, which every shard of this broker shares
/// (`SO_REUSEPORT`: the kernel spreads connections over them). Shard 0
/// first binds the port alone for a moment, which fails if anything else
/// listens there: `SO_REUSEPORT` would otherwise let a second broker join
/// this one's share of the port without an error. The shared listeners set
/// `SO_REUSEADDR` too, so their old connections in `TIME_WAIT` do not fail
/// that check when the broker restarts.
fn bind_front(addr: SocketAddr, first: bool) -> Result<TcpListener, String> {
    if first && addr.port() != 0 {
        drop(bind(addr)?);
    }
    TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Everything a shard does before the barrier; fallible.
async fn prepare(
    ctx: &ShardStart,
) -> Result<
    (
        Store<DmaDisk>,
        meta::Topics,
        TcpListener,
        Option<TcpListener>,
    ),
    String,
> {
    let store = Store::open(DmaDisk, store_config(&ctx.cfg, ctx.id))
        .await
        .map_err(|e| format!("cannot open its store: {e}"))?;
    let topics = meta::Topics::load(&ctx.cfg.data_dir).map_err(|e| e.to_string())?;
    let ip = ctx.cfg.listen.ip();
    let own_port = match ctx.cfg.shard_port_base {
        Some(0) => 0,
        Some(base) => base
            .checked_add(ctx.id as u16)
            .ok_or("shard port out of range")?,
        None if ctx.cfg.listen.port() == 0 => 0,
        None => ctx
            .cfg
            .listen
            .port()
            .checked_add(1 + ctx.id as u16)
            .ok_or("shard port out of range")?,
    };
    let own = bind(SocketAddr::new(ip, own_port))?;
    // Shard 0 binds the front port first, so a port 0 becomes one real
    // port that the others then share.
    let front = if ctx.id == 0 {
        let l = bind_front(ctx.cfg.listen, true)?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        ctx.front_port.store(port, Ordering::SeqCst);
        Some(l)
    } else {
        None
    };
    Ok((store, topics, own, front))
}

async fn run_shard(ctx: ShardStart) -> Result<(), String> {
    let id = ctx.id;
    let prepared = prepare(&ctx).await;
    // Blocking is fine here: nothing else runs on this executor yet.
    ctx.barrier.wait();
    let front = match &prepared {
        Ok((_, _, _, Some(_))) => Ok(None),
        Ok(_) => bind_front(
            SocketAddr::new(ctx.cfg.listen.ip(), ctx.front_port.load(Ordering::SeqCst)),
            false,
        )
        .map(Some),
        Err(e) => Err(e.clone()),
    };
    // Every shard joins, or the others would wait forever.
    let joined = ctx.mesh.join().await;
    let (store, topics, own, front0) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = ctx.ready.send((id, Err(e.clone())));
            return Err(e);
        }
    };
    let fail = |e: String, store: Store<DmaDisk>| async move {
        let _ = store.close().await;
        Err::<(), String>(e)
    };
    let front = match front {
        Ok(Some(l)) => l,
        Ok(None) => match front0 {
            Some(l) => l,
            None => return fail("front listener missing".into(), store).await,
        },
        Err(e) => {
            let _ = ctx.ready.send((id, Err(e.clone())));
            return fail(e, store).await;
        }
    };
    let Ok((senders, receivers)) = joined else {
        let e = "cannot join the shard mesh".to_owned();
        let _ = ctx.ready.send((id, Err(e.clone())));
        return fail(e, store).await;
    };
    let addr = match own.local_addr() {
        Ok(a) => a,
        Err(e) => return fail(e.to_string(), store).await,
    };
    let mesh = Mesh::start(senders, ctx.cfg.shards);
    let shard = Rc::new(Shard::new(
        id,
        ctx.cfg.clone(),
        store,
        topics,
        mesh.clone(),
        addr,
    ));
    {
        let weak = Rc::downgrade(&shard);
        mesh.serve(receivers, move |_peer, call| {
            let shard = weak.upgrade();
            async move {
                match shard {
                    Some(s) => s.handle_call(call).await,
                    None => mesh::Reply::err(ringmq_core::ErrorCode::ShuttingDown, "shard stopped"),
                }
            }
        });
    }
    if let Err(e) = shard.ensure_queues().await {
        let e = format!("cannot create the queues the topic table places here: {e}");
        let _ = ctx.ready.send((id, Err(e.clone())));
        return Err(e);
    }
    let (stop_tx, stop_rx) = futures::channel::oneshot::channel::<()>();
    let stop_rx = futures::FutureExt::shared(stop_rx);
    let accept = |listener: TcpListener| {
        let shard = shard.clone();
        let stop = stop_rx.clone();
        glommio::spawn_local(async move {
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        glommio::spawn_local(conn::serve(shard.clone(), stream, stop.clone()))
                            .detach();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        })
    };
    let accept_own = accept(own);
    let accept_front = accept(front);
    let _ = ctx.ready.send((id, Ok(addr)));
    if id == 0 && !ctx.cfg.namesrv.is_empty() {
        // The routes are known once every shard serves.
        let shard = shard.clone();
        let routes = ctx.routes.clone();
        let stop = ctx.stop.clone();
        glommio::spawn_local(async move {
            loop {
                if let Some(adv) = routes.get() {
                    register::spawn_all(&shard, adv.clone());
                    return;
                }
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        })
        .detach();
    }

    while !ctx.stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(STOP_POLL).await;
    }
    // Stop accepting (dropping the tasks closes the listeners), stop reading.
    drop(accept_own);
    drop(accept_front);
    shard.stopping.set(true);
    let _ = stop_tx.send(());
    shard.wake_all_parked();
    let deadline = Instant::now() + DRAIN_LIMIT;
    while shard.stats.in_flight.get() > 0 && Instant::now() < deadline {
        shard.wake_all_parked();
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // No more calls from here; serve peers' calls until they say the same.
    mesh.send_done();
    while mesh.done_peers() < ctx.cfg.shards - 1 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let left = shard.stats.in_flight.get();
    if left > 0 {
        tracing::warn!(shard = id, left, "stopping with requests still in flight");
    }
    shard
        .store
        .close()
        .await
        .map_err(|e| format!("closing its store: {e}"))?;
    tracing::info!(shard = id, "shard stopped");
    Ok(())
}
