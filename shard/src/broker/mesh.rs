//! The SPSC mesh between shards: one bounded single-producer
//! single-consumer channel per ordered pair (glommio's `channel_mesh`).
//!
//! A shard sends a peer a [`Call`] and gets a [`Reply`] back on the reverse
//! channel, matched by id. Messages to a peer collect in an outbox that one
//! task per peer hands to the channel as a single batch, so under load one
//! channel push (and one cross-core wake-up) carries many messages. Calls
//! waiting in an outbox are bounded ([`OUTBOX_CALLS`]); replies are not
//! bounded separately, since each answers a bounded call.

use super::meta::TopicMeta;
use bytes::Bytes;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::sync::Semaphore;
use ringmq_core::{ErrorCode, ErrorResponse, QueueId, Request, Response, TopicName};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Batches in flight on one mesh channel.
pub(crate) const MESH_CHANNEL_BATCHES: usize = 64;
/// Calls waiting in one peer's outbox before callers wait.
const OUTBOX_CALLS: u64 = 4096;

/// What crosses the mesh.
#[derive(Debug)]
pub(crate) enum MeshMsg {
    Call {
        id: u64,
        call: Call,
    },
    Reply {
        id: u64,
        reply: Reply,
    },
    /// The sender has stopped making calls (shutdown barrier).
    Done,
}

/// Work for another shard.
#[derive(Debug)]
pub(crate) enum Call {
    /// A client request for a queue the receiver owns (or, to shard 0, a
    /// topic change), with its body's bytes (refcounted, not copied).
    Request { req: Request, body: Bytes },
    /// Create these queues of a topic in the receiver's store.
    CreateQueues {
        topic: TopicName,
        queues: Vec<QueueId>,
    },
    /// Delete a topic's queues from the receiver's store.
    DeleteQueues { topic: TopicName },
    /// Topic metadata changed (`None`: deleted).
    Topic {
        topic: TopicName,
        meta: Option<TopicMeta>,
        version: u64,
    },
    /// The receiver's counters.
    Status,
    /// The groups with committed offsets in the receiver's store.
    Groups,
}

/// An answer: a response header and body parts, or an error.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) result: Result<Response, ErrorResponse>,
    pub(crate) body: Vec<Bytes>,
}

impl Reply {
    pub(crate) fn ok(response: Response) -> Self {
        Self {
            result: Ok(response),
            body: Vec::new(),
        }
    }

    pub(crate) fn err(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            result: Err(ErrorResponse::new(code, message)),
            body: Vec::new(),
        }
    }
}

impl From<ErrorResponse> for Reply {
    fn from(e: ErrorResponse) -> Self {
        Self {
            result: Err(e),
            body: Vec::new(),
        }
    }
}

/// One shard's end of the mesh.
#[derive(Debug)]
pub(crate) struct Mesh {
    me: usize,
    outbox: Vec<RefCell<Vec<MeshMsg>>>,
    wake: Vec<Option<LocalSender<()>>>,
    room: Vec<Semaphore>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: Cell<u64>,
    /// Peers that sent `Done`.
    done_from: Cell<usize>,
}

impl Mesh {
    /// Starts the per-peer sender tasks; returns the mesh and the receivers
    /// for [`Mesh::serve`].
    pub(crate) fn start(senders: Senders<Vec<MeshMsg>>, n: usize) -> Rc<Self> {
        let me = senders.peer_id();
        let senders = Rc::new(senders);
        let mut wake = Vec::with_capacity(n);
        let mesh = Rc::new_cyclic(|weak: &std::rc::Weak<Mesh>| {
            for peer in 0..n {
                if peer == me {
                    wake.push(None);
                    continue;
                }
                let (tx, rx) = local_channel::new_bounded::<()>(1);
                wake.push(Some(tx));
                let weak = weak.clone();
                let senders = senders.clone();
                glommio::spawn_local(async move {
                    while rx.recv().await.is_some() {
                        let Some(mesh) = weak.upgrade() else { return };
                        let batch = std::mem::take(&mut *mesh.outbox[peer].borrow_mut());
                        let calls = batch
                            .iter()
                            .filter(|m| matches!(m, MeshMsg::Call { .. }))
                            .count() as u64;
                        drop(mesh);
                        if batch.is_empty() {
                            continue;
                        }
                        if senders.send_to(peer, batch).await.is_err() {
                            tracing::warn!(peer, "mesh channel closed; peer is gone");
                            return;
                        }
                        if let Some(mesh) = weak.upgrade() {
                            mesh.room[peer].signal(calls);
                        }
                    }
                })
                .detach();
            }
            Mesh {
                me,
                outbox: (0..n).map(|_| RefCell::new(Vec::new())).collect(),
                wake,
                room: (0..n).map(|_| Semaphore::new(OUTBOX_CALLS)).collect(),
                pending: RefCell::new(HashMap::new()),
                next_id: Cell::new(1),
                done_from: Cell::new(0),
            }
        });
        mesh
    }

    fn push(&self, peer: usize, msg: MeshMsg) {
        self.outbox[peer].borrow_mut().push(msg);
        if let Some(tx) = &self.wake[peer] {
            // A full channel means the sender task is already woken.
            let _ = tx.try_send(());
        }
    }

    /// Sends `call` to `peer` and waits for its reply.
    pub(crate) async fn call(&self, peer: usize, call: Call) -> Reply {
        if peer == self.me || peer >= self.outbox.len() {
            return Reply::err(ErrorCode::Internal, format!("no mesh peer {peer}"));
        }
        if self.room[peer].acquire(1).await.is_err() {
            return Reply::err(ErrorCode::ShuttingDown, "shard is stopping");
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        self.push(peer, MeshMsg::Call { id, call });
        match rx.await {
            Ok(reply) => reply,
            Err(oneshot::Canceled) => Reply::err(ErrorCode::ShuttingDown, "peer shard stopped"),
        }
    }

    /// Tells every peer this shard makes no more calls.
    pub(crate) fn send_done(&self) {
        for peer in 0..self.outbox.len() {
            if peer != self.me {
                self.push(peer, MeshMsg::Done);
            }
        }
    }

    /// How many peers said they make no more calls.
    pub(crate) fn done_peers(&self) -> usize {
        self.done_from.get()
    }

    /// Receives from every peer: calls go to `handle` (each in its own
    /// task, replied to on the reverse channel), replies to their callers.
    pub(crate) fn serve<H, F>(self: &Rc<Self>, mut receivers: Receivers<Vec<MeshMsg>>, handle: H)
    where
        H: Fn(usize, Call) -> F + Clone + 'static,
        F: std::future::Future<Output = Reply> + 'static,
    {
        for (peer, rx) in receivers.streams() {
            let mesh = Rc::downgrade(self);
            let handle = handle.clone();
            glommio::spawn_local(async move {
                let mut said_done = false;
                while let Some(batch) = rx.recv().await {
                    let Some(m) = mesh.upgrade() else { return };
                    for msg in batch {
                        match msg {
                            MeshMsg::Call { id, call } => {
                                let fut = handle(peer, call);
                                let back = Rc::downgrade(&m);
                                glommio::spawn_local(async move {
                                    let reply = fut.await;
                                    if let Some(m) = back.upgrade() {
                                        m.push(peer, MeshMsg::Reply { id, reply });
                                    }
                                })
                                .detach();
                            }
                            MeshMsg::Reply { id, reply } => {
                                if let Some(tx) = m.pending.borrow_mut().remove(&id) {
                                    let _ = tx.send(reply);
                                }
                            }
                            MeshMsg::Done => {
                                said_done = true;
                                m.done_from.set(m.done_from.get() + 1);
                            }
                        }
                    }
                }
                // A peer that is gone (a shard that failed at start-up, say)
                // makes no more calls either: nobody waits for its Done.
                if !said_done {
                    if let Some(m) = mesh.upgrade() {
                        m.done_from.set(m.done_from.get() + 1);
                    }
                }
            })
            .detach();
        }
    }
}
