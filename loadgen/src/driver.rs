//! Runs a workload against ringmq with the native client, on one monoio
//! thread: open-loop producers on a schedule (latency counts from the
//! intended send time, so a stalled broker cannot hide its stall), push
//! consumers per group, a progress line every second.

use crate::stats::{Recorder, Second, Stamp};
use crate::workload::{Keys, Workload};
use bytes::Bytes;
use ringmq_client::{
    Client, ClientConfig, ConsumeOrder, ConsumeResult, Message, Producer, ProducerConfig,
    PushConfig, PushConsumer, QueueSelector, StartFrom,
};
use ringmq_core::messages::{ClusterInfoRequest, CreateTopicRequest};
use ringmq_core::route::Perm;
use ringmq_core::{GroupName, TopicName};
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How to reach the broker under test and measure its CPU.
pub struct Target {
    pub namesrv: Vec<String>,
    /// Broker CPU seconds so far (user + system), if measurable.
    pub broker_cpu: Box<dyn Fn() -> Option<f64>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("namesrv", &self.namesrv)
            .finish()
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct RunOutput {
    pub recorder: Recorder,
    pub measured_secs: f64,
    pub broker_cpu_secs: Option<f64>,
    pub backlog_fill_secs: Option<f64>,
    pub drain_secs: Option<f64>,
    pub topics: Vec<String>,
    pub groups: Vec<String>,
    pub lost: Option<u64>,
}

/// Options beyond the workload.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub verify: bool,
    pub ack_log: Option<PathBuf>,
    /// Print the progress line (on stderr).
    pub progress: bool,
}

fn unique() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{:x}{:x}", t, std::process::id())
}

async fn create_topics(client: &Client, w: &Workload, names: &[TopicName]) -> Result<(), String> {
    let brokers = client
        .namesrv_call(ClusterInfoRequest {})
        .await
        .map_err(|e| format!("name server: {e}"))?
        .brokers;
    let masters: Vec<_> = brokers
        .iter()
        .filter(|b| b.route.broker_id.0 == 0)
        .collect();
    if masters.is_empty() {
        return Err("no broker is registered with the name server".into());
    }
    for t in names {
        for b in &masters {
            let addr = b
                .route
                .front_addr
                .parse()
                .map_err(|e| format!("broker address {}: {e}", b.route.front_addr))?;
            let req = CreateTopicRequest {
                topic: t.clone(),
                queue_count: w.queues,
                perm: Perm::READ_WRITE,
            };
            client
                .call_at(addr, req.into(), Bytes::new())
                .await
                .map_err(|e| format!("create topic {t}: {e}"))?;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while client.refresh_route(t).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!("topic {t} never appeared in the routes"));
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Shared by a run's producers: stop, a message budget, messages in flight.
pub(crate) struct Producing {
    pub(crate) stop: Cell<bool>,
    /// Messages to send before stopping, if counted.
    remaining: Cell<Option<u64>>,
    pub(crate) in_flight: Cell<u64>,
    /// Producers waiting for room in their window.
    waiting: RefCell<Vec<std::task::Waker>>,
}

impl Producing {
    pub(crate) fn new(remaining: Option<u64>) -> Self {
        Self {
            stop: Cell::new(false),
            remaining: Cell::new(remaining),
            in_flight: Cell::new(0),
            waiting: RefCell::new(Vec::new()),
        }
    }

    /// One message left flight: wake producers waiting for room.
    pub(crate) fn landed(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        for w in self.waiting.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Waits until fewer than `window` messages are in flight.
    async fn room(&self, window: u64) {
        futures::future::poll_fn(|cx| {
            if self.in_flight.get() < window {
                std::task::Poll::Ready(())
            } else {
                self.waiting.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// When each message of one producer is due: on a schedule at `rate`
/// msg/s (latency then counts from the intended time, so a stall cannot
/// hide), or with rate 0 as soon as fewer than `window` are in flight.
pub(crate) struct Pacer {
    start_us: u64,
    interval_ns: u64,
    window: u64,
}

impl Pacer {
    pub(crate) fn new(rec: &RefCell<Recorder>, rate: u64, window: usize) -> Self {
        Self {
            start_us: rec.borrow().now_us(),
            interval_ns: 1_000_000_000u64.checked_div(rate).unwrap_or(0),
            window: window as u64,
        }
    }

    /// Waits until message `seq` is due; returns its intended send time (µs).
    pub(crate) async fn due(&self, seq: u64, rec: &RefCell<Recorder>, ctl: &Producing) -> u64 {
        if self.interval_ns > 0 {
            let at = self.start_us + seq * self.interval_ns / 1000;
            let now = rec.borrow().now_us();
            if at > now {
                monoio::time::sleep(Duration::from_micros(at - now)).await;
            }
            at
        } else {
            ctl.room(self.window).await;
            rec.borrow().now_us()
        }
    }

    /// After message `seq` went out: at full speed, lets acknowledgements
    /// and consumers run every 256 sends.
    pub(crate) async fn sent(&self, seq: u64) {
        if self.interval_ns == 0 && (seq + 1).is_multiple_of(256) {
            ringmq_client::yield_now().await;
        }
    }
}

/// A random u64 (xorshift) per call site.
fn next_rand(state: &Cell<u64>) -> u64 {
    let mut x = state.get();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    state.set(x);
    x
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    id: u32,
    producer: Producer,
    topics: Rc<Vec<TopicName>>,
    rec: Rc<RefCell<Recorder>>,
    ctl: Rc<Producing>,
    rate: u64,
    w: Workload,
    acks: Option<Rc<RefCell<std::io::BufWriter<std::fs::File>>>>,
) {
    let keys = w.key_mode().unwrap_or(Keys::None);
    let rnd = Cell::new(0x9e37_79b9_7f4a_7c15 ^ u64::from(id + 1).wrapping_mul(0x2545_f491));
    let pacer = Pacer::new(&rec, rate, w.window);
    let mut seq = 0u64;
    while !ctl.stop.get() {
        if let Some(left) = ctl.remaining.get() {
            if left == 0 {
                break;
            }
            ctl.remaining.set(Some(left - 1));
        }
        let intended_us = pacer.due(seq, &rec, &ctl).await;
        let stamp = Stamp {
            producer: id,
            seq,
            sent_us: intended_us,
        };
        let mut msg = Message::new(stamp.payload(w.size));
        match keys {
            Keys::None => {}
            Keys::Random => msg = msg.with_key(format!("{:016x}", next_rand(&rnd))),
            Keys::Set(n) => msg = msg.with_key(format!("key-{}", next_rand(&rnd) % u64::from(n))),
        }
        let topic = &topics[(seq % topics.len() as u64) as usize];
        rec.borrow_mut().sent += 1;
        ctl.in_flight.set(ctl.in_flight.get() + 1);
        let fut = match producer.send_async(topic, msg).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "send refused");
                rec.borrow_mut().failed += 1;
                ctl.landed();
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let rec2 = rec.clone();
        let ctl2 = ctl.clone();
        let acks = acks.clone();
        let size = w.size;
        monoio::spawn(async move {
            match fut.await {
                Ok(_) => {
                    rec2.borrow_mut().on_ack(stamp, size);
                    if let Some(log) = acks {
                        let _ = writeln!(log.borrow_mut(), "{id} {seq}");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "send failed");
                    rec2.borrow_mut().failed += 1;
                }
            }
            ctl2.landed();
        });
        pacer.sent(seq).await;
        seq += 1;
    }
}

fn progress_line(s: &Second, on_tty: bool) {
    let line = format!(
        "t={:>4}s  sent {:>9} msg/s  received {:>9} msg/s  backlog {:>9}  publish p50 {:>7} µs p99 {:>7} µs  e2e p99 {:>8} µs",
        s.t, s.sent, s.received, s.backlog, s.publish_p50_us, s.publish_p99_us, s.e2e_p99_us
    );
    if on_tty {
        eprint!("\r{line}");
    } else {
        eprintln!("{line}");
    }
}

/// Runs `w` against the target; blocks this thread.
pub fn run(w: &Workload, target: &Target, opts: &RunOptions) -> Result<RunOutput, String> {
    let mut rt = ringmq_client::runtime().map_err(|e| format!("monoio runtime: {e}"))?;
    rt.block_on(run_async(w.clone(), target, opts.clone()))
}

async fn run_async(w: Workload, target: &Target, opts: RunOptions) -> Result<RunOutput, String> {
    let tag = unique();
    let mut cfg = ClientConfig::new(target.namesrv.clone());
    cfg.client_id = format!("loadgen-{tag}");
    let client = Client::new(cfg).map_err(|e| e.to_string())?;
    let topics: Vec<TopicName> = (0..w.topics)
        .map(|i| TopicName::new(format!("loadgen-{tag}-{i}")).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    create_topics(&client, &w, &topics).await?;
    let topics = Rc::new(topics);
    let rec = Rc::new(RefCell::new(Recorder::new(opts.verify)));
    let acks = match &opts.ack_log {
        Some(path) => Some(Rc::new(RefCell::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
        )))),
        None => None,
    };
    let make_producers = || -> Vec<Producer> {
        (0..w.producers)
            .map(|_| {
                Producer::new(
                    &client,
                    ProducerConfig {
                        linger: Duration::from_micros(w.linger_us),
                        selector: if w.key_mode() == Ok(Keys::None) {
                            QueueSelector::RoundRobin
                        } else {
                            QueueSelector::KeyHash
                        },
                        ..Default::default()
                    },
                )
            })
            .collect()
    };
    let producers = make_producers();

    // Backlog phase: fill with nobody consuming.
    let mut backlog_fill_secs = None;
    if let Some(n) = w.backlog {
        eprintln!("backlog: storing {n} messages with no consumer");
        let started = Instant::now();
        let ctl = Rc::new(Producing::new(Some(n)));
        let mut tasks = Vec::new();
        for (i, p) in producers.iter().enumerate() {
            tasks.push(monoio::spawn(produce(
                1_000_000 + i as u32,
                p.clone(),
                topics.clone(),
                rec.clone(),
                ctl.clone(),
                0,
                w.clone(),
                None,
            )));
        }
        let mut last = Instant::now();
        while ctl.remaining.get() != Some(0) || ctl.in_flight.get() > 0 {
            monoio::time::sleep(Duration::from_millis(50)).await;
            if last.elapsed() >= Duration::from_secs(1) && opts.progress {
                last = Instant::now();
                let acked = rec.borrow().acked;
                eprintln!(
                    "backlog: {acked} of {n} stored ({:.0} msg/s)",
                    acked as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        for t in tasks {
            t.await;
        }
        backlog_fill_secs = Some(started.elapsed().as_secs_f64());
        // The stored messages stay counted as acknowledged: the backlog
        // (acknowledged - received) is what the consumers must drain.
        rec.borrow_mut().publish.reset();
    }

    // Consumers.
    let mut consumers = Vec::new();
    let mut group_names = Vec::new();
    for g in 0..w.groups {
        let group = format!("loadgen-{tag}-g{g}");
        group_names.push(group.clone());
        for c in 0..w.consumers {
            let mut ccfg = ClientConfig::new(target.namesrv.clone());
            ccfg.client_id = format!("loadgen-{tag}-g{g}-c{c}");
            let cclient = Client::new(ccfg).map_err(|e| e.to_string())?;
            let mut pcfg =
                PushConfig::new(GroupName::new(group.clone()).map_err(|e| e.to_string())?);
            pcfg.start = StartFrom::First;
            pcfg.order = ConsumeOrder::Concurrent(64);
            pcfg.rebalance_interval = Duration::from_secs(1);
            pcfg.max_cached_messages = 100_000;
            let consumer = PushConsumer::new(&cclient, pcfg).map_err(|e| e.to_string())?;
            for t in topics.iter() {
                consumer.subscribe(t, "*").map_err(|e| e.to_string())?;
            }
            let rec2 = rec.clone();
            let verify = opts.verify;
            consumer
                .start(move |m| {
                    if let Some(s) = Stamp::read(&m.body) {
                        // The queue's name only matters to --verify's order check.
                        let q = if verify {
                            format!(
                                "{}/{}/{}",
                                m.queue.topic, m.queue.broker, m.queue.queue_id.0
                            )
                        } else {
                            String::new()
                        };
                        rec2.borrow_mut().on_receive(&q, s);
                    }
                    ConsumeResult::Success
                })
                .await
                .map_err(|e| e.to_string())?;
            consumers.push(consumer);
        }
    }
    let backlog_start = w.backlog.map(|_| Instant::now());

    // Producers on schedule.
    let ctl = Rc::new(Producing::new(w.messages));
    if w.messages.is_some() {
        // Counted runs measure from the first message.
        rec.borrow_mut().measuring = true;
    }
    let per_producer = w.rate / u64::from(w.producers);
    let mut tasks = Vec::new();
    for (i, p) in producers.iter().enumerate() {
        tasks.push(monoio::spawn(produce(
            i as u32,
            p.clone(),
            topics.clone(),
            rec.clone(),
            ctl.clone(),
            per_producer,
            w.clone(),
            acks.clone(),
        )));
    }
    let on_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let started = Instant::now();
    let mut measure_started = None;
    let mut cpu_at_start = None;
    let mut drain_secs = None;
    let mut last = (0u64, 0u64);
    let mut second = 0u64;
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        second += 1;
        let s = {
            let mut r = rec.borrow_mut();
            let s = r.tick(second, last);
            last = (r.acked, r.received);
            s
        };
        if opts.progress {
            progress_line(&s, on_tty);
        }
        if let (Some(b), None) = (backlog_start, drain_secs) {
            // Drained: less than a tenth of a second of production behind.
            if s.backlog < (w.rate.max(1000) / 10) * u64::from(w.groups.max(1)) {
                drain_secs = Some(b.elapsed().as_secs_f64());
                eprintln!(
                    "{}backlog drained in {:.1} s",
                    if on_tty { "\n" } else { "" },
                    b.elapsed().as_secs_f64()
                );
            }
        }
        if w.messages.is_none() {
            if measure_started.is_none() && started.elapsed() >= Duration::from_secs(w.warmup) {
                rec.borrow_mut().measuring = true;
                measure_started = Some(Instant::now());
                cpu_at_start = (target.broker_cpu)();
            }
            if measure_started.is_some_and(|m| m.elapsed() >= Duration::from_secs(w.duration)) {
                break;
            }
        } else {
            if measure_started.is_none() {
                measure_started = Some(started);
                cpu_at_start = (target.broker_cpu)();
            }
            if ctl.remaining.get() == Some(0) {
                break;
            }
        }
    }
    let measured_secs = measure_started.map_or(0.0, |m| m.elapsed().as_secs_f64());
    let broker_cpu_secs = match (cpu_at_start, (target.broker_cpu)()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    rec.borrow_mut().measuring = false;
    ctl.stop.set(true);
    for t in tasks {
        t.await;
    }
    for p in &producers {
        p.flush();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctl.in_flight.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let consumers catch up with everything acknowledged.
    if w.groups > 0 {
        let want = {
            let r = rec.borrow();
            r.acked * u64::from(w.groups)
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while rec.borrow().received < want && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if opts.progress && on_tty {
        eprintln!();
    }
    for c in &consumers {
        c.shutdown().await;
    }
    if let Some(a) = &acks {
        let _ = a.borrow_mut().flush();
    }
    drop(consumers);
    drop(producers);
    // Tasks that have not noticed the shutdown may still hold the recorder.
    let recorder = std::mem::replace(&mut *rec.borrow_mut(), Recorder::new(false));
    let lost = recorder
        .verify
        .as_ref()
        .filter(|_| w.groups > 0)
        .map(|v| v.lost());
    Ok(RunOutput {
        recorder,
        measured_secs,
        broker_cpu_secs,
        backlog_fill_secs,
        drain_secs,
        topics: topics.iter().map(|t| t.to_string()).collect(),
        groups: group_names,
        lost,
    })
}
