//! ringmq name server: broker registry and core-aware topic routes.
//!
//! # Layout
//! - [`registry`]: the tables (brokers, their topics, the topic index),
//!   sans-IO, with chunked registration and expiry.
//! - this file: the server: one glommio executor on its own thread, a
//!   listener, and a loop per connection that answers frames in order.
//!   [`start`] runs it (the `ringmq-namesrv` binary, or a broker with
//!   `--standalone`).
//! - `ringmq-namesrv` (src/main.rs): the command line.
//! - [`stop_on_signals`]: SIGTERM/SIGINT to a stop flag, for this binary
//!   and `ringmq-broker` (which depends on this crate for `--standalone`).
//!
//! Name servers do not talk to each other: brokers register with every
//! one, and clients fail over between them.

pub mod registry;

/// Sets `stop` on the first SIGTERM or SIGINT (from a watcher thread),
/// logging `message` then. A failure to watch is logged, not fatal.
pub fn stop_on_signals(stop: Arc<AtomicBool>, message: &'static str) {
    match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    tracing::info!(signal = sig, "{message}");
                    stop.store(true, Ordering::SeqCst);
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot watch SIGTERM/SIGINT"),
    }
}

use bytes::BytesMut;
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use registry::Registry;
use ringmq_core::messages::{ClusterInfoResponse, ListTopicsResponse};
use ringmq_core::{ErrorCode, ErrorResponse, Frame, FrameDecoder, FrameKind, Request, Response};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Name server settings.
#[derive(Debug, Clone)]
pub struct NamesrvConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// How often brokers must heartbeat; silent for three intervals, they
    /// are dropped.
    pub heartbeat_interval: Duration,
    /// CPU to pin the executor to (`None`: unpinned).
    pub cpu: Option<usize>,
}

/// Why the name server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NamesrvError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The executor thread failed.
    #[error("name server thread: {0}")]
    Thread(String),
}

/// A running name server.
#[derive(Debug)]
pub struct RunningNamesrv {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: glommio::ExecutorJoinHandle<()>,
}

impl RunningNamesrv {
    /// Asks it to stop.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// A flag that stops it when set.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits until it stopped.
    pub fn join(self) -> Result<(), NamesrvError> {
        self.thread
            .join()
            .map_err(|e| NamesrvError::Thread(e.to_string()))
    }
}

/// Frames up to 16 MiB: a registration chunk must fit one.
const MAX_FRAME_BYTES: u32 = 16 << 20;

/// Starts a name server on its own thread; returns once it listens.
pub fn start(cfg: NamesrvConfig) -> Result<RunningNamesrv, NamesrvError> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<Result<SocketAddr, NamesrvError>>();
    let placement = match cfg.cpu {
        Some(cpu) => glommio::Placement::Fixed(cpu),
        None => glommio::Placement::Unbound,
    };
    let flag = stop.clone();
    let listen = cfg.listen;
    let thread = glommio::LocalExecutorBuilder::new(placement)
        .name("ringmq-namesrv")
        .io_memory(1 << 20)
        .spawn(move || async move {
            // Not `bind`: its SO_REUSEPORT would let a second name server
            // on this port start without an error and take a share of the
            // connections (`bind_exclusive`, a patch in third_party/glommio).
            let listener = match TcpListener::bind_exclusive(listen) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(NamesrvError::Listen {
                        addr: listen,
                        reason: e.to_string(),
                    }));
                    return;
                }
            };
            let addr = listener.local_addr().unwrap_or(listen);
            let _ = tx.send(Ok(addr));
            serve(listener, cfg, flag).await;
        })
        .map_err(|e| NamesrvError::Thread(e.to_string()))?;
    let addr = rx
        .recv()
        .map_err(|_| NamesrvError::Thread("ended before listening".into()))??;
    tracing::info!(%addr, "name server listening");
    Ok(RunningNamesrv { addr, stop, thread })
}

struct Server {
    registry: RefCell<Registry>,
    next_conn: Cell<u64>,
}

async fn serve(listener: TcpListener, cfg: NamesrvConfig, stop: Arc<AtomicBool>) {
    let server = Rc::new(Server {
        registry: RefCell::new(Registry::new(cfg.heartbeat_interval)),
        next_conn: Cell::new(1),
    });
    let (stop_tx, stop_rx) = futures::channel::oneshot::channel::<()>();
    let stop_rx = futures::FutureExt::shared(stop_rx);
    let accept = {
        let server = server.clone();
        let stop_rx = stop_rx.clone();
        glommio::spawn_local(async move {
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        let conn = server.next_conn.get();
                        server.next_conn.set(conn + 1);
                        glommio::spawn_local(connection(
                            server.clone(),
                            stream,
                            conn,
                            stop_rx.clone(),
                        ))
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
    // Expiry runs a few times per interval; the stop flag is polled with it.
    let tick =
        (cfg.heartbeat_interval / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
    let mut since_expiry = Duration::ZERO;
    while !stop.load(Ordering::SeqCst) {
        let step = tick.min(Duration::from_millis(50));
        glommio::timer::sleep(step).await;
        since_expiry += step;
        if since_expiry >= tick {
            since_expiry = Duration::ZERO;
            server.registry.borrow_mut().expire(Instant::now());
        }
    }
    drop(accept);
    // Close every connection, so peers notice at once.
    let _ = stop_tx.send(());
    glommio::timer::sleep(Duration::from_millis(20)).await;
    tracing::info!("name server stopped");
}

fn answer(server: &Server, req: Request, conn: u64) -> Result<Response, ErrorResponse> {
    let now = Instant::now();
    let mut reg = server.registry.borrow_mut();
    Ok(match req {
        Request::RegisterBroker(r) => Response::RegisterBroker(reg.register(r, conn, now)?),
        Request::BrokerHeartbeat(h) => Response::BrokerHeartbeat(reg.heartbeat(&h, now)),
        Request::QueryRoute(q) => Response::QueryRoute(reg.route(&q.topic)?),
        Request::ListTopics(_) => Response::ListTopics(ListTopicsResponse {
            topics: reg.topics(),
        }),
        Request::ClusterInfo(_) => Response::ClusterInfo(ClusterInfoResponse {
            brokers: reg.cluster(now),
        }),
        other => {
            return Err(ErrorResponse::new(
                ErrorCode::UnknownRequestCode,
                format!(
                    "{} is not a name server request (send it to a broker)",
                    other.code().name()
                ),
            ))
        }
    })
}

/// Answers frames in order until the peer closes or breaks framing; then
/// forgets the brokers that registered on this connection.
async fn connection(
    server: Rc<Server>,
    stream: TcpStream,
    conn: u64,
    mut stop: futures::future::Shared<futures::channel::oneshot::Receiver<()>>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.split();
    let decoder = FrameDecoder::new(MAX_FRAME_BYTES);
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    'conn: loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    if let Some(answer) = e.answer() {
                        let _ = answer.encode(&mut out);
                    }
                    if e.is_fatal() {
                        let _ = writer.write_all(&out).await;
                        break 'conn;
                    }
                    continue;
                }
            };
            if frame.kind == FrameKind::Response {
                continue;
            }
            // Answers to many small requests read at once go out as they
            // pass a MiB, so the outgoing buffer stays bounded.
            if out.len() > 1 << 20 {
                if writer.write_all(&out).await.is_err() {
                    break 'conn;
                }
                out.clear();
            }
            let result = frame
                .decode_request()
                .map_err(|e| ErrorResponse::new(e.error_code(), e.to_string()))
                .and_then(|req| answer(&server, req, conn));
            if frame.kind == FrameKind::Request {
                let encoded = match &result {
                    Ok(resp) => {
                        Frame::response(frame.opaque, resp, bytes::Bytes::new()).encode(&mut out)
                    }
                    Err(e) => Frame::error(frame.opaque, frame.code, e).encode(&mut out),
                };
                if let Err(e) = encoded {
                    let err = ErrorResponse::new(ErrorCode::Internal, e.to_string());
                    let _ = Frame::error(frame.opaque, frame.code, &err).encode(&mut out);
                }
            }
        }
        if !out.is_empty() {
            if writer.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
            if out.capacity() > 1 << 20 {
                out = BytesMut::new();
            }
        }
        // The read window is zero-filled first: keep it near what one read
        // brings, not the capacity a large registration chunk grew.
        let start = buf.len();
        buf.resize(
            start + (buf.capacity() - start).clamp(16 * 1024, 256 * 1024),
            0,
        );
        let n = match futures::future::select(reader.read(&mut buf[start..]), &mut stop).await {
            futures::future::Either::Left((r, _)) => r.unwrap_or(0),
            futures::future::Either::Right(_) => 0,
        };
        buf.truncate(start + n);
        if n == 0 {
            break;
        }
        if buf.is_empty() && buf.capacity() > 1 << 20 {
            buf = BytesMut::new();
        }
    }
    server.registry.borrow_mut().connection_closed(conn);
}
