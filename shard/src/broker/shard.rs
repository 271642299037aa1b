//! One shard: its store, its copy of the topic table, its end of the mesh,
//! its counters, and the request handlers.
//!
//! A request for a queue is handled on the shard that owns the queue: the
//! accepting shard routes it by the topic table and, when another shard
//! owns the queue, forwards the parsed request with its body's bytes over
//! the mesh. Topic changes are made by shard 0 only, which creates the
//! queues on their shards, persists the table, then tells every shard
//! before answering.

use super::mesh::{Call, Mesh, Reply};
use super::meta::{self, TopicMeta, Topics};
use super::BrokerConfig;
use crate::store::{DmaDisk, QueueNum, Store, StoreError};
use bytes::Bytes;
use futures::channel::oneshot;
use ringmq_core::batch::BatchError;
use ringmq_core::messages::{
    Ack, BrokerStatusResponse, FetchResponse, GroupHeartbeatRequest, GroupHeartbeatResponse,
    ListGroupsResponse, QueryConsumerOffsetResponse, QueryQueueOffsetsResponse, SendBatchResponse,
    ShardStatus,
};
use ringmq_core::name::TopicKind;
use ringmq_core::route::Perm;
use ringmq_core::{
    ErrorCode, ErrorResponse, GroupName, QueueId, Request, Response, ShardId, TopicName,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Most live consumer groups, and members of one group, a broker tracks.
const MAX_GROUPS: usize = 100_000;
const MAX_MEMBERS: usize = 10_000;

/// Most queues one topic may have.
pub(crate) const MAX_QUEUES_PER_TOPIC: u32 = 1024;

/// Counters since start, and gauges.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connections: Cell<u64>,
    pub(crate) in_flight: Cell<u64>,
    pub(crate) parked: Cell<u64>,
    pub(crate) bytes_in: Cell<u64>,
    pub(crate) bytes_out: Cell<u64>,
    pub(crate) records_in: Cell<u64>,
    pub(crate) records_out: Cell<u64>,
    pub(crate) forwarded: Cell<u64>,
}

pub(crate) fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
}

pub(crate) fn drop_by(c: &Cell<u64>, by: u64) {
    c.set(c.get().saturating_sub(by));
}

/// A shard's state, shared by its tasks.
#[derive(Debug)]
pub(crate) struct Shard {
    pub(crate) id: usize,
    pub(crate) n: usize,
    pub(crate) cfg: Arc<BrokerConfig>,
    pub(crate) store: Store<DmaDisk>,
    pub(crate) topics: RefCell<Topics>,
    pub(crate) mesh: Rc<Mesh>,
    pub(crate) stats: Stats,
    /// Request bytes in flight on this shard ([`BrokerConfig::memory_budget_bytes`]).
    pub(crate) budget: Rc<glommio::sync::Semaphore>,
    /// Fetches parked at the end of a queue.
    parked: RefCell<HashMap<QueueNum, Vec<oneshot::Sender<()>>>>,
    /// Serializes topic changes (shard 0).
    admin: futures::lock::Mutex<()>,
    pub(crate) stopping: Cell<bool>,
    pub(crate) addr: SocketAddr,
    /// Consumer group members (shard 0): group -> client id -> last heartbeat.
    groups: RefCell<HashMap<GroupName, HashMap<String, std::time::Instant>>>,
    /// Woken when the topic table changes (name server registration).
    pub(crate) meta_watchers: RefCell<Vec<glommio::channels::local_channel::LocalSender<()>>>,
}

fn store_error(e: StoreError) -> ErrorResponse {
    let code = match &e {
        StoreError::Poisoned(_) => ErrorCode::StorePoisoned,
        StoreError::DiskFull(_) => ErrorCode::DiskFull,
        StoreError::Io(_) | StoreError::Corrupt { .. } | StoreError::CorruptMeta { .. } => {
            ErrorCode::StorageIo
        }
        StoreError::Batch(BatchError::CrcMismatch { .. }) => ErrorCode::CrcMismatch,
        StoreError::Batch(_) => ErrorCode::InvalidBatch,
        StoreError::QueueMismatch { .. } => ErrorCode::InvalidArgument,
        StoreError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
        StoreError::UnknownQueue(_) => ErrorCode::QueueNotFound,
        StoreError::OffsetOutOfRange { earliest, .. } => {
            return ErrorResponse {
                code: ErrorCode::OffsetOutOfRange,
                message: e.to_string(),
                detail: Some(*earliest),
            }
        }
        StoreError::Closed => ErrorCode::ShuttingDown,
        _ => ErrorCode::Internal,
    };
    ErrorResponse::new(code, e.to_string())
}

impl Shard {
    pub(crate) fn new(
        id: usize,
        cfg: Arc<BrokerConfig>,
        store: Store<DmaDisk>,
        topics: Topics,
        mesh: Rc<Mesh>,
        addr: SocketAddr,
    ) -> Self {
        Self {
            id,
            n: cfg.shards,
            budget: Rc::new(glommio::sync::Semaphore::new(cfg.memory_budget_bytes)),
            cfg,
            store,
            topics: RefCell::new(topics),
            mesh,
            stats: Stats::default(),
            parked: RefCell::new(HashMap::new()),
            admin: futures::lock::Mutex::new(()),
            stopping: Cell::new(false),
            addr,
            meta_watchers: RefCell::new(Vec::new()),
            groups: RefCell::new(HashMap::new()),
        }
    }

    /// The shard owning a topic's queue.
    fn owner(&self, topic: &TopicName, queue: QueueId) -> Result<(usize, Perm), ErrorResponse> {
        let topics = self.topics.borrow();
        let t = topics.get(topic).ok_or_else(|| {
            ErrorResponse::new(ErrorCode::TopicNotFound, format!("no topic {topic}"))
        })?;
        let shard = t.shard_of(queue).ok_or_else(|| {
            ErrorResponse::new(
                ErrorCode::QueueNotFound,
                format!(
                    "topic {topic} has {} queues; no queue {}",
                    t.queue_count, queue.0
                ),
            )
        })?;
        Ok((shard, Perm::from_bits(t.perm).unwrap_or(Perm::READ_WRITE)))
    }

    /// Handles a client request arriving on this shard.
    pub(crate) async fn handle(self: &Rc<Self>, req: Request, body: Bytes) -> Reply {
        let target = match &req {
            Request::SendBatch(h) => Some((&h.topic, h.queue_id)),
            Request::Fetch(h) => Some((&h.topic, h.queue_id)),
            Request::CommitOffset(h) => Some((&h.topic, h.queue_id)),
            Request::QueryConsumerOffset(h) => Some((&h.topic, h.queue_id)),
            Request::QueryQueueOffsets(h) => Some((&h.topic, h.queue_id)),
            _ => None,
        };
        if let Some((topic, queue)) = target {
            let owner = match self.owner(topic, queue) {
                Ok((owner, _)) => owner,
                Err(e) => return e.into(),
            };
            if owner != self.id {
                bump(&self.stats.forwarded, 1);
                return self.mesh.call(owner, Call::Request { req, body }).await;
            }
            return self.local(req, body).await;
        }
        match req {
            Request::CreateTopic(_) | Request::DeleteTopic(_) | Request::GroupHeartbeat(_)
                if self.id != 0 =>
            {
                bump(&self.stats.forwarded, 1);
                self.mesh.call(0, Call::Request { req, body }).await
            }
            Request::CreateTopic(h) => self.create_topic(h.topic, h.queue_count, h.perm).await,
            Request::DeleteTopic(h) => self.delete_topic(h.topic).await,
            Request::GroupHeartbeat(h) => self.group_heartbeat(h),
            Request::DescribeTopic(h) => match self.topics.borrow().get(&h.topic) {
                Some(t) => Reply::ok(Response::DescribeTopic(t.describe(&h.topic))),
                None => Reply::err(ErrorCode::TopicNotFound, format!("no topic {}", h.topic)),
            },
            Request::BrokerStatus(_) => self.broker_status().await,
            Request::ListGroups(_) => self.list_groups().await,
            other => Reply::err(
                ErrorCode::UnknownRequestCode,
                format!(
                    "{} is not a broker request (send it to a name server)",
                    other.code().name()
                ),
            ),
        }
    }

    /// Handles a call from another shard.
    pub(crate) async fn handle_call(self: Rc<Self>, call: Call) -> Reply {
        match call {
            Call::Request { req, body } => match &req {
                Request::CreateTopic(_) | Request::DeleteTopic(_) | Request::GroupHeartbeat(_)
                    if self.id == 0 =>
                {
                    self.handle(req, body).await
                }
                _ => self.local(req, body).await,
            },
            Call::CreateQueues { topic, queues } => self.create_local_queues(&topic, &queues).await,
            Call::DeleteQueues { topic } => match self.store.delete_queues(&topic).await {
                Ok(_) => Reply::ok(Response::DeleteTopic(Ack {})),
                Err(e) => store_error(e).into(),
            },
            Call::Topic {
                topic,
                meta,
                version,
            } => {
                let mut t = self.topics.borrow_mut();
                t.version = t.version.max(version);
                match meta {
                    Some(m) => t.topics.insert(topic.as_str().to_owned(), m),
                    None => t.topics.remove(topic.as_str()),
                };
                Reply::ok(Response::DeleteTopic(Ack {}))
            }
            Call::Groups => Reply::ok(Response::ListGroups(ListGroupsResponse {
                groups: self.store.groups(),
            })),
            Call::Status => Reply::ok(Response::BrokerStatus(BrokerStatusResponse {
                broker_name: self.cfg.name.clone(),
                shards: vec![self.status()],
            })),
        }
    }

    fn status(&self) -> ShardStatus {
        let s = &self.stats;
        ShardStatus {
            shard_id: ShardId(self.id as u16),
            addr: self.addr.to_string(),
            connections: s.connections.get(),
            in_flight: s.in_flight.get(),
            parked_fetches: s.parked.get(),
            queues: self
                .topics
                .borrow()
                .topics
                .values()
                .map(|t| t.shards.iter().filter(|&&x| x as usize == self.id).count() as u64)
                .sum(),
            bytes_in: s.bytes_in.get(),
            bytes_out: s.bytes_out.get(),
            records_in: s.records_in.get(),
            records_out: s.records_out.get(),
            forwarded: s.forwarded.get(),
        }
    }

    async fn broker_status(self: &Rc<Self>) -> Reply {
        let mut shards = Vec::with_capacity(self.n);
        for peer in 0..self.n {
            if peer == self.id {
                shards.push(self.status());
                continue;
            }
            match self.mesh.call(peer, Call::Status).await.result {
                Ok(Response::BrokerStatus(r)) => shards.extend(r.shards),
                Ok(_) => return Reply::err(ErrorCode::Internal, "unexpected status reply"),
                Err(e) => return e.into(),
            }
        }
        Reply::ok(Response::BrokerStatus(BrokerStatusResponse {
            broker_name: self.cfg.name.clone(),
            shards,
        }))
    }

    /// Records a member's heartbeat (shard 0) and answers the group's live
    /// members, sorted. A heartbeat with no subscriptions means the member
    /// is leaving. Members silent for `group_expiry_ms` are dropped.
    fn group_heartbeat(&self, h: GroupHeartbeatRequest) -> Reply {
        if h.client_id.is_empty() || h.client_id.len() > 255 {
            return Reply::err(ErrorCode::InvalidArgument, "client_id must be 1-255 bytes");
        }
        let now = std::time::Instant::now();
        let expiry = Duration::from_millis(self.cfg.group_expiry_ms);
        let mut groups = self.groups.borrow_mut();
        if groups.len() >= MAX_GROUPS && !groups.contains_key(&h.group) {
            // Members that vanished without leaving only expire when their
            // group hears again: at the cap, sweep every group once.
            groups.retain(|_, members| {
                members.retain(|_, seen| now.saturating_duration_since(*seen) <= expiry);
                !members.is_empty()
            });
        }
        if groups.len() >= MAX_GROUPS && !groups.contains_key(&h.group) {
            return Reply::err(
                ErrorCode::Busy,
                format!("more than {MAX_GROUPS} live groups"),
            );
        }
        let members = groups.entry(h.group.clone()).or_default();
        if h.subscriptions.is_empty() {
            members.remove(&h.client_id);
        } else if members.len() < MAX_MEMBERS || members.contains_key(&h.client_id) {
            members.insert(h.client_id, now);
        } else {
            return Reply::err(ErrorCode::Busy, format!("more than {MAX_MEMBERS} members"));
        }
        members.retain(|_, seen| now.saturating_duration_since(*seen) <= expiry);
        let mut live: Vec<String> = members.keys().cloned().collect();
        if live.is_empty() {
            groups.remove(&h.group);
        }
        live.sort();
        Reply::ok(Response::GroupHeartbeat(GroupHeartbeatResponse {
            members: live,
        }))
    }

    async fn list_groups(self: &Rc<Self>) -> Reply {
        let mut groups = self.store.groups();
        for peer in (0..self.n).filter(|&p| p != self.id) {
            match self.mesh.call(peer, Call::Groups).await.result {
                Ok(Response::ListGroups(r)) => groups.extend(r.groups),
                Ok(_) => return Reply::err(ErrorCode::Internal, "unexpected groups reply"),
                Err(e) => return e.into(),
            }
        }
        groups.sort();
        groups.dedup();
        Reply::ok(Response::ListGroups(ListGroupsResponse { groups }))
    }

    fn queue(&self, topic: &TopicName, queue: QueueId) -> Result<QueueNum, ErrorResponse> {
        self.store.queue(topic, queue).ok_or_else(|| {
            ErrorResponse::new(
                ErrorCode::NotOwner,
                format!("queue {} of {topic} is not on shard {}", queue.0, self.id),
            )
        })
    }

    /// Handles a request for a queue this shard owns.
    async fn local(self: &Rc<Self>, req: Request, body: Bytes) -> Reply {
        match self.local_inner(req, body).await {
            Ok(reply) => reply,
            Err(e) => e.into(),
        }
    }

    async fn local_inner(
        self: &Rc<Self>,
        req: Request,
        body: Bytes,
    ) -> Result<Reply, ErrorResponse> {
        match req {
            Request::SendBatch(h) => {
                let (_, perm) = self.owner(&h.topic, h.queue_id)?;
                if !perm.writable() {
                    return Err(ErrorResponse::new(
                        ErrorCode::NoPermission,
                        format!("topic {} is not writable", h.topic),
                    ));
                }
                let q = self.queue(&h.topic, h.queue_id)?;
                let appended = self.store.append(q, body).await.map_err(store_error)?;
                bump(&self.stats.records_in, u64::from(appended.record_count));
                self.wake_parked(q);
                Ok(Reply::ok(Response::SendBatch(SendBatchResponse {
                    queue_id: h.queue_id,
                    base_offset: appended.base_offset,
                    record_count: appended.record_count,
                    store_timestamp_ms: appended.store_timestamp_ms,
                })))
            }
            Request::Fetch(h) => {
                let (_, perm) = self.owner(&h.topic, h.queue_id)?;
                if !perm.readable() {
                    return Err(ErrorResponse::new(
                        ErrorCode::NoPermission,
                        format!("topic {} is not readable", h.topic),
                    ));
                }
                let q = self.queue(&h.topic, h.queue_id)?;
                // Room for the response's own frame fields under the cap.
                let max_bytes = (h.max_bytes as usize)
                    .min(self.cfg.max_frame_bytes as usize / 2)
                    .max(1);
                let wait =
                    Duration::from_millis(u64::from(h.max_wait_ms.min(self.cfg.max_fetch_wait_ms)));
                let deadline = std::time::Instant::now() + wait;
                loop {
                    let fetched = self
                        .store
                        .fetch(q, h.offset, max_bytes)
                        .await
                        .map_err(store_error)?;
                    let now = std::time::Instant::now();
                    let at_end = fetched.batches.is_empty() && h.offset >= fetched.max_offset;
                    if !at_end || now >= deadline || self.stopping.get() {
                        let records: u64 = fetched
                            .batches
                            .iter()
                            .filter_map(|b| ringmq_core::batch::BatchHeader::peek(b).ok())
                            .map(|b| u64::from(b.record_count))
                            .sum();
                        bump(&self.stats.records_out, records);
                        return Ok(Reply {
                            result: Ok(Response::Fetch(FetchResponse {
                                queue_id: h.queue_id,
                                next_offset: fetched.next_offset,
                                min_offset: fetched.min_offset,
                                max_offset: fetched.max_offset,
                            })),
                            body: fetched.batches,
                        });
                    }
                    self.park(q, deadline - now).await;
                }
            }
            Request::CommitOffset(h) => {
                let q = self.queue(&h.topic, h.queue_id)?;
                self.store
                    .commit_offset(&h.group, q, h.offset)
                    .map_err(store_error)?;
                Ok(Reply::ok(Response::CommitOffset(Ack {})))
            }
            Request::QueryConsumerOffset(h) => {
                let q = self.queue(&h.topic, h.queue_id)?;
                let offset = self
                    .store
                    .committed_offset(&h.group, q)
                    .map_err(store_error)?;
                Ok(Reply::ok(Response::QueryConsumerOffset(
                    QueryConsumerOffsetResponse { offset },
                )))
            }
            Request::QueryQueueOffsets(h) => {
                let q = self.queue(&h.topic, h.queue_id)?;
                let (min_offset, max_offset) = self.store.offsets(q).map_err(store_error)?;
                Ok(Reply::ok(Response::QueryQueueOffsets(
                    QueryQueueOffsetsResponse {
                        min_offset,
                        max_offset,
                    },
                )))
            }
            other => Err(ErrorResponse::new(
                ErrorCode::Internal,
                format!("{} is not a queue request", other.code().name()),
            )),
        }
    }

    /// Waits until an append to `q` or `timeout`, whichever is first.
    async fn park(&self, q: QueueNum, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        self.parked.borrow_mut().entry(q).or_default().push(tx);
        bump(&self.stats.parked, 1);
        let timer = glommio::timer::sleep(timeout);
        futures::pin_mut!(timer);
        let _ = futures::future::select(rx, timer).await;
        drop_by(&self.stats.parked, 1);
        // Drop senders of fetches that timed out, so the list stays bounded.
        if let Some(list) = self.parked.borrow_mut().get_mut(&q) {
            list.retain(|tx| !tx.is_canceled());
        }
    }

    fn wake_parked(&self, q: QueueNum) {
        let waiters = self.parked.borrow_mut().remove(&q);
        for tx in waiters.into_iter().flatten() {
            let _ = tx.send(());
        }
    }

    /// Answers every parked fetch now (shutdown).
    pub(crate) fn wake_all_parked(&self) {
        let all: Vec<_> = self.parked.borrow_mut().drain().collect();
        for (_, list) in all {
            for tx in list {
                let _ = tx.send(());
            }
        }
    }

    async fn create_local_queues(&self, topic: &TopicName, queues: &[QueueId]) -> Reply {
        let list: Vec<_> = queues.iter().map(|q| (topic.clone(), *q)).collect();
        match self.store.create_queues(&list).await {
            Ok(_) => Reply::ok(Response::DeleteTopic(Ack {})),
            Err(e) => store_error(e).into(),
        }
    }

    /// Makes sure every queue the table places on this shard exists (a
    /// crash between creating queues and saving the table, or the reverse).
    pub(crate) async fn ensure_queues(&self) -> Result<(), StoreError> {
        let mine: Vec<(TopicName, QueueId)> = self
            .topics
            .borrow()
            .topics
            .iter()
            .flat_map(|(name, t)| {
                let topic = TopicName::new(name.clone()).ok();
                t.shards
                    .iter()
                    .enumerate()
                    .filter(|(_, &s)| s as usize == self.id)
                    .filter_map(move |(q, _)| topic.clone().map(|t| (t, QueueId(q as u32))))
            })
            .collect();
        if !mine.is_empty() {
            self.store.create_queues(&mine).await?;
        }
        Ok(())
    }

    fn topics_changed(&self) {
        for w in self.meta_watchers.borrow().iter() {
            // A full channel already holds a wake-up.
            let _ = w.try_send(());
        }
    }

    /// Sends `call` (built per peer) to every other shard and waits for all.
    async fn broadcast(&self, make: impl Fn() -> Call) -> Result<(), ErrorResponse> {
        let calls: Vec<_> = (0..self.n)
            .filter(|&p| p != self.id)
            .map(|p| self.mesh.call(p, make()))
            .collect();
        for reply in futures::future::join_all(calls).await {
            reply.result?;
        }
        Ok(())
    }

    async fn create_topic(
        self: &Rc<Self>,
        topic: TopicName,
        queue_count: u32,
        perm: Perm,
    ) -> Reply {
        // Dead-letter topics are created by consumers on first use; the
        // other reserved prefixes stay the broker's.
        if topic.kind() != TopicKind::DeadLetter {
            if let Err(e) = TopicName::user(topic.as_str()) {
                return Reply::err(ErrorCode::InvalidName, e.to_string());
            }
        }
        if !(1..=MAX_QUEUES_PER_TOPIC).contains(&queue_count) {
            return Reply::err(
                ErrorCode::InvalidArgument,
                format!("queue count {queue_count}: must be 1 to {MAX_QUEUES_PER_TOPIC}"),
            );
        }
        let _admin = self.admin.lock().await;
        if let Some(t) = self.topics.borrow().get(&topic) {
            return if t.queue_count == queue_count && t.perm == perm.bits() {
                Reply::ok(Response::CreateTopic(t.describe(&topic)))
            } else {
                Reply::err(
                    ErrorCode::TopicExists,
                    format!("topic {topic} exists with {} queues", t.queue_count),
                )
            };
        }
        let shards = meta::place(&topic, queue_count, self.n);
        let meta = TopicMeta {
            queue_count,
            perm: perm.bits(),
            shards: shards.clone(),
        };
        // Queues first, on their shards: once the table names them they exist.
        for owner in 0..self.n {
            let queues: Vec<QueueId> = shards
                .iter()
                .enumerate()
                .filter(|(_, &s)| s as usize == owner)
                .map(|(q, _)| QueueId(q as u32))
                .collect();
            if queues.is_empty() {
                continue;
            }
            let reply = if owner == self.id {
                self.create_local_queues(&topic, &queues).await
            } else {
                self.mesh
                    .call(
                        owner,
                        Call::CreateQueues {
                            topic: topic.clone(),
                            queues,
                        },
                    )
                    .await
            };
            if let Err(e) = reply.result {
                return e.into();
            }
        }
        let version = {
            let mut t = self.topics.borrow_mut();
            t.version += 1;
            t.topics.insert(topic.as_str().to_owned(), meta.clone());
            t.version
        };
        let saved = self.topics.borrow().save(&self.cfg.data_dir);
        if let Err(e) = saved {
            self.topics.borrow_mut().topics.remove(topic.as_str());
            tracing::error!(error = %e, "cannot save the topic table");
            return Reply::err(ErrorCode::StorageIo, e.to_string());
        }
        if let Err(e) = self
            .broadcast(|| Call::Topic {
                topic: topic.clone(),
                meta: Some(meta.clone()),
                version,
            })
            .await
        {
            return e.into();
        }
        self.topics_changed();
        tracing::info!(%topic, queue_count, "topic created");
        Reply::ok(Response::CreateTopic(meta.describe(&topic)))
    }

    async fn delete_topic(self: &Rc<Self>, topic: TopicName) -> Reply {
        let _admin = self.admin.lock().await;
        let Some(meta) = self.topics.borrow().get(&topic).cloned() else {
            return Reply::err(ErrorCode::TopicNotFound, format!("no topic {topic}"));
        };
        let version = {
            let mut t = self.topics.borrow_mut();
            t.version += 1;
            t.topics.remove(topic.as_str());
            t.version
        };
        // Unroutable everywhere first, then the queues go, then the table.
        if let Err(e) = self
            .broadcast(|| Call::Topic {
                topic: topic.clone(),
                meta: None,
                version,
            })
            .await
        {
            return e.into();
        }
        let mut owners: Vec<usize> = meta.shards.iter().map(|&s| s as usize).collect();
        owners.sort_unstable();
        owners.dedup();
        for owner in owners {
            let result = if owner == self.id {
                self.store
                    .delete_queues(&topic)
                    .await
                    .map(|_| ())
                    .map_err(store_error)
            } else {
                self.mesh
                    .call(
                        owner,
                        Call::DeleteQueues {
                            topic: topic.clone(),
                        },
                    )
                    .await
                    .result
                    .map(|_| ())
            };
            if let Err(e) = result {
                return e.into();
            }
        }
        if let Err(e) = self.topics.borrow().save(&self.cfg.data_dir) {
            tracing::error!(error = %e, "cannot save the topic table");
            return Reply::err(ErrorCode::StorageIo, e.to_string());
        }
        self.topics_changed();
        tracing::info!(%topic, "topic deleted");
        Reply::ok(Response::DeleteTopic(Ack {}))
    }
}
