//! One pipelined connection on monoio: many requests in flight, answers
//! matched by opaque id. A writer task sends whatever frames are queued in
//! one write; a reader task decodes answers and completes their callers.
//! In-flight requests are bounded; callers wait for room.

use crate::error::ClientError;
use bytes::{Bytes, BytesMut};
use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use ringmq_core::{Frame, FrameDecoder, Request, Response};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

type Answer = Result<(Response, Bytes), ClientError>;

/// Bytes queued for one connection's writer before sends are refused.
const MAX_OUTBOX_BYTES: usize = 64 << 20;

/// A counting semaphore for one thread.
#[derive(Debug)]
pub(crate) struct LocalSemaphore {
    free: Cell<usize>,
    waiters: RefCell<VecDeque<Waker>>,
}

impl LocalSemaphore {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            free: Cell::new(n),
            waiters: RefCell::new(VecDeque::new()),
        }
    }

    /// Waits for one permit; give it back with [`LocalSemaphore::release`].
    pub(crate) async fn acquire(&self) {
        self.acquire_many(1).await;
    }

    /// Waits until `n` permits are free and takes them together (a caller
    /// asking for more than the semaphore holds waits forever: callers
    /// bound `n`).
    pub(crate) async fn acquire_many(&self, n: usize) {
        futures::future::poll_fn(|cx| {
            if self.free.get() >= n {
                self.free.set(self.free.get() - n);
                std::task::Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push_back(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
    }

    pub(crate) fn release(&self) {
        self.release_many(1);
    }

    /// Gives back `n` permits and wakes the waiters (each checks its own need).
    pub(crate) fn release_many(&self, n: usize) {
        self.free.set(self.free.get() + n);
        let waiters: Vec<Waker> = self.waiters.borrow_mut().drain(..).collect();
        for w in waiters {
            w.wake();
        }
    }
}

/// A pipelined connection.
#[derive(Debug)]
pub(crate) struct Conn {
    addr: SocketAddr,
    pending: RefCell<HashMap<u32, oneshot::Sender<Answer>>>,
    next: Cell<u32>,
    outbox: RefCell<Vec<u8>>,
    wake_writer: mpsc::Sender<()>,
    room: LocalSemaphore,
    closed: RefCell<Option<String>>,
}

impl Conn {
    /// Connects and starts the reader and writer tasks.
    pub(crate) async fn connect(
        addr: SocketAddr,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Result<Rc<Self>, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let stream = monoio::time::timeout(timeout, TcpStream::connect_addr(addr))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let (wake_writer, mut wake_rx) = mpsc::channel::<()>(1);
        let conn = Rc::new(Self {
            addr,
            pending: RefCell::new(HashMap::new()),
            next: Cell::new(0),
            outbox: RefCell::new(Vec::new()),
            wake_writer,
            room: LocalSemaphore::new(max_in_flight.max(1)),
            closed: RefCell::new(None),
        });
        let weak = Rc::downgrade(&conn);
        monoio::spawn(async move {
            while wake_rx.next().await.is_some() {
                let Some(c) = weak.upgrade() else { return };
                let out = std::mem::take(&mut *c.outbox.borrow_mut());
                drop(c);
                if out.is_empty() {
                    continue;
                }
                let (res, _) = writer.write_all(out).await;
                if let Err(e) = res {
                    if let Some(c) = weak.upgrade() {
                        c.fail(format!("write: {e}"));
                    }
                    return;
                }
            }
        });
        let weak = Rc::downgrade(&conn);
        monoio::spawn(async move {
            let decoder = FrameDecoder::default();
            let mut acc = BytesMut::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let (res, b) = reader.read(buf).await;
                buf = b;
                let n = match res {
                    Ok(0) => {
                        if let Some(c) = weak.upgrade() {
                            c.fail("closed by the server".into());
                        }
                        return;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        if let Some(c) = weak.upgrade() {
                            c.fail(format!("read: {e}"));
                        }
                        return;
                    }
                };
                acc.extend_from_slice(&buf[..n]);
                let Some(c) = weak.upgrade() else { return };
                loop {
                    match decoder.decode(&mut acc) {
                        Ok(Some(frame)) => {
                            let answer = match frame.decode_response() {
                                Ok(Ok(resp)) => Ok((resp, frame.body)),
                                Ok(Err(error)) => Err(ClientError::Server {
                                    addr: c.addr.to_string(),
                                    error,
                                }),
                                Err(e) => Err(ClientError::Protocol(e.to_string())),
                            };
                            if let Some(tx) = c.pending.borrow_mut().remove(&frame.opaque) {
                                let _ = tx.send(answer);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            c.fail(format!("bad frame from the server: {e}"));
                            return;
                        }
                    }
                }
            }
        });
        Ok(conn)
    }

    /// Fails every request in flight; later calls fail at once.
    fn fail(&self, reason: String) {
        tracing::debug!(addr = %self.addr, %reason, "connection closed");
        *self.closed.borrow_mut() = Some(reason.clone());
        for (_, tx) in self.pending.borrow_mut().drain() {
            let _ = tx.send(Err(ClientError::Disconnected {
                addr: self.addr.to_string(),
                reason: reason.clone(),
            }));
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    /// Sends a request and waits for its answer, up to `timeout`.
    pub(crate) async fn call(&self, req: &Request, body: Bytes, timeout: Duration) -> Answer {
        self.room.acquire().await;
        let answer = self.call_inner(req, body, timeout).await;
        self.room.release();
        answer
    }

    fn enqueue(&self, frame: Frame) -> Result<(), ClientError> {
        if let Some(reason) = self.closed.borrow().clone() {
            return Err(ClientError::Disconnected {
                addr: self.addr.to_string(),
                reason,
            });
        }
        if self.outbox.borrow().len() > MAX_OUTBOX_BYTES {
            return Err(ClientError::Busy(format!(
                "over {MAX_OUTBOX_BYTES} bytes queued for {}",
                self.addr
            )));
        }
        let mut out = BytesMut::new();
        frame
            .encode(&mut out)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.outbox.borrow_mut().extend_from_slice(&out);
        // A full channel already holds a wake-up.
        let _ = self.wake_writer.clone().try_send(());
        Ok(())
    }

    async fn call_inner(&self, req: &Request, body: Bytes, timeout: Duration) -> Answer {
        let opaque = self.next.get().wrapping_add(1).max(1);
        self.next.set(opaque);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(opaque, tx);
        if let Err(e) = self.enqueue(Frame::request(opaque, req, body)) {
            self.pending.borrow_mut().remove(&opaque);
            return Err(e);
        }
        match monoio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ClientError::Disconnected {
                addr: self.addr.to_string(),
                reason: "connection dropped".into(),
            }),
            Err(_) => {
                self.pending.borrow_mut().remove(&opaque);
                Err(ClientError::Timeout {
                    addr: self.addr.to_string(),
                    ms: timeout.as_millis() as u64,
                })
            }
        }
    }
}
