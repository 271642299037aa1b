//! The client core: settings, one reused connection per server address,
//! and a route cache that maps a topic's queues to the shard that owns
//! each (core-aware: requests go straight to that shard's port, never
//! through a broker's front port).
//!
//! Everything here is single-threaded (one monoio runtime); create one
//! [`Client`] per thread that needs one.

use crate::conn::Conn;
use crate::error::ClientError;
use ahash::AHashMap;
use bytes::Bytes;
use ringmq_core::messages::*;
use ringmq_core::route::TopicRoute;
use ringmq_core::{Call, GroupName, QueueId, Request, Response, ShardId, TopicName};
use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name servers, tried in order.
    pub namesrv: Vec<String>,
    /// This client's id (group membership); unique per process by default.
    pub client_id: String,
    /// How long to wait for any answer.
    pub request_timeout: Duration,
    /// Retries of a retriable failure (elsewhere where that is allowed).
    pub retries: u32,
    /// Routes older than this are fetched again.
    pub route_refresh: Duration,
    /// Requests in flight per connection.
    pub max_in_flight: usize,
}

impl ClientConfig {
    /// Defaults for these name servers.
    pub fn new(namesrv: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "host".into(), |h| h.trim().to_owned());
        Self {
            namesrv: namesrv.into_iter().map(Into::into).collect(),
            client_id: format!("{host}@{}@{:x}", std::process::id(), rand_u64()),
            request_timeout: Duration::from_secs(5),
            retries: 2,
            route_refresh: Duration::from_secs(30),
            max_in_flight: 1024,
        }
    }
}

/// A few random bits without a dependency: time and address entropy.
pub(crate) fn rand_u64() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    let a = &local as *const u8 as u64;
    let mut x = t ^ a.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// Where a queue lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueRef {
    /// The topic.
    pub topic: TopicName,
    /// The broker holding it (shared: a `QueueRef` is cloned per message).
    pub broker: Rc<str>,
    /// The queue.
    pub queue_id: QueueId,
}

#[derive(Debug)]
struct CachedRoute {
    route: Rc<TopicRoute>,
    fetched: Instant,
    /// Sorted writable and readable queues, built once per route.
    writable: Rc<Vec<QueueRef>>,
    readable: Rc<Vec<QueueRef>>,
    /// Each queue's shard address, resolved once per route (a host name
    /// would otherwise be looked up, blocking, on every request).
    addrs: AHashMap<(Rc<str>, QueueId), SocketAddr>,
}

/// A route fetch in progress, shared by every caller that needs it.
type RouteFetch = futures::future::Shared<
    futures::future::LocalBoxFuture<'static, Result<Rc<TopicRoute>, ClientError>>,
>;

pub(crate) struct Inner {
    pub(crate) cfg: ClientConfig,
    conns: RefCell<AHashMap<SocketAddr, Rc<Conn>>>,
    /// Looked up for every message sent (aHash: see the producer's maps).
    routes: RefCell<AHashMap<TopicName, CachedRoute>>,
    /// One route fetch per topic at a time: a burst of sends to a topic
    /// whose route expired asks the name server once.
    fetching: RefCell<AHashMap<TopicName, RouteFetch>>,
}

impl Inner {
    /// `get` of the topic's cached route while it is fresh (younger than
    /// `route_refresh`); `None` when there is none or it is stale.
    fn fresh<T>(
        &self,
        topic: &TopicName,
        get: impl FnOnce(&CachedRoute) -> Option<T>,
    ) -> Option<T> {
        let routes = self.routes.borrow();
        let c = routes.get(topic)?;
        (c.fetched.elapsed() < self.cfg.route_refresh)
            .then(|| get(c))
            .flatten()
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("cfg", &self.cfg)
            .field("conns", &self.conns)
            .field("routes", &self.routes)
            .field("fetching", &self.fetching.borrow().len())
            .finish()
    }
}

/// A handle to the client core; clones share connections and routes.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Rc<Inner>,
}

fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ClientError::Invalid(format!("{addr:?} is not a HOST:PORT address")))
}

/// The address of `broker`'s shard `shard` in `route`.
fn shard_addr_in<'r>(route: &'r TopicRoute, broker: &str, shard: ShardId) -> Option<&'r str> {
    route
        .brokers
        .iter()
        .find(|b| b.broker_name == broker)
        .and_then(|b| b.shards.iter().find(|s| s.shard_id == shard))
        .map(|s| s.addr.as_str())
}

impl Client {
    /// A client; connects lazily.
    pub fn new(cfg: ClientConfig) -> Result<Self, ClientError> {
        if cfg.namesrv.is_empty() {
            return Err(ClientError::Invalid("no name server given".into()));
        }
        for a in &cfg.namesrv {
            resolve(a)?;
        }
        Ok(Self {
            inner: Rc::new(Inner {
                cfg,
                conns: RefCell::new(AHashMap::new()),
                routes: RefCell::new(AHashMap::new()),
                fetching: RefCell::new(AHashMap::new()),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    async fn conn(&self, addr: SocketAddr) -> Result<Rc<Conn>, ClientError> {
        if let Some(c) = self.inner.conns.borrow().get(&addr) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let c = Conn::connect(
            addr,
            self.inner.cfg.request_timeout,
            self.inner.cfg.max_in_flight,
        )
        .await?;
        self.inner.conns.borrow_mut().insert(addr, c.clone());
        Ok(c)
    }

    /// Sends `req` with `body` to `addr`; returns the answer and its body.
    pub async fn call_at(
        &self,
        addr: SocketAddr,
        req: Request,
        body: Bytes,
    ) -> Result<(Response, Bytes), ClientError> {
        let conn = self.conn(addr).await?;
        conn.call(&req, body, self.inner.cfg.request_timeout).await
    }

    async fn typed_at<C: Call>(
        &self,
        addr: SocketAddr,
        req: C,
    ) -> Result<C::Response, ClientError> {
        let (resp, _) = self.call_at(addr, req.into(), Bytes::new()).await?;
        C::response_of(resp).ok_or_else(|| ClientError::Protocol("answer of another kind".into()))
    }

    /// Asks the name servers in order until one answers.
    pub async fn namesrv_call<C: Call + Clone>(&self, req: C) -> Result<C::Response, ClientError> {
        let mut last = ClientError::Invalid("no name server".into());
        for a in &self.inner.cfg.namesrv {
            let addr = resolve(a)?;
            match self.typed_at(addr, req.clone()).await {
                Ok(r) => return Ok(r),
                Err(e @ ClientError::Server { .. }) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The topic's route, from the cache while fresh.
    pub async fn route(&self, topic: &TopicName) -> Result<Rc<TopicRoute>, ClientError> {
        if let Some(route) = self.inner.fresh(topic, |c| Some(c.route.clone())) {
            return Ok(route);
        }
        self.refresh_route(topic).await
    }

    /// Fetches the topic's route now (joining a fetch already under way).
    pub async fn refresh_route(&self, topic: &TopicName) -> Result<Rc<TopicRoute>, ClientError> {
        use futures::FutureExt;
        let existing = self.inner.fetching.borrow().get(topic).cloned();
        let fetch = match existing {
            Some(f) => f,
            None => {
                // Weak: the map holds the future, which must not keep the
                // client alive.
                let weak = Rc::downgrade(&self.inner);
                let t = topic.clone();
                let f = async move {
                    match weak.upgrade() {
                        Some(inner) => Client { inner }.fetch_route(&t).await,
                        None => Err(ClientError::Closed),
                    }
                }
                .boxed_local()
                .shared();
                self.inner
                    .fetching
                    .borrow_mut()
                    .insert(topic.clone(), f.clone());
                f
            }
        };
        let result = fetch.clone().await;
        // Whoever sees it finish removes it (the starter may have been
        // dropped); a newer fetch for the topic stays.
        let mut fetching = self.inner.fetching.borrow_mut();
        if fetching.get(topic).is_some_and(|f| f.ptr_eq(&fetch)) {
            fetching.remove(topic);
        }
        result
    }

    /// Asks the name servers for the topic's route and caches it.
    async fn fetch_route(&self, topic: &TopicName) -> Result<Rc<TopicRoute>, ClientError> {
        let route = match self
            .namesrv_call(QueryRouteRequest {
                topic: topic.clone(),
            })
            .await
        {
            Ok(r) => Rc::new(r),
            Err(e) if e.code() == Some(ringmq_core::ErrorCode::TopicNotFound) => {
                self.inner.routes.borrow_mut().remove(topic);
                return Err(ClientError::NoRoute(topic.to_string()));
            }
            Err(e) => return Err(e),
        };
        let list = |writable: bool| {
            let mut qs: Vec<QueueRef> = route
                .queues
                .iter()
                .filter(|q| {
                    if writable {
                        q.perm.writable()
                    } else {
                        q.perm.readable()
                    }
                })
                .map(|q| QueueRef {
                    topic: topic.clone(),
                    broker: Rc::from(q.broker_name.as_str()),
                    queue_id: q.queue_id,
                })
                .collect();
            qs.sort();
            Rc::new(qs)
        };
        let mut resolved: AHashMap<&str, Option<SocketAddr>> = AHashMap::new();
        let mut addrs = AHashMap::new();
        for q in &route.queues {
            let Some(shard_addr) = shard_addr_in(&route, &q.broker_name, q.shard_id) else {
                continue;
            };
            let addr = *resolved
                .entry(shard_addr)
                .or_insert_with(|| resolve(shard_addr).ok());
            if let Some(addr) = addr {
                addrs.insert((Rc::from(q.broker_name.as_str()), q.queue_id), addr);
            }
        }
        self.inner.routes.borrow_mut().insert(
            topic.clone(),
            CachedRoute {
                route: route.clone(),
                fetched: Instant::now(),
                writable: list(true),
                readable: list(false),
                addrs,
            },
        );
        Ok(route)
    }

    /// Forgets a route (after a routing error).
    pub fn invalidate_route(&self, topic: &TopicName) {
        self.inner.routes.borrow_mut().remove(topic);
    }

    /// Every writable (or readable) queue of a topic, sorted (cached with
    /// the route).
    pub async fn queues(
        &self,
        topic: &TopicName,
        writable: bool,
    ) -> Result<Rc<Vec<QueueRef>>, ClientError> {
        let cached = |inner: &Inner| {
            inner.fresh(topic, |c| {
                Some(if writable {
                    c.writable.clone()
                } else {
                    c.readable.clone()
                })
            })
        };
        if let Some(q) = cached(&self.inner) {
            return Ok(q);
        }
        self.refresh_route(topic).await?;
        cached(&self.inner).ok_or_else(|| ClientError::NoRoute(topic.to_string()))
    }

    /// The shard address that owns `q`.
    pub async fn shard_addr(&self, q: &QueueRef) -> Result<SocketAddr, ClientError> {
        let cached = self.inner.fresh(&q.topic, |c| {
            c.addrs.get(&(q.broker.clone(), q.queue_id)).copied()
        });
        if let Some(addr) = cached {
            return Ok(addr);
        }
        // Not cached (or not resolvable): the long way, with its errors.
        let route = self.route(&q.topic).await?;
        let shard = route
            .queues
            .iter()
            .find(|r| *r.broker_name == *q.broker && r.queue_id == q.queue_id)
            .map(|r| r.shard_id)
            .ok_or_else(|| {
                ClientError::NoRoute(format!(
                    "{} queue {} on {}",
                    q.topic, q.queue_id.0, q.broker
                ))
            })?;
        let addr = shard_addr_in(&route, &q.broker, shard)
            .ok_or_else(|| ClientError::NoRoute(format!("shard {} of {}", shard.0, q.broker)))?;
        resolve(addr)
    }

    /// A typed request to the shard owning `q`; a routing error drops the
    /// cached route so the next call fetches it again.
    pub async fn queue_call<C: Call>(
        &self,
        q: &QueueRef,
        req: C,
        body: Bytes,
    ) -> Result<(C::Response, Bytes), ClientError> {
        let result: Result<(C::Response, Bytes), ClientError> = async {
            let addr = self.shard_addr(q).await?;
            let (resp, body) = self.call_at(addr, req.into(), body).await?;
            let resp = C::response_of(resp)
                .ok_or_else(|| ClientError::Protocol("answer of another kind".into()))?;
            Ok((resp, body))
        }
        .await;
        if let Err(e) = &result {
            if e.is_routing() {
                self.invalidate_route(&q.topic);
            }
        }
        result
    }

    /// Front address of every broker holding `topic`.
    pub async fn brokers_of(
        &self,
        topic: &TopicName,
    ) -> Result<Vec<(String, SocketAddr)>, ClientError> {
        let route = self.route(topic).await?;
        route
            .brokers
            .iter()
            .map(|b| Ok((b.broker_name.clone(), resolve(&b.front_addr)?)))
            .collect()
    }

    /// Stores a group's offset for a queue.
    pub async fn commit_offset(
        &self,
        group: &GroupName,
        q: &QueueRef,
        offset: u64,
    ) -> Result<(), ClientError> {
        self.queue_call(
            q,
            CommitOffsetRequest {
                group: group.clone(),
                topic: q.topic.clone(),
                queue_id: q.queue_id,
                offset,
            },
            Bytes::new(),
        )
        .await
        .map(|_| ())
    }

    /// A group's committed offset for a queue.
    pub async fn committed_offset(
        &self,
        group: &GroupName,
        q: &QueueRef,
    ) -> Result<Option<u64>, ClientError> {
        self.queue_call(
            q,
            QueryConsumerOffsetRequest {
                group: group.clone(),
                topic: q.topic.clone(),
                queue_id: q.queue_id,
            },
            Bytes::new(),
        )
        .await
        .map(|(r, _)| r.offset)
    }

    /// A queue's (earliest, next) offsets.
    pub async fn queue_offsets(&self, q: &QueueRef) -> Result<(u64, u64), ClientError> {
        self.queue_call(
            q,
            QueryQueueOffsetsRequest {
                topic: q.topic.clone(),
                queue_id: q.queue_id,
            },
            Bytes::new(),
        )
        .await
        .map(|(r, _)| (r.min_offset, r.max_offset))
    }
}
