//! The producer: records for the same queue coalesce into one batch
//! (sent when it reaches `batch_bytes` or `linger` after its first record),
//! queues are chosen by round robin, key hash (ordered) or a user selector,
//! and a retriable failure is retried on another queue, or for key-ordered
//! sends on the same queue.

use crate::client::{Client, QueueRef};
use crate::error::ClientError;
use ahash::AHashMap;
use bytes::Bytes;
use futures::channel::oneshot;
use ringmq_core::messages::SendBatchRequest;
use ringmq_core::{BatchBuilder, RecordInput, TopicName};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Lookup key (and, with [`QueueSelector::KeyHash`], the ordering key).
    pub key: Bytes,
    /// Tag for consumers' tag expressions.
    pub tag: String,
    /// User properties.
    pub properties: Vec<(String, String)>,
    /// The payload.
    pub body: Bytes,
}

impl Message {
    /// A message with just a body.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// With a key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = key.into();
        self
    }

    /// With a tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = tag.into();
        self
    }

    /// At least the bytes this message takes in a batch: its fields plus
    /// the most their length and header varints can take.
    fn size(&self) -> usize {
        self.key.len()
            + self.tag.len()
            + self.body.len()
            + self
                .properties
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2 * MAX_LEN_VARINT)
                .sum::<usize>()
            + RECORD_OVERHEAD_MAX
    }
}

/// Most bytes a length varint takes for a record that fits a batch.
const MAX_LEN_VARINT: usize = 5;

/// Most bytes a record adds beyond its key, tag, body and properties:
/// length, flags, time delta (up to 10), retry count, key and tag lengths
/// and the property count.
const RECORD_OVERHEAD_MAX: usize = MAX_LEN_VARINT + 1 + 10 + 1 + 3 * MAX_LEN_VARINT;

/// Most record bytes one batch holds: a batch is closed before a message
/// would take it past what the builder (and the broker) accept.
const BATCH_CONTENT_MAX: usize =
    ringmq_core::batch::DEFAULT_MAX_BATCH_BYTES - ringmq_core::batch::BATCH_HEADER_BYTES;

/// Where a message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// The queue.
    pub queue: QueueRef,
    /// The record's offset in it.
    pub offset: u64,
    /// When the client read the broker's acknowledgement (one clock read
    /// per batch: every message of a batch has the same).
    pub acked_at: Instant,
}

/// A user queue selector: the queues (sorted) and the message to an index.
pub type SelectFn = Rc<dyn Fn(&[QueueRef], &Message) -> usize>;

/// How a queue is picked for a message.
#[derive(Clone, Default)]
pub enum QueueSelector {
    /// The next queue each time (the default).
    #[default]
    RoundRobin,
    /// One queue until its open batch is sent, then the next (Kafka's
    /// sticky partitioner): messages arriving a few at a time still form
    /// one batch per send instead of one per queue, so at low and medium
    /// rates requests carry more and the broker does less per message.
    /// The load still spreads over every queue, batch by batch.
    Sticky,
    /// Hash of the message key: a key always maps to the same queue, so its
    /// messages stay in order. Retries go to the same queue, and one batch
    /// per queue is on the wire at a time, so a batch that has to retry is
    /// never overtaken by the next.
    KeyHash,
    /// A function of the queues (sorted) and the message, returning an index.
    Custom(SelectFn),
}

impl std::fmt::Debug for QueueSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueSelector::RoundRobin => f.write_str("RoundRobin"),
            QueueSelector::Sticky => f.write_str("Sticky"),
            QueueSelector::KeyHash => f.write_str("KeyHash"),
            QueueSelector::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch waits for more records after its first.
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes.
    pub batch_bytes: usize,
    /// Queue choice.
    pub selector: QueueSelector,
    /// Unsent bytes (all queues) before `send` waits.
    pub max_buffered_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            batch_bytes: 256 * 1024,
            selector: QueueSelector::RoundRobin,
            max_buffered_bytes: 64 << 20,
        }
    }
}

/// Who learns a message's outcome.
enum Done {
    /// [`Producer::send`] and [`Producer::send_async`]: a waiting future.
    Channel(oneshot::Sender<Result<SendResult, ClientError>>),
    /// [`Producer::send_with_callback`]: called when the batch completes,
    /// on the producer's thread, with no task or channel per message.
    Callback(Box<dyn FnOnce(Result<SendResult, ClientError>)>),
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Done::Channel(_) => "Channel",
            Done::Callback(_) => "Callback",
        })
    }
}

impl Done {
    fn complete(self, outcome: Result<SendResult, ClientError>) {
        match self {
            Done::Channel(tx) => {
                let _ = tx.send(outcome);
            }
            Done::Callback(f) => f(outcome),
        }
    }
}

#[derive(Debug, Default)]
struct Open {
    messages: Vec<(Message, Option<Done>)>,
    bytes: usize,
    /// Bumped per batch, so a linger timer flushes only its own batch.
    epoch: u64,
    /// Key-ordered sends ([`QueueSelector::KeyHash`]): batches of this
    /// queue take numbered turns, and only the batch whose turn it is is
    /// on the wire (retries included), so a later batch can never be
    /// stored before an earlier one that had to retry.
    next_turn: u64,
    serving: u64,
    turn_waiters: Vec<std::task::Waker>,
}

/// How one topic's keyless messages spread over its queues.
#[derive(Debug, Default)]
struct Spread {
    /// The next queue index (per topic, so that topics used in turn each
    /// still reach all their queues).
    next: usize,
    /// [`QueueSelector::Sticky`]: the queue being filled now.
    sticky: Option<QueueRef>,
}

impl Spread {
    /// The next index into `qs` (non-empty), stepping over `avoid`.
    fn next_index(&mut self, qs: &[QueueRef], avoid: Option<&QueueRef>) -> usize {
        let mut i = self.next;
        self.next = i.wrapping_add(1);
        if avoid.is_some_and(|a| qs[i % qs.len()] == *a) && qs.len() > 1 {
            i += 1;
        }
        i
    }

    /// The queue being filled now, unless it is the one to avoid (a
    /// queue that left the route fails its send, which retries with it as
    /// `avoid`).
    fn sticky_unless(&self, avoid: Option<&QueueRef>) -> Option<QueueRef> {
        self.sticky.clone().filter(|q| avoid != Some(q))
    }
}

#[derive(Debug)]
struct Inner {
    client: Client,
    cfg: ProducerConfig,
    // Looked up for every message: aHash, not the default SipHash (which
    // was 8 % of loadgen's CPU at 564k msg/s). Keys are our own names.
    open: RefCell<AHashMap<QueueRef, Open>>,
    /// Per topic, for [`QueueSelector::RoundRobin`] and [`QueueSelector::Sticky`].
    spread: RefCell<AHashMap<TopicName, Spread>>,
    /// Buffered bytes not yet acknowledged, one permit per KiB.
    room: crate::conn::LocalSemaphore,
}

/// A producer; clones share batches.
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Rc<Inner>,
}

/// Buffer permits (KiB) a message of `size` bytes holds.
fn permits_for(size: usize) -> usize {
    size.div_ceil(1024)
}

fn key_hash(key: &[u8]) -> usize {
    crc32c::crc32c(key) as usize
}

impl Producer {
    /// A producer using `client`.
    pub fn new(client: &Client, cfg: ProducerConfig) -> Self {
        let permits = permits_for(cfg.max_buffered_bytes).max(1);
        Self {
            inner: Rc::new(Inner {
                client: client.clone(),
                cfg,
                open: RefCell::new(AHashMap::new()),
                spread: RefCell::new(AHashMap::new()),
                room: crate::conn::LocalSemaphore::new(permits),
            }),
        }
    }

    async fn pick(
        &self,
        topic: &TopicName,
        msg: &Message,
        avoid: Option<&QueueRef>,
    ) -> Result<QueueRef, ClientError> {
        if matches!(self.inner.cfg.selector, QueueSelector::Sticky) {
            // The queue of the batch being filled: its route was current
            // when the batch opened (a batch leaves within a pass of the
            // event loop or a linger), so no route lookup and clock read
            // per message.
            if let Some(q) = self.with_spread(topic, |s| s.sticky_unless(avoid)) {
                return Ok(q);
            }
        }
        let qs = self.inner.client.queues(topic, true).await?;
        if qs.is_empty() {
            return Err(ClientError::NoRoute(format!(
                "{topic} has no writable queue"
            )));
        }
        let i = match &self.inner.cfg.selector {
            QueueSelector::RoundRobin => self.with_spread(topic, |s| s.next_index(&qs, avoid)),
            QueueSelector::Sticky => {
                return Ok(self.with_spread(topic, |s| {
                    // Another send may have picked one while this one
                    // waited for the route: join its batch.
                    s.sticky_unless(avoid).unwrap_or_else(|| {
                        let q = qs[s.next_index(&qs, avoid) % qs.len()].clone();
                        s.sticky = Some(q.clone());
                        q
                    })
                }));
            }
            QueueSelector::KeyHash => key_hash(&msg.key),
            QueueSelector::Custom(f) => f(&qs, msg),
        };
        Ok(qs[i % qs.len()].clone())
    }

    /// Runs `f` on `topic`'s spread state (created on first use).
    fn with_spread<R>(&self, topic: &TopicName, f: impl FnOnce(&mut Spread) -> R) -> R {
        let mut spread = self.inner.spread.borrow_mut();
        match spread.get_mut(topic) {
            Some(s) => f(s),
            None => f(spread.entry(topic.clone()).or_default()),
        }
    }

    /// Sends one message; resolves once it is stored (durable per the
    /// broker's flush mode) with its queue and offset.
    pub async fn send(&self, topic: &TopicName, msg: Message) -> Result<SendResult, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(topic, msg, Some(Done::Channel(tx))).await?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Queues a message and returns at once; the future resolves like
    /// [`Producer::send`]'s.
    pub async fn send_async(
        &self,
        topic: &TopicName,
        msg: Message,
    ) -> Result<impl std::future::Future<Output = Result<SendResult, ClientError>>, ClientError>
    {
        let (tx, rx) = oneshot::channel();
        self.enqueue(topic, msg, Some(Done::Channel(tx))).await?;
        Ok(async move { rx.await.unwrap_or(Err(ClientError::Closed)) })
    }

    /// Queues a message and calls `callback` with the outcome once its
    /// batch completes (on this thread; it should not block). The cheapest
    /// way to learn outcomes: no task or channel per message.
    pub async fn send_with_callback(
        &self,
        topic: &TopicName,
        msg: Message,
        callback: impl FnOnce(Result<SendResult, ClientError>) + 'static,
    ) -> Result<(), ClientError> {
        self.enqueue(topic, msg, Some(Done::Callback(Box::new(callback))))
            .await
    }

    /// Queues a message; nobody learns the outcome (failures are logged).
    pub async fn send_oneway(&self, topic: &TopicName, msg: Message) -> Result<(), ClientError> {
        self.enqueue(topic, msg, None).await
    }

    async fn enqueue(
        &self,
        topic: &TopicName,
        msg: Message,
        done: Option<Done>,
    ) -> Result<(), ClientError> {
        let size = msg.size();
        if size > self.inner.cfg.max_buffered_bytes || size > BATCH_CONTENT_MAX {
            return Err(ClientError::Invalid(format!(
                "message of about {size} bytes is over the limit ({} bytes)",
                self.inner.cfg.max_buffered_bytes.min(BATCH_CONTENT_MAX)
            )));
        }
        self.inner.room.acquire_many(permits_for(size)).await;
        let q = match self.pick(topic, &msg, None).await {
            Ok(q) => q,
            Err(e) => {
                self.release(size);
                return Err(e);
            }
        };
        // A message that would take the open batch over what one batch
        // may hold starts the next one.
        let overflows = self
            .inner
            .open
            .borrow()
            .get(&q)
            .is_some_and(|o| !o.messages.is_empty() && o.bytes + size > BATCH_CONTENT_MAX);
        if overflows {
            self.flush_queue(&q);
        }
        let (full, first, epoch) = {
            let mut open = self.inner.open.borrow_mut();
            let o = open.entry(q.clone()).or_default();
            o.messages.push((msg, done));
            o.bytes += size;
            (
                o.bytes >= self.inner.cfg.batch_bytes,
                o.messages.len() == 1,
                o.epoch,
            )
        };
        if full {
            self.flush_queue(&q);
        } else if first {
            let me = self.clone();
            let linger = self.inner.cfg.linger;
            monoio::spawn(async move {
                if linger.is_zero() {
                    // What this pass of the event loop queued goes together.
                    crate::yield_now().await;
                } else {
                    monoio::time::sleep(linger).await;
                }
                let same = me
                    .inner
                    .open
                    .borrow()
                    .get(&q)
                    .is_some_and(|o| o.epoch == epoch);
                if same {
                    me.flush_queue(&q);
                }
            });
        }
        Ok(())
    }

    /// Gives back what [`Producer::enqueue`] took for one message of `size`.
    fn release(&self, size: usize) {
        self.inner.room.release_many(permits_for(size));
    }

    /// Sends every open batch now.
    pub fn flush(&self) {
        let qs: Vec<QueueRef> = self.inner.open.borrow().keys().cloned().collect();
        for q in qs {
            self.flush_queue(&q);
        }
    }

    fn flush_queue(&self, q: &QueueRef) {
        let (batch, turn) = {
            let mut open = self.inner.open.borrow_mut();
            let Some(o) = open.get_mut(q) else { return };
            if o.messages.is_empty() {
                return;
            }
            o.epoch += 1;
            o.bytes = 0;
            o.next_turn += 1;
            (std::mem::take(&mut o.messages), o.next_turn - 1)
        };
        if matches!(self.inner.cfg.selector, QueueSelector::Sticky) {
            // The sticky queue's batch is leaving: the next message moves on.
            if let Some(s) = self.inner.spread.borrow_mut().get_mut(&q.topic) {
                if s.sticky.as_ref() == Some(q) {
                    s.sticky = None;
                }
            }
        }
        let me = self.clone();
        let q = q.clone();
        monoio::spawn(async move { me.send_batch(q, batch, turn).await });
    }

    /// Waits until batch `turn` of `q` may go on the wire.
    async fn wait_turn(&self, q: &QueueRef, turn: u64) {
        futures::future::poll_fn(|cx| {
            let mut open = self.inner.open.borrow_mut();
            match open.get_mut(q) {
                Some(o) if o.serving < turn => {
                    o.turn_waiters.push(cx.waker().clone());
                    std::task::Poll::Pending
                }
                _ => std::task::Poll::Ready(()),
            }
        })
        .await;
    }

    /// Batch `turn` of `q` is done: the next may go.
    fn end_turn(&self, q: &QueueRef) {
        let waiters = {
            let mut open = self.inner.open.borrow_mut();
            let Some(o) = open.get_mut(q) else { return };
            o.serving += 1;
            std::mem::take(&mut o.turn_waiters)
        };
        for w in waiters {
            w.wake();
        }
    }

    fn build(q: &QueueRef, messages: &[(Message, Option<Done>)]) -> Result<Bytes, ClientError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut b = BatchBuilder::new(q.queue_id);
        for (m, _) in messages {
            let props: Vec<(&[u8], &[u8])> = m
                .properties
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                .collect();
            b.push(&RecordInput {
                timestamp_ms: now,
                key: &m.key,
                tag: m.tag.as_bytes(),
                properties: &props,
                body: &m.body,
                ..Default::default()
            })
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        }
        b.finish().map_err(|e| ClientError::Invalid(e.to_string()))
    }

    async fn send_batch(self, mut q: QueueRef, messages: Vec<(Message, Option<Done>)>, turn: u64) {
        let sizes: Vec<usize> = messages.iter().map(|(m, _)| m.size()).collect();
        let ordered = matches!(self.inner.cfg.selector, QueueSelector::KeyHash);
        let first_queue = q.clone();
        if ordered {
            self.wait_turn(&q, turn).await;
        }
        let mut attempt = 0;
        let result = loop {
            let body = match Self::build(&q, &messages) {
                Ok(b) => b,
                Err(e) => break Err(e),
            };
            let req = SendBatchRequest {
                topic: q.topic.clone(),
                queue_id: q.queue_id,
            };
            match self.inner.client.queue_call(&q, req, body).await {
                Ok((r, _)) => break Ok(r.base_offset),
                Err(e) if e.is_retriable() && attempt < self.inner.client.config().retries => {
                    attempt += 1;
                    tracing::debug!(queue = q.queue_id.0, error = %e, attempt, "send failed; retrying");
                    monoio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    if !ordered {
                        // Another queue (the route was refreshed if stale).
                        if let Ok(next) = self.pick(&q.topic, &messages[0].0, Some(&q)).await {
                            q = next;
                        }
                    }
                }
                Err(e) => break Err(e),
            }
        };
        // Every batch takes a turn number; only ordered sends wait for
        // theirs, and every batch ends its own so later ones never stall.
        self.end_turn(&first_queue);
        for size in sizes {
            self.release(size);
        }
        let acked_at = Instant::now();
        for (i, (_, done)) in messages.into_iter().enumerate() {
            let outcome = result.clone().map(|base| SendResult {
                queue: q.clone(),
                offset: base + i as u64,
                acked_at,
            });
            match done {
                Some(done) => done.complete(outcome),
                None => {
                    if let Err(e) = outcome {
                        tracing::warn!(error = %e, "oneway send failed");
                    }
                }
            }
        }
    }
}
