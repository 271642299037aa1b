//! Peer drivers: the same workload against Redis Streams (XADD /
//! XREADGROUP, AOF) and NATS JetStream (file storage), through small
//! protocol clients written here on monoio (RESP and the NATS text
//! protocol), with the same schedule, histograms and report format.
//! [`Peer`] starts and stops the Debian-packaged servers as described in
//! `../shared/peers/README.md`.

use crate::driver::{Pacer, Producing, RunOutput};
use crate::stats::{Recorder, Stamp};
use crate::workload::Workload;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Which peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// Redis Streams, AOF `appendfsync everysec` (or `always` for sync).
    Redis,
    /// NATS JetStream, file storage.
    Nats,
}

impl PeerKind {
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Redis => "redis",
            PeerKind::Nats => "nats",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            PeerKind::Redis => "redis-server",
            PeerKind::Nats => "nats-server",
        }
    }
}

/// A peer server this process started; stopped when dropped.
#[derive(Debug)]
pub struct Peer {
    pub kind: PeerKind,
    pub addr: String,
    child: Child,
    pub dir: tempfile::TempDir,
    pub pid: u32,
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

impl Peer {
    /// Whether the peer's server is installed (and on PATH).
    pub fn installed(kind: PeerKind) -> bool {
        Command::new(kind.binary())
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the server on loopback with its own data folder.
    pub fn start(kind: PeerKind, flush: &str) -> Result<Self, String> {
        if !Self::installed(kind) {
            return Err(format!(
                "{} is not installed (apt-get install -y nats-server redis-server redis-tools)",
                kind.binary()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("ringmq-peer-{}-", kind.name()))
            .tempdir_in("/var/tmp")
            .map_err(|e| e.to_string())?;
        let port = free_port()?;
        let conf = dir.path().join(format!("{}.conf", kind.name()));
        let text = match kind {
            PeerKind::Redis => format!(
                "bind 127.0.0.1\nport {port}\ndir {}\nsave \"\"\nappendonly yes\nappendfsync {}\nauto-aof-rewrite-percentage 0\n",
                dir.path().display(),
                if flush == "sync" { "always" } else { "everysec" }
            ),
            PeerKind::Nats => format!(
                "listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{ store_dir: \"{}\", max_memory_store: 1GB, max_file_store: 20GB }}\n",
                dir.path().join("js").display()
            ),
        };
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(kind.binary());
        match kind {
            PeerKind::Redis => cmd.arg(&conf),
            PeerKind::Nats => cmd.arg("-c").arg(&conf),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", kind.binary()))?;
        let pid = child.id();
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline {
                return Err(format!("{} did not start listening", kind.binary()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            kind,
            addr,
            child,
            dir,
            pid,
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection that sends whole commands and reads raw bytes. Once it
/// closes (either way), sends are dropped and readers see the close; what
/// is queued to write is bounded by the callers' in-flight windows.
struct Wire {
    write: RefCell<Vec<u8>>,
    wake: futures::channel::mpsc::Sender<()>,
    read_buf: RefCell<Vec<u8>>,
    /// Bytes of `read_buf` already parsed; dropped once per socket read,
    /// not once per reply.
    read_at: Cell<usize>,
    read_wakers: RefCell<Vec<std::task::Waker>>,
    closed: Cell<bool>,
}

impl Wire {
    async fn connect(addr: &str) -> Result<Rc<Self>, String> {
        let sa: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let stream = TcpStream::connect_addr(sa)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut r, mut w) = stream.into_split();
        let (tx, mut rx) = futures::channel::mpsc::channel::<()>(1);
        let wire = Rc::new(Self {
            write: RefCell::new(Vec::new()),
            wake: tx,
            read_buf: RefCell::new(Vec::new()),
            read_at: Cell::new(0),
            read_wakers: RefCell::new(Vec::new()),
            closed: Cell::new(false),
        });
        let weak = Rc::downgrade(&wire);
        monoio::spawn(async move {
            use futures::StreamExt;
            while rx.next().await.is_some() {
                let Some(wr) = weak.upgrade() else { return };
                let out = std::mem::take(&mut *wr.write.borrow_mut());
                drop(wr);
                if out.is_empty() {
                    continue;
                }
                if w.write_all(out).await.0.is_err() {
                    if let Some(wr) = weak.upgrade() {
                        wr.close();
                    }
                    return;
                }
            }
        });
        let weak = Rc::downgrade(&wire);
        monoio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let (res, b) = r.read(buf).await;
                buf = b;
                let Some(wr) = weak.upgrade() else { return };
                match res {
                    Ok(n) if n > 0 => {
                        let mut rb = wr.read_buf.borrow_mut();
                        rb.drain(..wr.read_at.replace(0));
                        rb.extend_from_slice(&buf[..n]);
                    }
                    _ => {
                        wr.close();
                        return;
                    }
                }
                for waker in wr.read_wakers.borrow_mut().drain(..) {
                    waker.wake();
                }
            }
        });
        Ok(wire)
    }

    fn close(&self) {
        self.closed.set(true);
        self.write.borrow_mut().clear();
        for waker in self.read_wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    fn send(&self, bytes: &[u8]) {
        if self.closed.get() {
            return;
        }
        self.write.borrow_mut().extend_from_slice(bytes);
        let _ = self.wake.clone().try_send(());
    }

    /// Waits until `parse` finds a whole item in the unread bytes (it
    /// returns the item and the bytes it used).
    async fn next<T>(&self, parse: impl Fn(&[u8]) -> Option<(T, usize)>) -> Result<T, String> {
        futures::future::poll_fn(|cx| {
            let at = self.read_at.get();
            if let Some((v, used)) = parse(&self.read_buf.borrow()[at..]) {
                self.read_at.set(at + used);
                return std::task::Poll::Ready(Ok(v));
            }
            if self.closed.get() {
                return std::task::Poll::Ready(Err("connection closed".into()));
            }
            self.read_wakers.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }
}

// ---- RESP (Redis) --------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

fn resp_line(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let end = b.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
    Some((&b[at..end], end + 2))
}

fn resp_parse(b: &[u8], at: usize) -> Option<(Resp, usize)> {
    let kind = *b.get(at)?;
    let (line, next) = resp_line(b, at + 1)?;
    let text = std::str::from_utf8(line).ok()?;
    match kind {
        b'+' => Some((Resp::Simple(text.into()), next)),
        b'-' => Some((Resp::Error(text.into()), next)),
        b':' => Some((Resp::Int(text.parse().ok()?), next)),
        b'$' => {
            let n: i64 = text.parse().ok()?;
            if n < 0 {
                return Some((Resp::Bulk(None), next));
            }
            let end = next + n as usize;
            if b.len() < end + 2 {
                return None;
            }
            Some((Resp::Bulk(Some(b[next..end].to_vec())), end + 2))
        }
        b'*' => {
            let n: i64 = text.parse().ok()?;
            if n < 0 {
                return Some((Resp::Array(None), next));
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut at = next;
            for _ in 0..n {
                let (item, after) = resp_parse(b, at)?;
                items.push(item);
                at = after;
            }
            Some((Resp::Array(Some(items)), at))
        }
        _ => Some((Resp::Error(format!("unexpected byte {kind}")), b.len())),
    }
}

fn resp_take(buf: &[u8]) -> Option<(Resp, usize)> {
    resp_parse(buf, 0)
}

fn resp_cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A pipelined Redis connection: replies come back in command order.
struct Redis {
    wire: Rc<Wire>,
    waiting: RefCell<VecDeque<futures::channel::oneshot::Sender<Resp>>>,
}

impl Redis {
    async fn connect(addr: &str) -> Result<Rc<Self>, String> {
        let wire = Wire::connect(addr).await?;
        let r = Rc::new(Self {
            wire,
            waiting: RefCell::new(VecDeque::new()),
        });
        let weak = Rc::downgrade(&r);
        monoio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                let wire = me.wire.clone();
                drop(me);
                let Ok(reply) = wire.next(resp_take).await else {
                    // Callers still waiting see their reply dropped.
                    if let Some(me) = weak.upgrade() {
                        me.waiting.borrow_mut().clear();
                    }
                    return;
                };
                let Some(me) = weak.upgrade() else { return };
                let tx = me.waiting.borrow_mut().pop_front();
                if let Some(tx) = tx {
                    let _ = tx.send(reply);
                }
            }
        });
        Ok(r)
    }

    fn call(&self, args: &[&[u8]]) -> futures::channel::oneshot::Receiver<Resp> {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.waiting.borrow_mut().push_back(tx);
        self.wire.send(&resp_cmd(args));
        rx
    }
}

// ---- NATS ------------------------------------------------------------------

#[derive(Debug)]
struct NatsMsg {
    subject: String,
    reply: Option<String>,
    payload: Vec<u8>,
}

/// Takes one server message (MSG with payload, PING, -ERR) and the bytes
/// it used, skipping INFO, +OK and PONG lines. A malformed MSG line is
/// used up and reported.
fn nats_take(buf: &[u8]) -> Option<(Result<NatsMsg, String>, usize)> {
    let mut at = 0;
    loop {
        let (line, next) = resp_line(buf, at)?;
        let line = String::from_utf8_lossy(line).into_owned();
        if let Some(rest) = line.strip_prefix("MSG ") {
            let parts: Vec<&str> = rest.split(' ').collect();
            let (subject, reply, len) = match parts.as_slice() {
                [s, _sid, len] => (*s, None, len),
                [s, _sid, r, len] => (*s, Some(r.to_string()), len),
                _ => return Some((Err(format!("bad MSG line {line:?}")), next)),
            };
            let Ok(len) = len.parse::<usize>() else {
                return Some((Err(format!("bad MSG length {line:?}")), next));
            };
            let payload = buf.get(next..next + len)?.to_vec();
            if buf.len() < next + len + 2 {
                return None;
            }
            let msg = NatsMsg {
                subject: subject.to_owned(),
                reply,
                payload,
            };
            return Some((Ok(msg), next + len + 2));
        }
        if line.starts_with("-ERR") {
            return Some((Err(line), next));
        }
        // PING is answered by the reader loop.
        if line == "PING" {
            let ping = NatsMsg {
                subject: "PING".into(),
                reply: None,
                payload: Vec::new(),
            };
            return Some((Ok(ping), next));
        }
        at = next;
    }
}

type Inbox =
    Rc<RefCell<std::collections::HashMap<String, futures::channel::oneshot::Sender<Vec<u8>>>>>;

struct Nats {
    wire: Rc<Wire>,
    inbox_prefix: String,
    replies: Inbox,
    next: Cell<u64>,
    /// Messages for the consumer subscription (sid 2).
    deliveries: RefCell<VecDeque<NatsMsg>>,
    delivery_wakers: RefCell<Vec<std::task::Waker>>,
}

impl Nats {
    async fn connect(addr: &str) -> Result<Rc<Self>, String> {
        let wire = Wire::connect(addr).await?;
        wire.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false}\r\nPING\r\n");
        // One inbox prefix per connection of this process.
        static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("_INBOX.lg{}x{n}", crate::driver::unique());
        wire.send(format!("SUB {prefix}.* 1\r\n").as_bytes());
        let n = Rc::new(Self {
            wire,
            inbox_prefix: prefix,
            replies: Rc::default(),
            next: Cell::new(0),
            deliveries: RefCell::new(VecDeque::new()),
            delivery_wakers: RefCell::new(Vec::new()),
        });
        let weak = Rc::downgrade(&n);
        monoio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                let wire = me.wire.clone();
                drop(me);
                let msg = match wire.next(nats_take).await {
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "nats");
                        continue;
                    }
                    Err(_) => {
                        // Requests still waiting see their reply dropped.
                        if let Some(me) = weak.upgrade() {
                            me.replies.borrow_mut().clear();
                        }
                        return;
                    }
                };
                let Some(me) = weak.upgrade() else { return };
                if msg.subject == "PING" {
                    me.wire.send(b"PONG\r\n");
                } else if msg.subject.starts_with(&me.inbox_prefix) {
                    let tx = me.replies.borrow_mut().remove(&msg.subject);
                    if let Some(tx) = tx {
                        let _ = tx.send(msg.payload);
                    }
                } else {
                    me.deliveries.borrow_mut().push_back(msg);
                    for w in me.delivery_wakers.borrow_mut().drain(..) {
                        w.wake();
                    }
                }
            }
        });
        Ok(n)
    }

    /// Publishes with a reply inbox; the receiver gets the reply payload.
    fn request(
        &self,
        subject: &str,
        payload: &[u8],
    ) -> futures::channel::oneshot::Receiver<Vec<u8>> {
        let id = self.next.get() + 1;
        self.next.set(id);
        let inbox = format!("{}.{id}", self.inbox_prefix);
        let (tx, rx) = futures::channel::oneshot::channel();
        self.replies.borrow_mut().insert(inbox.clone(), tx);
        let mut out = format!("PUB {subject} {inbox} {}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.wire.send(&out);
        rx
    }

    /// A JetStream API request; its reply must not carry an error.
    async fn js_api(&self, subject: &str, body: &str) -> Result<(), String> {
        let reply = self
            .request(subject, body.as_bytes())
            .await
            .map_err(|_| "nats closed".to_owned())?;
        let reply = String::from_utf8_lossy(&reply);
        if reply.contains("\"error\"") {
            return Err(format!("{subject}: {reply}"));
        }
        Ok(())
    }

    fn publish(&self, subject: &str, payload: &[u8]) {
        let mut out = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.wire.send(&out);
    }

    async fn delivery(&self) -> NatsMsg {
        futures::future::poll_fn(|cx| {
            if let Some(m) = self.deliveries.borrow_mut().pop_front() {
                return std::task::Poll::Ready(m);
            }
            self.delivery_wakers.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }
}

// ---- the run -----------------------------------------------------------------

/// Sends on the schedule, `send` resolving when the peer acknowledged.
async fn produce_loop<F, Fut>(rec: Rc<RefCell<Recorder>>, w: Workload, ctl: Rc<Producing>, send: F)
where
    F: Fn(u32, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + 'static,
{
    let pacer = Pacer::new(&rec, w.rate, &w);
    let mut seq = 0u64;
    while !ctl.stop.get() {
        let intended = pacer.due(seq, &rec, &ctl).await;
        let stamp = Stamp {
            producer: 0,
            seq,
            sent_us: intended,
        };
        let fut = send((seq % u64::from(w.queues)) as u32, stamp.payload(w.size));
        rec.borrow_mut().sent += 1;
        ctl.in_flight.set(ctl.in_flight.get() + 1);
        let (rec2, ctl2, size) = (rec.clone(), ctl.clone(), w.size);
        monoio::spawn(async move {
            match fut.await {
                Ok(()) => rec2.borrow_mut().on_ack(stamp, size),
                Err(e) => {
                    tracing::debug!(error = %e, "peer send failed");
                    rec2.borrow_mut().failed += 1;
                }
            }
            ctl2.landed();
        });
        pacer.sent(seq).await;
        seq += 1;
    }
}

/// Runs `w` against a started peer (one producer, one consumer group of
/// one consumer: the peers' drivers cover the comparison workloads).
pub fn run(peer: &Peer, w: &Workload) -> Result<RunOutput, String> {
    let mut rt = ringmq_client::runtime().map_err(|e| e.to_string())?;
    let pid = peer.pid;
    let out = rt.block_on(async {
        let rec = Rc::new(RefCell::new(Recorder::new(false)));
        let ctl = Rc::new(Producing::new(None));
        let tag = crate::driver::unique();
        let producer_task;
        let consumer_task;
        // The producers' connections live until every in-flight send is answered.
        let mut keep_redis = None;
        let mut keep_nats = None;
        match peer.kind {
            PeerKind::Redis => {
                let prod = Redis::connect(&peer.addr).await?;
                let streams: Vec<String> = (0..w.queues).map(|q| format!("lg{tag}-{q}")).collect();
                for s in &streams {
                    let r = prod
                        .call(&[b"XGROUP", b"CREATE", s.as_bytes(), b"g", b"$", b"MKSTREAM"])
                        .await
                        .map_err(|_| "redis closed")?;
                    if let Resp::Error(e) = r {
                        return Err(format!("XGROUP CREATE: {e}"));
                    }
                }
                let streams = Rc::new(streams);
                keep_redis = Some(prod.clone());
                let (rec2, ctl2, s2) = (rec.clone(), ctl.clone(), streams.clone());
                let p = prod.clone();
                producer_task = monoio::spawn(produce_loop(rec2, w.clone(), ctl2, move |q, payload| {
                    let rx = p.call(&[b"XADD", s2[q as usize].as_bytes(), b"*", b"d", &payload]);
                    async move {
                        match rx.await {
                            Ok(Resp::Bulk(Some(_))) => Ok(()),
                            Ok(other) => Err(format!("XADD answered {other:?}")),
                            Err(_) => Err("redis closed".into()),
                        }
                    }
                }));
                let cons = Redis::connect(&peer.addr).await?;
                let (rec3, ctl3) = (rec.clone(), ctl.clone());
                consumer_task = monoio::spawn(async move {
                    let mut args: Vec<Vec<u8>> = ["XREADGROUP", "GROUP", "g", "c", "COUNT", "1000", "BLOCK", "200", "STREAMS"]
                        .iter()
                        .map(|s| s.as_bytes().to_vec())
                        .collect();
                    args.extend(streams.iter().map(|s| s.as_bytes().to_vec()));
                    args.extend(streams.iter().map(|_| b">".to_vec()));
                    while !ctl3.stop.get() || rec3.borrow().received < rec3.borrow().acked {
                        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                        let Ok(reply) = cons.call(&refs).await else { break };
                        let Resp::Array(Some(per_stream)) = reply else {
                            if ctl3.stop.get() {
                                break;
                            }
                            continue;
                        };
                        for s in per_stream {
                            let Resp::Array(Some(pair)) = s else { continue };
                            let (Some(Resp::Bulk(Some(name))), Some(Resp::Array(Some(entries)))) = (pair.first(), pair.get(1)) else { continue };
                            let mut ids: Vec<Vec<u8>> = Vec::new();
                            for e in entries {
                                let Resp::Array(Some(kv)) = e else { continue };
                                if let Some(Resp::Bulk(Some(id))) = kv.first() {
                                    ids.push(id.clone());
                                }
                                if let Some(Resp::Array(Some(fields))) = kv.get(1) {
                                    if let Some(Resp::Bulk(Some(body))) = fields.get(1) {
                                        if let Some(st) = Stamp::read(body) {
                                            rec3.borrow_mut().on_receive("redis", st);
                                        }
                                    }
                                }
                            }
                            if !ids.is_empty() {
                                let mut ack: Vec<&[u8]> = vec![b"XACK", name, b"g"];
                                ack.extend(ids.iter().map(Vec::as_slice));
                                // The XACK reply is not awaited: acks ride along with the next read.
                                drop(cons.call(&ack));
                            }
                        }
                    }
                });
            }
            PeerKind::Nats => {
                let prod = Nats::connect(&peer.addr).await?;
                let stream = format!("LG{tag}");
                let cfg = format!(
                    "{{\"name\":\"{stream}\",\"subjects\":[\"lg{tag}.>\"],\"storage\":\"file\",\"retention\":\"limits\"}}"
                );
                prod.js_api(&format!("$JS.API.STREAM.CREATE.{stream}"), &cfg).await?;
                let cons_cfg = format!(
                    "{{\"stream_name\":\"{stream}\",\"config\":{{\"durable_name\":\"g\",\"ack_policy\":\"all\",\"deliver_policy\":\"all\",\"max_ack_pending\":100000}}}}"
                );
                prod.js_api(&format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.g"), &cons_cfg).await?;
                keep_nats = Some(prod.clone());
                let (rec2, ctl2) = (rec.clone(), ctl.clone());
                let p = prod.clone();
                let tag2 = tag.clone();
                producer_task = monoio::spawn(produce_loop(rec2, w.clone(), ctl2, move |q, payload| {
                    let rx = p.request(&format!("lg{tag2}.{q}"), &payload);
                    async move {
                        match rx.await {
                            Ok(r) if !String::from_utf8_lossy(&r).contains("\"error\"") => Ok(()),
                            Ok(r) => Err(String::from_utf8_lossy(&r).into_owned()),
                            Err(_) => Err("nats closed".into()),
                        }
                    }
                }));
                let cons = Nats::connect(&peer.addr).await?;
                let deliver = format!("lgdeliver{tag}");
                cons.wire.send(format!("SUB {deliver} 2\r\n").as_bytes());
                let (rec3, ctl3) = (rec.clone(), ctl.clone());
                consumer_task = monoio::spawn(async move {
                    let next = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.g");
                    while !ctl3.stop.get() || rec3.borrow().received < rec3.borrow().acked {
                        let want = 1000;
                        let body = format!("{{\"batch\":{want},\"expires\":200000000}}");
                        let mut hdr = format!("PUB {next} {deliver} {}\r\n", body.len()).into_bytes();
                        hdr.extend_from_slice(body.as_bytes());
                        hdr.extend_from_slice(b"\r\n");
                        cons.wire.send(&hdr);
                        let mut got = 0;
                        let mut last_reply = None;
                        let deadline = Instant::now() + Duration::from_millis(300);
                        while got < want && Instant::now() < deadline {
                            let m = match monoio::time::timeout(Duration::from_millis(250), cons.delivery()).await {
                                Ok(m) => m,
                                Err(_) => break,
                            };
                            if m.payload.is_empty() && m.reply.is_none() {
                                break; // a status message: request expired or done
                            }
                            if let Some(st) = Stamp::read(&m.payload) {
                                rec3.borrow_mut().on_receive("nats", st);
                            }
                            last_reply = m.reply;
                            got += 1;
                        }
                        if let Some(ack) = last_reply {
                            cons.publish(&ack, b"+ACK");
                        }
                    }
                });
            }
        }
        // Warm-up, then the measured period, with a progress line.
        let started = Instant::now();
        let mut measure_started = None;
        let mut cpu0 = None;
        let mut last = (0, 0);
        let mut second = 0;
        loop {
            monoio::time::sleep(Duration::from_secs(1)).await;
            second += 1;
            let s = {
                let mut r = rec.borrow_mut();
                let s = r.tick(second, last);
                last = (r.acked, r.received);
                s
            };
            eprintln!(
                "{} t={:>3}s sent {:>8}/s received {:>8}/s backlog {:>8} publish p99 {} µs",
                peer.kind.name(),
                s.t,
                s.sent,
                s.received,
                s.backlog,
                s.publish_p99_us
            );
            if measure_started.is_none() && started.elapsed() >= Duration::from_secs(w.warmup) {
                rec.borrow_mut().measuring = true;
                measure_started = Some(Instant::now());
                cpu0 = crate::embedded::process_cpu(pid);
            }
            if measure_started.is_some_and(|m| m.elapsed() >= Duration::from_secs(w.duration)) {
                break;
            }
        }
        let measured_secs = measure_started.map_or(0.0, |m| m.elapsed().as_secs_f64());
        let cpu = match (cpu0, crate::embedded::process_cpu(pid)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        rec.borrow_mut().measuring = false;
        ctl.stop.set(true);
        producer_task.await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while (ctl.in_flight.get() > 0 || rec.borrow().received < rec.borrow().acked) && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(consumer_task);
        drop((keep_redis, keep_nats));
        let recorder = std::mem::replace(&mut *rec.borrow_mut(), Recorder::new(false));
        Ok::<_, String>(RunOutput {
            recorder,
            measured_secs,
            broker_cpu_secs: cpu,
            backlog_fill_secs: None,
            drain_secs: None,
            topics: vec![tag],
            groups: vec!["g".into()],
            lost: None,
        })
    })?;
    Ok(out)
}
