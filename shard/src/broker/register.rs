//! Registration with name servers (shard 0): one task per name server
//! keeps a connection, registers the broker with every shard's address
//! and all its topics (in chunks of about [`CHUNK_BYTES`], so any number
//! of topics fits), heartbeats every interval the name server asks for,
//! registers again at once when a topic changes or the name server asks,
//! and reconnects after a failure.

use super::shard::Shard;
use bytes::BytesMut;
use futures::future::{select, Either};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;
use ringmq_core::messages::{BrokerHeartbeatRequest, RegisterBrokerRequest};
use ringmq_core::route::{BrokerRole, ShardRoute, TopicDescription};
use ringmq_core::{BrokerId, Frame, FrameDecoder, Request, Response, TopicName};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// Target size of one registration chunk's topics.
const CHUNK_BYTES: usize = 1 << 20;
/// Wait after a failed connection or request before trying again.
const RETRY: Duration = Duration::from_secs(1);
/// Longest wait for a name server's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// What the broker tells name servers about where to reach it.
#[derive(Debug, Clone)]
pub(crate) struct Advertised {
    pub(crate) front: String,
    pub(crate) shards: Vec<ShardRoute>,
}

/// Starts one registration task per name server.
pub(crate) fn spawn_all(shard: &Rc<Shard>, advertised: Advertised) {
    for addr in shard.cfg.namesrv.clone() {
        let (tx, rx) = local_channel::new_bounded::<()>(1);
        shard.meta_watchers.borrow_mut().push(tx);
        glommio::spawn_local(keep_registered(
            Rc::downgrade(shard),
            addr,
            advertised.clone(),
            rx,
        ))
        .detach();
    }
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    next: u32,
}

impl Conn {
    async fn call(&mut self, req: Request) -> Result<Response, String> {
        self.next = self.next.wrapping_add(1);
        let mut out = BytesMut::new();
        Frame::request(self.next, &req, bytes::Bytes::new())
            .encode(&mut out)
            .map_err(|e| e.to_string())?;
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| e.to_string())?;
        let decoder = FrameDecoder::default();
        let read = async {
            loop {
                if let Some(frame) = decoder.decode(&mut self.buf).map_err(|e| e.to_string())? {
                    return frame
                        .decode_response()
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("{:?}: {}", e.code, e.message));
                }
                let start = self.buf.len();
                self.buf.resize(start + 64 * 1024, 0);
                let n = self
                    .stream
                    .read(&mut self.buf[start..])
                    .await
                    .map_err(|e| e.to_string())?;
                self.buf.truncate(start + n);
                if n == 0 {
                    return Err("name server closed the connection".into());
                }
            }
        };
        futures::pin_mut!(read);
        match select(read, Box::pin(glommio::timer::sleep(ANSWER_TIMEOUT))).await {
            Either::Left((r, _)) => r,
            Either::Right(_) => Err("no answer in time".into()),
        }
    }
}

fn chunks(topics: Vec<TopicDescription>) -> Vec<Vec<TopicDescription>> {
    let mut out = vec![Vec::new()];
    let mut size = 0;
    for t in topics {
        let est = t.topic.as_str().len() + 16 + 6 * t.placement.len();
        if size + est > CHUNK_BYTES && !out.last().is_some_and(Vec::is_empty) {
            out.push(Vec::new());
            size = 0;
        }
        size += est;
        if let Some(last) = out.last_mut() {
            last.push(t);
        }
    }
    out
}

/// Registers everything; returns the heartbeat interval and the data
/// version registered.
async fn register(
    conn: &mut Conn,
    shard: &Shard,
    adv: &Advertised,
) -> Result<(Duration, u64), String> {
    let (version, topics) = {
        let t = shard.topics.borrow();
        let topics: Vec<TopicDescription> = t
            .topics
            .iter()
            .filter_map(|(name, m)| TopicName::new(name.clone()).ok().map(|n| m.describe(&n)))
            .collect();
        (t.version, topics)
    };
    let parts = chunks(topics);
    let count = parts.len() as u32;
    let mut interval = Duration::from_secs(10);
    for (i, part) in parts.into_iter().enumerate() {
        let req = RegisterBrokerRequest {
            cluster: shard.cfg.cluster.clone(),
            broker_name: shard.cfg.name.clone(),
            broker_id: BrokerId(0),
            role: BrokerRole::Master,
            front_addr: adv.front.clone(),
            shards: adv.shards.clone(),
            data_version: version,
            chunk_index: i as u32,
            chunk_count: count,
            topics: part,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        match conn.call(Request::RegisterBroker(req)).await? {
            Response::RegisterBroker(r) => {
                interval = Duration::from_millis(u64::from(r.heartbeat_interval_ms).max(10));
            }
            other => return Err(format!("unexpected answer {:?}", other.code())),
        }
    }
    Ok((interval, version))
}

async fn keep_registered(
    shard: std::rc::Weak<Shard>,
    addr: String,
    adv: Advertised,
    changed: LocalReceiver<()>,
) {
    loop {
        let Some(s) = shard.upgrade() else { return };
        if s.stopping.get() {
            return;
        }
        drop(s);
        let target = resolve_off_executor(&addr).await;
        let connected = match target {
            Some(a) => TcpStream::connect_timeout(a, Duration::from_secs(3))
                .await
                .map_err(|e| e.to_string()),
            None => Err("not a HOST:PORT address".into()),
        };
        let mut conn = match connected {
            Ok(stream) => Conn {
                stream,
                buf: BytesMut::new(),
                next: 0,
            },
            Err(e) => {
                tracing::warn!(namesrv = %addr, error = %e, "cannot reach name server; retrying");
                glommio::timer::sleep(RETRY).await;
                continue;
            }
        };
        let result: Result<(), String> = async {
            let Some(s) = shard.upgrade() else {
                return Ok(());
            };
            let (mut interval, mut version) = register(&mut conn, &s, &adv).await?;
            tracing::info!(namesrv = %addr, data_version = version, "registered with name server");
            drop(s);
            loop {
                let wait = glommio::timer::sleep(interval);
                futures::pin_mut!(wait);
                let topic_changed = matches!(
                    select(Box::pin(changed.recv()), wait).await,
                    Either::Left(_)
                );
                let Some(s) = shard.upgrade() else {
                    return Ok(());
                };
                if s.stopping.get() {
                    return Ok(());
                }
                let current = s.topics.borrow().version;
                let again = if topic_changed || current != version {
                    true
                } else {
                    let hb = BrokerHeartbeatRequest {
                        broker_name: s.cfg.name.clone(),
                        broker_id: BrokerId(0),
                        data_version: version,
                    };
                    match conn.call(Request::BrokerHeartbeat(hb)).await? {
                        Response::BrokerHeartbeat(r) => r.reregister,
                        other => return Err(format!("unexpected answer {:?}", other.code())),
                    }
                };
                if again {
                    (interval, version) = register(&mut conn, &s, &adv).await?;
                    tracing::debug!(namesrv = %addr, data_version = version, "registered again");
                }
            }
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(namesrv = %addr, error = %e, "name server connection failed; reconnecting");
                glommio::timer::sleep(RETRY).await;
            }
        }
    }
}

/// Resolves `addr` without blocking the executor: a host name's lookup can
/// take seconds when DNS is down, and shard 0 serves requests meanwhile.
/// An IP literal needs no lookup. The lookup runs on its own thread; this
/// polls for its answer (no waker crosses threads).
async fn resolve_off_executor(addr: &str) -> Option<SocketAddr> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Some(a);
    }
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None::<Option<SocketAddr>>));
    let (answer, name) = (slot.clone(), addr.to_owned());
    std::thread::Builder::new()
        .name("ringmq-resolve".into())
        .spawn(move || {
            let found = std::net::ToSocketAddrs::to_socket_addrs(&name)
                .ok()
                .and_then(|mut a| a.next());
            if let Ok(mut a) = answer.lock() {
                *a = Some(found);
            }
        })
        .ok()?;
    loop {
        if let Some(found) = slot.lock().ok().and_then(|mut a| a.take()) {
            return found;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_resolve_off_the_executor() {
        let ex = glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor");
        ex.run(async {
            assert_eq!(
                resolve_off_executor("127.0.0.1:9876").await,
                Some("127.0.0.1:9876".parse().expect("literal"))
            );
            let local = resolve_off_executor("localhost:9876")
                .await
                .expect("localhost");
            assert!(local.ip().is_loopback());
            assert_eq!(local.port(), 9876);
            assert_eq!(resolve_off_executor("no port here").await, None);
        });
    }
}
