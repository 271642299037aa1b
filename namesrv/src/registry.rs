//! The name server's tables, sans-IO: live brokers, their topics, and
//! the topic index that answers route queries. Time is passed in, so the
//! expiry rules are tested without waiting.
//!
//! A registration may come in chunks (RocketMQ breaks near 60,000 topics
//! because one registration must fit one frame): chunks of one
//! `data_version` accumulate, and the broker's topic set is swapped in
//! when the last one arrives. Until then routes keep the previous set.

use ringmq_core::messages::{
    BrokerHeartbeatRequest, BrokerHeartbeatResponse, RegisterBrokerRequest, RegisterBrokerResponse,
};
use ringmq_core::route::{BrokerInfo, BrokerRoute, QueueRoute, TopicDescription, TopicRoute};
use ringmq_core::{BrokerId, ErrorCode, ErrorResponse, TopicName};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Most chunks one registration may have.
pub const MAX_CHUNKS: u32 = 10_000;
/// Most topics one broker may register.
pub const MAX_TOPICS_PER_BROKER: usize = 2_000_000;

type BrokerKey = (String, BrokerId);

#[derive(Debug)]
struct Pending {
    data_version: u64,
    chunk_count: u32,
    next_chunk: u32,
    topics: Vec<TopicDescription>,
}

#[derive(Debug)]
struct BrokerEntry {
    cluster: String,
    route: BrokerRoute,
    version: String,
    data_version: u64,
    topics: HashMap<TopicName, TopicDescription>,
    pending: Option<Pending>,
    last_seen: Instant,
    /// The connection it registered on; closing it removes the broker.
    conn: u64,
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    heartbeat_interval: Duration,
    brokers: BTreeMap<BrokerKey, BrokerEntry>,
    index: HashMap<TopicName, BTreeSet<BrokerKey>>,
}

fn invalid(message: impl Into<String>) -> ErrorResponse {
    ErrorResponse::new(ErrorCode::InvalidArgument, message)
}

impl Registry {
    /// An empty registry expecting heartbeats every `heartbeat_interval`.
    pub fn new(heartbeat_interval: Duration) -> Self {
        Self {
            heartbeat_interval,
            brokers: BTreeMap::new(),
            index: HashMap::new(),
        }
    }

    /// Brokers silent this long are dropped: three intervals.
    pub fn expiry(&self) -> Duration {
        self.heartbeat_interval * 3
    }

    fn unindex(&mut self, key: &BrokerKey, topics: impl Iterator<Item = TopicName>) {
        for t in topics {
            if let Some(set) = self.index.get_mut(&t) {
                set.remove(key);
                if set.is_empty() {
                    self.index.remove(&t);
                }
            }
        }
    }

    /// A registration (or one chunk of it) from connection `conn`.
    pub fn register(
        &mut self,
        req: RegisterBrokerRequest,
        conn: u64,
        now: Instant,
    ) -> Result<RegisterBrokerResponse, ErrorResponse> {
        if req.broker_name.is_empty() || req.broker_name.len() > 127 {
            return Err(invalid("broker_name must be 1-127 bytes"));
        }
        if req.chunk_count == 0
            || req.chunk_count > MAX_CHUNKS
            || req.chunk_index >= req.chunk_count
        {
            return Err(invalid(format!(
                "chunk {} of {}: need 0 <= index < count <= {MAX_CHUNKS}",
                req.chunk_index, req.chunk_count
            )));
        }
        let key = (req.broker_name.clone(), req.broker_id);
        // Check the chunk before touching anything: a rejected chunk
        // changes no entry and creates none.
        let pending_topics = if req.chunk_index == 0 {
            Some(0)
        } else {
            self.brokers
                .get(&key)
                .and_then(|e| e.pending.as_ref())
                .filter(|p| {
                    p.data_version == req.data_version
                        && p.chunk_count == req.chunk_count
                        && p.next_chunk == req.chunk_index
                })
                .map(|p| p.topics.len())
        };
        let reject = |brokers: &mut BTreeMap<BrokerKey, BrokerEntry>, why: String| {
            if let Some(e) = brokers.get_mut(&key) {
                e.pending = None;
            }
            Err(invalid(why))
        };
        let Some(pending_topics) = pending_topics else {
            return reject(
                &mut self.brokers,
                format!(
                    "chunk {} of data version {} does not continue a registration; start again at chunk 0",
                    req.chunk_index, req.data_version
                ),
            );
        };
        if pending_topics + req.topics.len() > MAX_TOPICS_PER_BROKER {
            return reject(
                &mut self.brokers,
                format!("more than {MAX_TOPICS_PER_BROKER} topics from one broker"),
            );
        }
        let route = BrokerRoute {
            broker_name: req.broker_name.clone(),
            broker_id: req.broker_id,
            role: req.role,
            front_addr: req.front_addr.clone(),
            shards: req.shards.clone(),
        };
        let entry = self
            .brokers
            .entry(key.clone())
            .or_insert_with(|| BrokerEntry {
                cluster: req.cluster.clone(),
                route: route.clone(),
                version: req.version.clone(),
                data_version: u64::MAX,
                topics: HashMap::new(),
                pending: None,
                last_seen: now,
                conn,
            });
        entry.last_seen = now;
        entry.conn = conn;
        entry.cluster = req.cluster;
        entry.route = route;
        entry.version = req.version;
        // Chunk 0 starts afresh; a later chunk continues the pending one
        // (checked above).
        let p = match &mut entry.pending {
            Some(p) if req.chunk_index > 0 => p,
            slot => slot.insert(Pending {
                data_version: req.data_version,
                chunk_count: req.chunk_count,
                next_chunk: 0,
                topics: Vec::new(),
            }),
        };
        p.topics.extend(req.topics);
        p.next_chunk += 1;
        if p.next_chunk == p.chunk_count {
            let done = entry.pending.take().map(|p| (p.data_version, p.topics));
            if let Some((data_version, topics)) = done {
                let old: Vec<TopicName> = entry.topics.keys().cloned().collect();
                entry.data_version = data_version;
                entry.topics = topics.into_iter().map(|t| (t.topic.clone(), t)).collect();
                let new: Vec<TopicName> = entry.topics.keys().cloned().collect();
                self.unindex(&key, old.into_iter());
                for t in new {
                    self.index.entry(t).or_default().insert(key.clone());
                }
                tracing::info!(
                    broker = %key.0,
                    id = key.1 .0,
                    data_version,
                    topics = self.brokers.get(&key).map_or(0, |e| e.topics.len()),
                    "broker registered"
                );
            }
        }
        Ok(RegisterBrokerResponse {
            heartbeat_interval_ms: self.heartbeat_interval.as_millis().min(u32::MAX as u128) as u32,
        })
    }

    /// A heartbeat: known at this data version, or asked to register again.
    pub fn heartbeat(
        &mut self,
        req: &BrokerHeartbeatRequest,
        now: Instant,
    ) -> BrokerHeartbeatResponse {
        let key = (req.broker_name.clone(), req.broker_id);
        match self.brokers.get_mut(&key) {
            Some(e) if e.data_version == req.data_version && e.pending.is_none() => {
                e.last_seen = now;
                BrokerHeartbeatResponse { reregister: false }
            }
            _ => BrokerHeartbeatResponse { reregister: true },
        }
    }

    fn remove(&mut self, key: &BrokerKey, why: &str) {
        if let Some(e) = self.brokers.remove(key) {
            tracing::info!(broker = %key.0, id = key.1 .0, why, "broker removed from routes");
            self.unindex(key, e.topics.into_keys());
        }
    }

    /// Drops brokers silent for three intervals; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let limit = self.expiry();
        let dead: Vec<BrokerKey> = self
            .brokers
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_seen) > limit)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            self.remove(k, "no heartbeat for three intervals");
        }
        dead.len()
    }

    /// Drops the brokers registered on a connection that closed.
    pub fn connection_closed(&mut self, conn: u64) {
        let gone: Vec<BrokerKey> = self
            .brokers
            .iter()
            .filter(|(_, e)| e.conn == conn)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.remove(k, "its connection closed");
        }
    }

    /// The route of `topic`: every broker holding it, every queue with its shard.
    pub fn route(&self, topic: &TopicName) -> Result<TopicRoute, ErrorResponse> {
        let keys = self.index.get(topic).ok_or_else(|| {
            ErrorResponse::new(
                ErrorCode::TopicNotFound,
                format!("no broker serves topic {topic}"),
            )
        })?;
        let mut route = TopicRoute {
            topic: topic.clone(),
            brokers: Vec::with_capacity(keys.len()),
            queues: Vec::new(),
        };
        for key in keys {
            let Some(e) = self.brokers.get(key) else {
                continue;
            };
            route.brokers.push(e.route.clone());
            if let Some(t) = e.topics.get(topic) {
                route.queues.extend(t.placement.iter().map(|p| QueueRoute {
                    queue_id: p.queue_id,
                    broker_name: key.0.clone(),
                    shard_id: p.shard_id,
                    perm: t.perm,
                }));
            }
        }
        Ok(route)
    }

    /// Every routed topic, sorted.
    pub fn topics(&self) -> Vec<TopicName> {
        let mut v: Vec<TopicName> = self.index.keys().cloned().collect();
        v.sort();
        v
    }

    /// Every live broker.
    pub fn cluster(&self, now: Instant) -> Vec<BrokerInfo> {
        self.brokers
            .values()
            .map(|e| BrokerInfo {
                cluster: e.cluster.clone(),
                route: e.route.clone(),
                last_heartbeat_ms_ago: now.saturating_duration_since(e.last_seen).as_millis()
                    as u64,
                data_version: e.data_version,
                topic_count: e.topics.len() as u32,
                version: e.version.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_core::route::{BrokerRole, Perm, QueuePlacement, ShardRoute};
    use ringmq_core::{QueueId, ShardId};

    fn topic(name: &str, queues: u32, shards: u16) -> TopicDescription {
        TopicDescription {
            topic: TopicName::new(name).unwrap(),
            queue_count: queues,
            perm: Perm::READ_WRITE,
            placement: (0..queues)
                .map(|q| QueuePlacement {
                    queue_id: QueueId(q),
                    shard_id: ShardId((q % u32::from(shards)) as u16),
                })
                .collect(),
        }
    }

    fn reg(
        name: &str,
        version: u64,
        index: u32,
        count: u32,
        topics: Vec<TopicDescription>,
    ) -> RegisterBrokerRequest {
        RegisterBrokerRequest {
            cluster: "c".into(),
            broker_name: name.into(),
            broker_id: BrokerId(0),
            role: BrokerRole::Master,
            front_addr: format!("{name}:10911"),
            shards: (0..2)
                .map(|s| ShardRoute {
                    shard_id: ShardId(s),
                    addr: format!("{name}:{}", 10912 + s),
                })
                .collect(),
            data_version: version,
            chunk_index: index,
            chunk_count: count,
            topics,
            version: "test".into(),
        }
    }

    #[test]
    fn chunked_registration_of_100k_topics_routes_every_one() {
        let mut r = Registry::new(Duration::from_secs(10));
        let now = Instant::now();
        let all: Vec<TopicDescription> = (0..100_000)
            .map(|i| topic(&format!("t{i}"), 8, 2))
            .collect();
        let chunks: Vec<_> = all.chunks(10_000).collect();
        for (i, c) in chunks.iter().enumerate() {
            r.register(
                reg("a", 1, i as u32, chunks.len() as u32, c.to_vec()),
                1,
                now,
            )
            .unwrap();
            if i + 1 < chunks.len() {
                assert!(
                    r.topics().is_empty(),
                    "nothing routed before the last chunk"
                );
            }
        }
        assert_eq!(r.topics().len(), 100_000);
        for i in (0..100_000).step_by(997) {
            let route = r.route(&TopicName::new(format!("t{i}")).unwrap()).unwrap();
            assert_eq!(route.queues.len(), 8);
            assert_eq!(route.brokers[0].shards.len(), 2);
        }
        assert!(
            !r.heartbeat(
                &BrokerHeartbeatRequest {
                    broker_name: "a".into(),
                    broker_id: BrokerId(0),
                    data_version: 1
                },
                now
            )
            .reregister
        );
    }

    #[test]
    fn out_of_order_chunks_are_refused_and_routes_keep_the_old_set() {
        let mut r = Registry::new(Duration::from_secs(10));
        let now = Instant::now();
        r.register(reg("a", 1, 0, 1, vec![topic("old", 1, 1)]), 1, now)
            .unwrap();
        r.register(reg("a", 2, 0, 2, vec![topic("new", 1, 1)]), 1, now)
            .unwrap();
        assert!(
            r.register(reg("a", 2, 0, 3, vec![]), 1, now).is_ok(),
            "restart at 0"
        );
        let err = r.register(reg("a", 2, 2, 3, vec![]), 1, now).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert_eq!(r.topics(), vec![TopicName::new("old").unwrap()]);
        assert!(r.register(reg("a", 2, 1, 0, vec![]), 1, now).is_err());
    }

    #[test]
    fn a_rejected_chunk_creates_no_broker_and_changes_none() {
        let mut r = Registry::new(Duration::from_secs(10));
        let now = Instant::now();
        // A stray middle chunk from a broker nobody knows: no entry.
        assert!(r.register(reg("ghost", 1, 1, 2, vec![]), 7, now).is_err());
        assert!(r.cluster(now).is_empty(), "{:?}", r.cluster(now));
        r.register(reg("a", 1, 0, 1, vec![topic("t", 1, 1)]), 1, now)
            .unwrap();
        let mut bad = reg("a", 2, 1, 2, vec![]);
        bad.front_addr = "elsewhere:1".into();
        bad.version = "bad".into();
        assert!(r.register(bad, 9, now).is_err());
        let info = r.cluster(now);
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].route.front_addr, "a:10911", "route unchanged");
        assert_eq!(info[0].version, "test");
        assert_eq!(
            r.route(&TopicName::new("t").unwrap()).unwrap().queues.len(),
            1
        );
        // Its connection is still the one that registered.
        r.connection_closed(9);
        assert!(r.route(&TopicName::new("t").unwrap()).is_ok());
    }

    #[test]
    fn silent_or_disconnected_brokers_leave_the_routes() {
        let mut r = Registry::new(Duration::from_millis(100));
        let t0 = Instant::now();
        r.register(reg("a", 1, 0, 1, vec![topic("x", 2, 2)]), 1, t0)
            .unwrap();
        r.register(reg("b", 1, 0, 1, vec![topic("x", 2, 2)]), 2, t0)
            .unwrap();
        assert_eq!(
            r.route(&TopicName::new("x").unwrap()).unwrap().queues.len(),
            4
        );
        let hb = BrokerHeartbeatRequest {
            broker_name: "b".into(),
            broker_id: BrokerId(0),
            data_version: 1,
        };
        assert!(!r.heartbeat(&hb, t0 + Duration::from_millis(250)).reregister);
        assert_eq!(r.expire(t0 + Duration::from_millis(350)), 1, "a was silent");
        assert_eq!(
            r.route(&TopicName::new("x").unwrap())
                .unwrap()
                .brokers
                .len(),
            1
        );
        r.connection_closed(2);
        assert!(r.route(&TopicName::new("x").unwrap()).is_err());
        let stale = BrokerHeartbeatRequest {
            broker_name: "b".into(),
            broker_id: BrokerId(0),
            data_version: 1,
        };
        assert!(
            r.heartbeat(&stale, t0).reregister,
            "unknown broker re-registers"
        );
    }
}
