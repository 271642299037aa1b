//! Consumers: a pull consumer (fetch from an offset with long-polling,
//! commit offsets) and a push consumer (subscriptions with tag
//! expressions, a listener, concurrent or orderly consumption, flow control
//! per queue, automatic offset commits that never pass a message that has
//! not succeeded, and consumer groups that divide queues among members).

use crate::client::{Client, QueueRef};
use crate::error::ClientError;
use bytes::Bytes;
use ringmq_core::messages::{FetchRequest, GroupHeartbeatRequest};
use ringmq_core::route::{ConsumeMode, Subscription};
use ringmq_core::{Batches, GroupName, TopicName};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

/// A consumed message.
#[derive(Debug, Clone)]
pub struct MessageView {
    /// Its queue.
    pub queue: QueueRef,
    /// Its offset.
    pub offset: u64,
    /// Born time (ms since the epoch).
    pub timestamp_ms: i64,
    /// Times redelivered to this consumer.
    pub reconsume_times: u32,
    /// Key.
    pub key: Bytes,
    /// Tag.
    pub tag: String,
    /// User properties (still encoded; see [`MessageView::property`]).
    pub properties: ringmq_core::batch::Properties,
    /// Payload.
    pub body: Bytes,
}

/// What fetching returned.
#[derive(Debug, Clone)]
pub struct PullResult {
    /// Messages at or after the offset asked for.
    pub messages: Vec<MessageView>,
    /// Where to fetch next.
    pub next_offset: u64,
    /// Earliest stored offset.
    pub min_offset: u64,
    /// The offset the next record will get.
    pub max_offset: u64,
}

impl MessageView {
    /// The value of user property `name`, if set (the first, if repeated).
    pub fn property(&self, name: &str) -> Option<String> {
        self.properties
            .iter()
            .find(|(k, _)| &k[..] == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
    }
}

fn decode(q: &QueueRef, from: u64, body: Bytes) -> Result<Vec<MessageView>, ClientError> {
    let mut out = Vec::new();
    for batch in Batches::new(body) {
        let batch = batch.map_err(|e| ClientError::Protocol(format!("damaged batch: {e}")))?;
        for r in batch.records() {
            let r = r.map_err(|e| ClientError::Protocol(format!("damaged record: {e}")))?;
            if r.offset < from {
                continue;
            }
            out.push(MessageView {
                queue: q.clone(),
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                reconsume_times: r.reconsume_times,
                key: r.key,
                tag: String::from_utf8_lossy(&r.tag).into_owned(),
                properties: r.properties,
                body: r.body,
            });
        }
    }
    Ok(out)
}

/// A pull consumer: the application picks queues and offsets.
#[derive(Debug, Clone)]
pub struct PullConsumer {
    client: Client,
    group: GroupName,
}

impl PullConsumer {
    /// A pull consumer of `group`.
    pub fn new(client: &Client, group: GroupName) -> Self {
        Self {
            client: client.clone(),
            group,
        }
    }

    /// The readable queues of a topic (to assign).
    pub async fn queues(&self, topic: &TopicName) -> Result<Vec<QueueRef>, ClientError> {
        self.client
            .queues(topic, false)
            .await
            .map(|q| q.as_ref().clone())
    }

    /// Fetches from `offset`, waiting up to `max_wait` at the end of the queue.
    pub async fn pull(
        &self,
        q: &QueueRef,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<PullResult, ClientError> {
        let req = FetchRequest {
            topic: q.topic.clone(),
            queue_id: q.queue_id,
            offset,
            max_bytes,
            max_wait_ms: max_wait.as_millis().min(u32::MAX as u128) as u32,
        };
        let (r, body) = self.client.queue_call(q, req, Bytes::new()).await?;
        Ok(PullResult {
            messages: decode(q, offset, body)?,
            next_offset: r.next_offset,
            min_offset: r.min_offset,
            max_offset: r.max_offset,
        })
    }

    /// Commits `offset` (the next one to consume) for the group.
    pub async fn commit(&self, q: &QueueRef, offset: u64) -> Result<(), ClientError> {
        self.client.commit_offset(&self.group, q, offset).await
    }

    /// The group's committed offset.
    pub async fn committed(&self, q: &QueueRef) -> Result<Option<u64>, ClientError> {
        self.client.committed_offset(&self.group, q).await
    }
}

/// A tag expression: `*` or `a || b || c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    /// Every message.
    All,
    /// Messages whose tag is one of these.
    Tags(BTreeSet<String>),
}

impl TagFilter {
    /// Parses an expression.
    pub fn parse(expr: &str) -> Result<Self, ClientError> {
        let expr = expr.trim();
        if expr.is_empty() || expr == "*" {
            return Ok(TagFilter::All);
        }
        let tags: BTreeSet<String> = expr.split("||").map(|t| t.trim().to_owned()).collect();
        if tags
            .iter()
            .any(|t| t.is_empty() || t.contains(char::is_whitespace))
        {
            return Err(ClientError::Invalid(format!(
                "tag expression {expr:?}: use * or a || b"
            )));
        }
        Ok(TagFilter::Tags(tags))
    }

    /// Whether a message with `tag` passes.
    pub fn matches(&self, tag: &str) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(t) => t.contains(tag),
        }
    }
}

/// What the listener says about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeResult {
    /// Done: the offset may move past it.
    Success,
    /// Deliver it again later (its offset is not committed meanwhile).
    RetryLater,
}

/// How messages reach the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeOrder {
    /// Queues are consumed side by side, and a message the listener wants
    /// again is retried on its own while its queue goes on (up to this many
    /// retries of a queue at once; the commit point stays below them).
    Concurrent(usize),
    /// One message of a queue at a time, strictly in order; a retry blocks
    /// the queue until it succeeds.
    Orderly,
}

/// Where a group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The earliest stored message.
    First,
    /// Only messages stored from now on.
    Last,
    /// Messages born at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// How a clustering group divides queues among members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Contiguous, even shares in member order.
    Average,
    /// Each queue to the member nearest on a hash ring (fewer moves when
    /// members come and go).
    ConsistentHash,
}

/// Push consumer settings.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The group.
    pub group: GroupName,
    /// Clustering (queues divided) or broadcasting (everyone gets everything).
    pub mode: ConsumeMode,
    /// Concurrent or orderly.
    pub order: ConsumeOrder,
    /// Start point for a group new to a queue.
    pub start: StartFrom,
    /// Queue division.
    pub allocation: Allocation,
    /// How often membership is announced and queues rebalanced.
    pub rebalance_interval: Duration,
    /// Fetched but unconsumed messages per queue before fetching pauses.
    pub max_cached_messages: usize,
    /// And bytes.
    pub max_cached_bytes: usize,
    /// Wait before a message is delivered again; it doubles with each
    /// redelivery, up to `max_retry_delay`.
    pub retry_delay: Duration,
    /// The longest wait between redeliveries.
    pub max_retry_delay: Duration,
    /// Redeliveries of a message the listener keeps asking to see again.
    /// After the last, the message is stored in the group's dead-letter
    /// topic (`%DLQ%<group>`, created on first use) and its offset may be
    /// committed, so one bad message cannot hold a queue's commits back
    /// for ever. 0: redeliver for ever.
    pub max_reconsume_times: u32,
    /// Broadcasting: the folder where this member keeps its offsets.
    pub offsets_dir: Option<PathBuf>,
    /// Bytes per fetch.
    pub fetch_bytes: u32,
}

impl PushConfig {
    /// Defaults for `group`.
    pub fn new(group: GroupName) -> Self {
        Self {
            group,
            mode: ConsumeMode::Clustering,
            order: ConsumeOrder::Concurrent(16),
            start: StartFrom::First,
            allocation: Allocation::Average,
            rebalance_interval: Duration::from_secs(5),
            max_cached_messages: 1000,
            max_cached_bytes: 64 << 20,
            retry_delay: Duration::from_millis(200),
            max_retry_delay: Duration::from_secs(60),
            max_reconsume_times: 16,
            offsets_dir: None,
            fetch_bytes: 1 << 20,
        }
    }
}

/// Divides `queues` among `members`: which queues `me` gets.
pub fn allocate(
    strategy: Allocation,
    queues: &[QueueRef],
    members: &[String],
    me: &str,
) -> Vec<QueueRef> {
    let mut members: Vec<&String> = members.iter().collect();
    members.sort();
    members.dedup();
    let Some(idx) = members.iter().position(|m| *m == me) else {
        return Vec::new();
    };
    let mut queues = queues.to_vec();
    queues.sort();
    match strategy {
        Allocation::Average => {
            let (n, m) = (queues.len(), members.len());
            let base = n / m;
            let extra = n % m;
            let start = idx * base + idx.min(extra);
            let len = base + usize::from(idx < extra);
            queues.into_iter().skip(start).take(len).collect()
        }
        Allocation::ConsistentHash => {
            // 16 virtual nodes per member on a crc32c ring.
            let mut ring: BTreeMap<u32, usize> = BTreeMap::new();
            for (i, m) in members.iter().enumerate() {
                for v in 0..16 {
                    ring.insert(crc32c::crc32c(format!("{m}#{v}").as_bytes()), i);
                }
            }
            queues
                .into_iter()
                .filter(|q| {
                    let h = crc32c::crc32c(
                        format!("{}|{}|{}", q.topic, q.broker, q.queue_id.0).as_bytes(),
                    );
                    let owner = ring
                        .range(h..)
                        .next()
                        .or_else(|| ring.iter().next())
                        .map(|(_, &o)| o);
                    owner == Some(idx)
                })
                .collect()
        }
    }
}

type Listener = Rc<dyn Fn(&MessageView) -> ConsumeResult>;

/// One assigned queue's consumption state.
#[derive(Debug)]
struct QueueState {
    stop: Cell<bool>,
    /// Offsets delivered but not yet succeeded.
    in_flight: RefCell<BTreeSet<u64>>,
    /// Next offset to fetch.
    next_fetch: Cell<u64>,
    cached_messages: Cell<usize>,
    cached_bytes: Cell<usize>,
    committed: Cell<Option<u64>>,
    /// [`StartFrom::Timestamp`] with no committed offset: messages born
    /// before this are passed over until the first one at or after it.
    /// A queue resumed from a commit never skips.
    skip_before_ms: Cell<Option<i64>>,
}

impl QueueState {
    /// The offset that can be committed: below every unfinished message.
    fn commit_point(&self) -> u64 {
        self.in_flight
            .borrow()
            .iter()
            .next()
            .copied()
            .unwrap_or(self.next_fetch.get())
    }
}

struct PushInner {
    client: Client,
    cfg: PushConfig,
    subs: RefCell<BTreeMap<TopicName, TagFilter>>,
    listener: RefCell<Option<Listener>>,
    queues: RefCell<HashMap<QueueRef, Rc<QueueState>>>,
    stopped: Cell<bool>,
    /// Broadcasting: offsets kept by this member.
    local_offsets: RefCell<BTreeMap<String, u64>>,
    /// Sends to the dead-letter topic (made on first use).
    dead_letters: RefCell<Option<crate::producer::Producer>>,
}

/// A push consumer.
#[derive(Clone)]
pub struct PushConsumer {
    inner: Rc<PushInner>,
}

impl std::fmt::Debug for PushConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConsumer")
            .field("group", &self.inner.cfg.group)
            .field("queues", &self.inner.queues.borrow().len())
            .finish()
    }
}

fn local_key(q: &QueueRef) -> String {
    format!("{}|{}|{}", q.topic, q.broker, q.queue_id.0)
}

impl PushConsumer {
    /// A consumer; [`PushConsumer::subscribe`], then [`PushConsumer::start`].
    pub fn new(client: &Client, cfg: PushConfig) -> Result<Self, ClientError> {
        if cfg.mode == ConsumeMode::Broadcasting && cfg.offsets_dir.is_none() {
            return Err(ClientError::Invalid(
                "broadcasting keeps offsets locally: set offsets_dir".into(),
            ));
        }
        if let ConsumeOrder::Concurrent(0) = cfg.order {
            return Err(ClientError::Invalid(
                "concurrency must be at least 1".into(),
            ));
        }
        let local = match &cfg.offsets_dir {
            Some(dir) if cfg.mode == ConsumeMode::Broadcasting => {
                let path = dir.join(format!("{}.offsets.json", cfg.group));
                match std::fs::read(&path) {
                    Ok(b) => serde_json::from_slice(&b)
                        .map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))?,
                    Err(_) => BTreeMap::new(),
                }
            }
            _ => BTreeMap::new(),
        };
        Ok(Self {
            inner: Rc::new(PushInner {
                client: client.clone(),
                cfg,
                subs: RefCell::new(BTreeMap::new()),
                listener: RefCell::new(None),
                queues: RefCell::new(HashMap::new()),
                stopped: Cell::new(false),
                local_offsets: RefCell::new(local),
                dead_letters: RefCell::new(None),
            }),
        })
    }

    /// Subscribes to `topic` with a tag expression (`*` or `a || b`).
    pub fn subscribe(&self, topic: &TopicName, expr: &str) -> Result<(), ClientError> {
        let filter = TagFilter::parse(expr)?;
        self.inner.subs.borrow_mut().insert(topic.clone(), filter);
        Ok(())
    }

    /// Starts consuming with `listener`; rebalances every interval.
    pub async fn start(
        &self,
        listener: impl Fn(&MessageView) -> ConsumeResult + 'static,
    ) -> Result<(), ClientError> {
        if self.inner.subs.borrow().is_empty() {
            return Err(ClientError::Invalid("subscribe to a topic first".into()));
        }
        *self.inner.listener.borrow_mut() = Some(Rc::new(listener));
        self.rebalance().await?;
        let me = self.clone();
        monoio::spawn(async move {
            while !me.inner.stopped.get() {
                monoio::time::sleep(me.inner.cfg.rebalance_interval).await;
                if me.inner.stopped.get() {
                    break;
                }
                if let Err(e) = me.rebalance().await {
                    tracing::warn!(error = %e, "rebalance failed; keeping the current queues");
                }
                me.commit_all().await;
            }
        });
        Ok(())
    }

    /// The queues this member consumes now.
    pub fn assigned(&self) -> Vec<QueueRef> {
        let mut v: Vec<QueueRef> = self.inner.queues.borrow().keys().cloned().collect();
        v.sort();
        v
    }

    async fn subscriptions(&self) -> Vec<Subscription> {
        self.inner
            .subs
            .borrow()
            .iter()
            .map(|(t, f)| Subscription {
                topic: t.clone(),
                expression: match f {
                    TagFilter::All => "*".into(),
                    TagFilter::Tags(t) => t.iter().cloned().collect::<Vec<_>>().join(" || "),
                },
            })
            .collect()
    }

    /// Announces membership to every broker of every subscribed topic and
    /// recomputes this member's queues.
    pub async fn rebalance(&self) -> Result<(), ClientError> {
        let subs = self.subscriptions().await;
        let topics: Vec<TopicName> = self.inner.subs.borrow().keys().cloned().collect();
        let mut want = Vec::new();
        for topic in &topics {
            let queues = self.inner.client.queues(topic, false).await?;
            let members = match self.inner.cfg.mode {
                ConsumeMode::Broadcasting => vec![self.inner.client.config().client_id.clone()],
                ConsumeMode::Clustering => self.heartbeat(topic, subs.clone()).await?,
            };
            want.extend(allocate(
                self.inner.cfg.allocation,
                &queues,
                &members,
                &self.inner.client.config().client_id,
            ));
        }
        let current: Vec<QueueRef> = self.assigned();
        for q in current.iter().filter(|q| !want.contains(q)) {
            let removed = self.inner.queues.borrow_mut().remove(q);
            if let Some(st) = removed {
                st.stop.set(true);
                self.commit_queue(q, &st).await;
                tracing::info!(queue = q.queue_id.0, broker = %q.broker, "queue handed over");
            }
        }
        for q in want.into_iter().filter(|q| !current.contains(q)) {
            self.start_queue(q).await?;
        }
        Ok(())
    }

    async fn heartbeat(
        &self,
        topic: &TopicName,
        subs: Vec<Subscription>,
    ) -> Result<Vec<String>, ClientError> {
        let mut members = BTreeSet::new();
        for (_, addr) in self.inner.client.brokers_of(topic).await? {
            let req = GroupHeartbeatRequest {
                group: self.inner.cfg.group.clone(),
                client_id: self.inner.client.config().client_id.clone(),
                mode: self.inner.cfg.mode,
                subscriptions: subs.clone(),
            };
            let (resp, _) = self
                .inner
                .client
                .call_at(addr, req.into(), Bytes::new())
                .await?;
            if let ringmq_core::Response::GroupHeartbeat(r) = resp {
                members.extend(r.members);
            }
        }
        Ok(members.into_iter().collect())
    }

    /// Where consumption of `q` starts: the group's committed offset, or
    /// (with none) per [`StartFrom`]; and whether it came from a commit.
    async fn start_offset(&self, q: &QueueRef) -> Result<(u64, bool), ClientError> {
        let committed = match self.inner.cfg.mode {
            ConsumeMode::Broadcasting => self
                .inner
                .local_offsets
                .borrow()
                .get(&local_key(q))
                .copied(),
            ConsumeMode::Clustering => {
                self.inner
                    .client
                    .committed_offset(&self.inner.cfg.group, q)
                    .await?
            }
        };
        if let Some(o) = committed {
            return Ok((o, true));
        }
        let (min, max) = self.inner.client.queue_offsets(q).await?;
        let from = match self.inner.cfg.start {
            StartFrom::First | StartFrom::Timestamp(_) => min,
            StartFrom::Last => max,
        };
        Ok((from, false))
    }

    async fn start_queue(&self, q: QueueRef) -> Result<(), ClientError> {
        let (from, from_commit) = self.start_offset(&q).await?;
        let skip_before_ms = match self.inner.cfg.start {
            StartFrom::Timestamp(ts) if !from_commit => Some(ts),
            _ => None,
        };
        let st = Rc::new(QueueState {
            stop: Cell::new(false),
            in_flight: RefCell::new(BTreeSet::new()),
            next_fetch: Cell::new(from),
            cached_messages: Cell::new(0),
            cached_bytes: Cell::new(0),
            committed: Cell::new(None),
            skip_before_ms: Cell::new(skip_before_ms),
        });
        self.inner.queues.borrow_mut().insert(q.clone(), st.clone());
        tracing::info!(queue = q.queue_id.0, broker = %q.broker, from, "consuming queue");
        let me = self.clone();
        monoio::spawn(async move { me.pull_loop(q, st).await });
        Ok(())
    }

    async fn pull_loop(self, q: QueueRef, st: Rc<QueueState>) {
        let pull = PullConsumer::new(&self.inner.client, self.inner.cfg.group.clone());
        let filter = self
            .inner
            .subs
            .borrow()
            .get(&q.topic)
            .cloned()
            .unwrap_or(TagFilter::All);
        let concurrency = match self.inner.cfg.order {
            ConsumeOrder::Concurrent(n) => n,
            ConsumeOrder::Orderly => 1,
        };
        let slots = Rc::new(crate::conn::LocalSemaphore::new(concurrency));
        while !st.stop.get() && !self.inner.stopped.get() {
            // Flow control: wait while too much is fetched but unconsumed.
            if st.cached_messages.get() >= self.inner.cfg.max_cached_messages
                || st.cached_bytes.get() >= self.inner.cfg.max_cached_bytes
            {
                monoio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let offset = st.next_fetch.get();
            let result = pull
                .pull(
                    &q,
                    offset,
                    self.inner.cfg.fetch_bytes,
                    Duration::from_millis(500),
                )
                .await;
            let r = match result {
                Ok(r) => r,
                Err(e) => {
                    if e.code() == Some(ringmq_core::ErrorCode::OffsetOutOfRange) {
                        if let Ok((min, _)) = self.inner.client.queue_offsets(&q).await {
                            tracing::warn!(
                                queue = q.queue_id.0,
                                from = offset,
                                to = min,
                                "offset below the earliest stored; skipping ahead"
                            );
                            st.next_fetch.set(min);
                        }
                    } else {
                        tracing::debug!(queue = q.queue_id.0, error = %e, "fetch failed; retrying");
                        monoio::time::sleep(Duration::from_millis(200)).await;
                    }
                    continue;
                }
            };
            if r.next_offset < offset {
                st.next_fetch.set(r.min_offset.max(offset));
                continue;
            }
            for m in r.messages {
                if st.stop.get() {
                    break;
                }
                let too_old = match st.skip_before_ms.get() {
                    Some(ts) if m.timestamp_ms < ts => true,
                    Some(_) => {
                        st.skip_before_ms.set(None);
                        false
                    }
                    None => false,
                };
                let skip = too_old || !filter.matches(&m.tag);
                st.next_fetch.set(m.offset + 1);
                if skip {
                    continue;
                }
                // The listener is synchronous: call it here. Only a message
                // it wants again later is kept (in flight, below the
                // commit point) and retried in its own task, up to
                // `concurrency` at once; in orderly mode the queue waits.
                let Some(listener) = self.inner.listener.borrow().clone() else {
                    break;
                };
                if listener(&m) == ConsumeResult::Success {
                    continue;
                }
                st.in_flight.borrow_mut().insert(m.offset);
                st.cached_messages.set(st.cached_messages.get() + 1);
                st.cached_bytes.set(st.cached_bytes.get() + m.body.len());
                slots.acquire().await;
                let me = self.clone();
                let st2 = st.clone();
                let slots2 = slots.clone();
                let task = async move {
                    me.retry(m, &st2).await;
                    slots2.release();
                };
                if concurrency == 1 {
                    task.await;
                } else {
                    monoio::spawn(task);
                }
            }
            st.next_fetch.set(st.next_fetch.get().max(r.next_offset));
        }
    }

    /// Delivers a message the listener asked to see again, after a delay
    /// that doubles each time, until it succeeds or (after
    /// `max_reconsume_times` redeliveries) is stored in the dead-letter
    /// topic; then its offset may be committed.
    async fn retry(&self, mut m: MessageView, st: &QueueState) {
        let Some(listener) = self.inner.listener.borrow().clone() else {
            return;
        };
        let cfg = &self.inner.cfg;
        let mut delay = cfg.retry_delay;
        loop {
            if cfg.max_reconsume_times > 0 && m.reconsume_times >= cfg.max_reconsume_times {
                if !self.dead_letter(&m, st).await {
                    return; // stopped first: not committed; redelivered elsewhere
                }
                break;
            }
            m.reconsume_times += 1;
            monoio::time::sleep(delay).await;
            delay = delay
                .saturating_mul(2)
                .min(cfg.max_retry_delay.max(cfg.retry_delay));
            if self.inner.stopped.get() || st.stop.get() {
                return; // not succeeded: not committed; redelivered elsewhere
            }
            if listener(&m) == ConsumeResult::Success {
                break;
            }
        }
        st.in_flight.borrow_mut().remove(&m.offset);
        st.cached_messages
            .set(st.cached_messages.get().saturating_sub(1));
        st.cached_bytes
            .set(st.cached_bytes.get().saturating_sub(m.body.len()));
    }

    /// Stores `m` in the group's dead-letter topic, creating the topic on
    /// the message's broker when it has no route yet; tries until it is
    /// stored (true) or the consumer or queue stops (false). The copy keeps
    /// key, tag and body, and says where it came from in its properties.
    async fn dead_letter(&self, m: &MessageView, st: &QueueState) -> bool {
        let dlq = TopicName::dead_letter(&self.inner.cfg.group);
        let producer = self
            .inner
            .dead_letters
            .borrow_mut()
            .get_or_insert_with(|| {
                crate::producer::Producer::new(&self.inner.client, Default::default())
            })
            .clone();
        let mut copy = crate::producer::Message::new(m.body.clone())
            .with_key(m.key.clone())
            .with_tag(m.tag.clone());
        copy.properties = m
            .properties
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        copy.properties.extend([
            ("ORIGIN_TOPIC".into(), m.queue.topic.to_string()),
            ("ORIGIN_QUEUE".into(), m.queue.queue_id.0.to_string()),
            ("ORIGIN_OFFSET".into(), m.offset.to_string()),
            ("RECONSUME_TIMES".into(), m.reconsume_times.to_string()),
        ]);
        let wait = self.inner.cfg.retry_delay.max(Duration::from_millis(100));
        loop {
            if self.inner.stopped.get() || st.stop.get() {
                return false;
            }
            match producer.send(&dlq, copy.clone()).await {
                Ok(r) => {
                    tracing::warn!(
                        topic = %m.queue.topic, queue = m.queue.queue_id.0, offset = m.offset,
                        redeliveries = m.reconsume_times, dead_letter_offset = r.offset,
                        "message moved to {dlq} after its last redelivery"
                    );
                    return true;
                }
                Err(ClientError::NoRoute(_)) => {
                    if let Err(e) = self.create_dead_letter_topic(&dlq, &m.queue).await {
                        tracing::warn!(error = %e, "cannot create {dlq}; trying again");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot store in {dlq}; trying again"),
            }
            monoio::time::sleep(wait).await;
        }
    }

    /// Creates the dead-letter topic (one queue) on the broker that holds
    /// `origin`; one that exists already is fine.
    async fn create_dead_letter_topic(
        &self,
        dlq: &TopicName,
        origin: &QueueRef,
    ) -> Result<(), ClientError> {
        let brokers = self.inner.client.brokers_of(&origin.topic).await?;
        let addr = brokers
            .iter()
            .find(|(name, _)| **name == *origin.broker)
            .or(brokers.first())
            .map(|(_, a)| *a)
            .ok_or_else(|| ClientError::NoRoute(origin.topic.to_string()))?;
        let req = ringmq_core::messages::CreateTopicRequest {
            topic: dlq.clone(),
            queue_count: 1,
            perm: ringmq_core::route::Perm::READ_WRITE,
        };
        match self
            .inner
            .client
            .call_at(addr, req.into(), Bytes::new())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(ringmq_core::ErrorCode::TopicExists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn commit_queue(&self, q: &QueueRef, st: &QueueState) {
        let point = st.commit_point();
        if st.committed.get() == Some(point) {
            return;
        }
        match self.inner.cfg.mode {
            ConsumeMode::Broadcasting => {
                self.inner
                    .local_offsets
                    .borrow_mut()
                    .insert(local_key(q), point);
                st.committed.set(Some(point));
            }
            ConsumeMode::Clustering => {
                match self
                    .inner
                    .client
                    .commit_offset(&self.inner.cfg.group, q, point)
                    .await
                {
                    Ok(()) => st.committed.set(Some(point)),
                    Err(e) => {
                        tracing::warn!(queue = q.queue_id.0, error = %e, "offset commit failed")
                    }
                }
            }
        }
    }

    /// Commits every queue's offset now (it also happens every interval).
    pub async fn commit_all(&self) {
        let qs: Vec<(QueueRef, Rc<QueueState>)> = self
            .inner
            .queues
            .borrow()
            .iter()
            .map(|(q, s)| (q.clone(), s.clone()))
            .collect();
        for (q, st) in qs {
            self.commit_queue(&q, &st).await;
        }
        self.save_local_offsets();
    }

    fn save_local_offsets(&self) {
        let (Some(dir), ConsumeMode::Broadcasting) =
            (&self.inner.cfg.offsets_dir, self.inner.cfg.mode)
        else {
            return;
        };
        let path = dir.join(format!("{}.offsets.json", self.inner.cfg.group));
        let tmp = path.with_extension("tmp");
        let bytes = match serde_json::to_vec(&*self.inner.local_offsets.borrow()) {
            Ok(b) => b,
            Err(e) => return tracing::warn!(error = %e, "cannot encode offsets"),
        };
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot save local offsets");
        }
    }

    /// Stops: waits briefly for messages being consumed, commits what
    /// succeeded, and (clustering) tells the brokers this member leaves, so
    /// the others take its queues at their next rebalance.
    pub async fn shutdown(&self) {
        self.inner.stopped.set(true);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline
            && self
                .inner
                .queues
                .borrow()
                .values()
                .any(|s| !s.in_flight.borrow().is_empty())
        {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        self.commit_all().await;
        for st in self.inner.queues.borrow().values() {
            st.stop.set(true);
        }
        if self.inner.cfg.mode == ConsumeMode::Clustering {
            let topics: Vec<TopicName> = self.inner.subs.borrow().keys().cloned().collect();
            for t in topics {
                let _ = self.heartbeat(&t, Vec::new()).await;
            }
        }
        self.inner.queues.borrow_mut().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_core::QueueId;

    fn qs(n: u32) -> Vec<QueueRef> {
        (0..n)
            .map(|i| QueueRef {
                topic: TopicName::new("t").unwrap(),
                broker: "b".into(),
                queue_id: QueueId(i),
            })
            .collect()
    }

    #[test]
    fn every_queue_goes_to_exactly_one_member() {
        let members: Vec<String> = ["m1", "m2", "m3"].iter().map(|s| s.to_string()).collect();
        for strategy in [Allocation::Average, Allocation::ConsistentHash] {
            for n in [1u32, 7, 8, 64] {
                let queues = qs(n);
                let mut seen = Vec::new();
                for m in &members {
                    seen.extend(allocate(strategy, &queues, &members, m));
                }
                seen.sort();
                assert_eq!(seen, queues, "{strategy:?} with {n} queues");
            }
        }
        let avg: Vec<usize> = members
            .iter()
            .map(|m| allocate(Allocation::Average, &qs(8), &members, m).len())
            .collect();
        assert_eq!(avg, vec![3, 3, 2]);
        assert!(allocate(Allocation::Average, &qs(8), &members, "stranger").is_empty());
    }

    #[test]
    fn tag_expressions() {
        assert_eq!(TagFilter::parse("*").unwrap(), TagFilter::All);
        let f = TagFilter::parse("a || b").unwrap();
        assert!(f.matches("a") && f.matches("b") && !f.matches("c"));
        assert!(TagFilter::parse("a || ").is_err());
    }
}
