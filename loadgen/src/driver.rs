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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

/// A name part unlikely to repeat: the time in ms and the process id.
pub(crate) fn unique() -> String {
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
///
/// A producer wakes at most once per `pace_us`: when messages fall due
/// faster than that, those due by a wake-up leave together (each still
/// timed from its own intended time, so the wait counts as latency).
/// Waking per message would send one-message requests at any rate over
/// 10k msg/s, and each request costs the broker far more than a message.
pub(crate) struct Pacer {
    start_us: u64,
    interval_ns: u64,
    window: u64,
    pace_us: u64,
    last_wake_us: Cell<u64>,
    /// The last clock reading: a message due by then is due now, with no
    /// clock read of its own (one per wake-up instead of one per message).
    seen_now_us: Cell<u64>,
    /// Made at the first sleep: a producer at full speed never sleeps,
    /// and needs no timerfd.
    timer: std::cell::OnceCell<crate::hrtimer::Timer>,
}

impl Pacer {
    pub(crate) fn new(rec: &RefCell<Recorder>, rate: u64, w: &Workload) -> Self {
        Self {
            start_us: rec.borrow().now_us(),
            interval_ns: 1_000_000_000u64.checked_div(rate).unwrap_or(0),
            window: w.window as u64,
            pace_us: w.pace_us,
            last_wake_us: Cell::new(0),
            seen_now_us: Cell::new(0),
            timer: std::cell::OnceCell::new(),
        }
    }

    /// Waits until message `seq` is due; returns its intended send time (µs).
    pub(crate) async fn due(&self, seq: u64, rec: &RefCell<Recorder>, ctl: &Producing) -> u64 {
        if self.interval_ns > 0 {
            let at = self.start_us + seq * self.interval_ns / 1000;
            if at <= self.seen_now_us.get() {
                return at;
            }
            let (now, epoch) = {
                let r = rec.borrow();
                (r.now_us(), r.epoch)
            };
            self.seen_now_us.set(now);
            if at > now {
                let wake = at.max(self.last_wake_us.get() + self.pace_us);
                self.timer
                    .get_or_init(crate::hrtimer::Timer::new)
                    .sleep_until(epoch + Duration::from_micros(wake))
                    .await;
                self.last_wake_us.set(wake);
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
    let pacer = Pacer::new(&rec, rate, &w);
    let mut payloads = crate::stats::PayloadArena::default();
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
        let mut msg = Message::new(stamp.payload_in(w.size, &mut payloads));
        match keys {
            Keys::None => {}
            Keys::Random => msg = msg.with_key(format!("{:016x}", next_rand(&rnd))),
            Keys::Set(n) => msg = msg.with_key(format!("key-{}", next_rand(&rnd) % u64::from(n))),
        }
        let topic = &topics[(seq % topics.len() as u64) as usize];
        rec.borrow_mut().sent += 1;
        ctl.in_flight.set(ctl.in_flight.get() + 1);
        let rec2 = rec.clone();
        let ctl2 = ctl.clone();
        let acks2 = acks.clone();
        let size = w.size;
        // The callback runs when the batch completes: no task per message.
        let on_done =
            move |outcome: Result<ringmq_client::SendResult, ringmq_client::ClientError>| {
                match outcome {
                    Ok(sent) => {
                        rec2.borrow_mut().on_ack_at(stamp, size, sent.acked_at);
                        if let Some(log) = acks2 {
                            let _ = writeln!(log.borrow_mut(), "{id} {seq}");
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "send failed");
                        rec2.borrow_mut().failed += 1;
                    }
                }
                ctl2.landed();
            };
        if let Err(e) = producer.send_with_callback(topic, msg, on_done).await {
            tracing::warn!(error = %e, "send refused");
            rec.borrow_mut().failed += 1;
            ctl.landed();
            monoio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
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
                        selector: match (w.key_mode(), w.spread.as_str()) {
                            (Ok(Keys::None), "round-robin") => QueueSelector::RoundRobin,
                            (Ok(Keys::None), _) => QueueSelector::Sticky,
                            _ => QueueSelector::KeyHash,
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

    // Consumers, on their own thread.
    let epoch = rec.borrow().epoch;
    let consumers = if w.groups > 0 {
        Some(ConsumerThread::start(&w, &target.namesrv, &tag, &topics, opts.verify, epoch).await?)
    } else {
        None
    };
    let group_names: Vec<String> = (0..w.groups)
        .map(|g| format!("loadgen-{tag}-g{g}"))
        .collect();
    let backlog_start = w.backlog.map(|_| Instant::now());
    if backlog_start.is_some() {
        rec.borrow_mut().start_drain();
    }

    // Producers on schedule.
    let ctl = Rc::new(Producing::new(w.messages));
    let set_measuring = |on: bool| {
        rec.borrow_mut().measuring = on;
        if let Some(c) = &consumers {
            c.recorder().measuring = on;
        }
    };
    if w.messages.is_some() {
        // Counted runs measure from the first message.
        set_measuring(true);
    }
    let mut tasks = Vec::new();
    for (i, p) in producers.iter().enumerate() {
        tasks.push(monoio::spawn(produce(
            i as u32,
            p.clone(),
            topics.clone(),
            rec.clone(),
            ctl.clone(),
            // The rate split evenly, the remainder to the first producers.
            w.rate / u64::from(w.producers)
                + u64::from((i as u64) < w.rate % u64::from(w.producers)),
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
            let mut c = consumers.as_ref().map(|c| c.recorder());
            let s = r.tick_with(second, last, c.as_deref_mut(), u64::from(w.groups));
            last = (r.acked, c.map_or(0, |c| c.received));
            s
        };
        if opts.progress {
            progress_line(&s, on_tty);
        }
        if let (Some(b), None) = (backlog_start, drain_secs) {
            // Drained: less than a tenth of a second of production behind.
            if s.backlog < (w.rate.max(1000) / 10) * u64::from(w.groups.max(1)) {
                drain_secs = Some(b.elapsed().as_secs_f64());
                rec.borrow_mut().end_drain();
                eprintln!(
                    "{}backlog drained in {:.1} s",
                    if on_tty { "\n" } else { "" },
                    b.elapsed().as_secs_f64()
                );
            }
        }
        if w.messages.is_none() {
            if measure_started.is_none() && started.elapsed() >= Duration::from_secs(w.warmup) {
                set_measuring(true);
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
    set_measuring(false);
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
    if let Some(c) = &consumers {
        let want = rec.borrow().acked * u64::from(w.groups);
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.recorder().received < want && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if opts.progress && on_tty {
        eprintln!();
    }
    let received = match consumers {
        Some(c) => Some(c.stop().await?),
        None => None,
    };
    if let Some(a) = &acks {
        let _ = a.borrow_mut().flush();
    }
    drop(producers);
    // Tasks that have not noticed the shutdown may still hold the recorder.
    let mut recorder = std::mem::replace(&mut *rec.borrow_mut(), Recorder::new(false));
    if let Some(r) = received {
        recorder.absorb(r);
    }
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

/// The push consumers of a run on a thread of their own with its own
/// monoio runtime: receiving (and checking) every message then never
/// delays the producers' acknowledgements or their schedule. They record
/// into their own recorder, merged with the producers' at each tick and
/// at the end.
struct ConsumerThread {
    rec: Arc<Mutex<Recorder>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl ConsumerThread {
    /// Starts every group's consumers; returns once all have started.
    async fn start(
        w: &Workload,
        namesrv: &[String],
        tag: &str,
        topics: &[TopicName],
        verify: bool,
        epoch: Instant,
    ) -> Result<Self, String> {
        let rec = Arc::new(Mutex::new(Recorder::with_epoch(verify, epoch)));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (w2, namesrv, tag, topics) =
            (w.clone(), namesrv.to_vec(), tag.to_owned(), topics.to_vec());
        let (rec2, stop2) = (rec.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("loadgen-consume".into())
            .spawn(move || -> Result<(), String> {
                let mut rt =
                    ringmq_client::runtime().map_err(|e| format!("monoio runtime: {e}"))?;
                rt.block_on(async move {
                    let consumers =
                        match start_consumers(&w2, &namesrv, &tag, &topics, verify, &rec2).await {
                            Ok(c) => {
                                let _ = ready_tx.send(Ok(()));
                                c
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.clone()));
                                return Err(e);
                            }
                        };
                    while !stop2.load(Ordering::Relaxed) {
                        monoio::time::sleep(Duration::from_millis(10)).await;
                    }
                    for c in &consumers {
                        c.shutdown().await;
                    }
                    Ok(())
                })
            })
            .map_err(|e| format!("consumer thread: {e}"))?;
        let mut me = Self {
            rec,
            stop,
            handle: Some(handle),
        };
        loop {
            match ready_rx.try_recv() {
                Ok(Ok(())) => return Ok(me),
                Ok(Err(e)) => {
                    let _ = me.join();
                    return Err(e);
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    monoio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    return Err(me
                        .join()
                        .err()
                        .unwrap_or_else(|| "consumer thread ended".into()));
                }
            }
        }
    }

    /// The consumers' recorder (locked).
    fn recorder(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the consumers (committing their offsets); returns what they
    /// recorded.
    async fn stop(mut self) -> Result<Recorder, String> {
        self.stop.store(true, Ordering::Relaxed);
        while self.handle.as_ref().is_some_and(|h| !h.is_finished()) {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        self.join()?;
        let out = std::mem::replace(&mut *self.recorder(), Recorder::new(false));
        Ok(out)
    }

    fn join(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("the consumer thread panicked".into()),
            None => Ok(()),
        }
    }
}

impl Drop for ConsumerThread {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

impl std::fmt::Debug for ConsumerThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerThread").finish_non_exhaustive()
    }
}

/// Every group's push consumers, recording into `rec`.
async fn start_consumers(
    w: &Workload,
    namesrv: &[String],
    tag: &str,
    topics: &[TopicName],
    verify: bool,
    rec: &Arc<Mutex<Recorder>>,
) -> Result<Vec<PushConsumer>, String> {
    let mut consumers = Vec::new();
    for g in 0..w.groups {
        let group = format!("loadgen-{tag}-g{g}");
        for c in 0..w.consumers {
            let mut ccfg = ClientConfig::new(namesrv.to_vec());
            ccfg.client_id = format!("loadgen-{tag}-g{g}-c{c}");
            let cclient = Client::new(ccfg).map_err(|e| e.to_string())?;
            let mut pcfg =
                PushConfig::new(GroupName::new(group.clone()).map_err(|e| e.to_string())?);
            pcfg.start = StartFrom::First;
            pcfg.order = ConsumeOrder::Concurrent(64);
            pcfg.rebalance_interval = Duration::from_secs(1);
            pcfg.max_cached_messages = 100_000;
            let consumer = PushConsumer::new(&cclient, pcfg).map_err(|e| e.to_string())?;
            for t in topics {
                consumer.subscribe(t, "*").map_err(|e| e.to_string())?;
            }
            let rec2 = rec.clone();
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
                        rec2.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .on_receive(&q, s);
                    }
                    ConsumeResult::Success
                })
                .await
                .map_err(|e| e.to_string())?;
            consumers.push(consumer);
        }
    }
    Ok(consumers)
}
