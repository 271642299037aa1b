//! One client connection: a read loop that decodes frames and starts a
//! task per request (many in flight, answered by opaque id), and a writer
//! task that sends answers in whatever order they finish.
//!
//! Bounds: a connection has at most `max_in_flight` requests being
//! handled, and all connections of a shard together hold at most
//! `memory_budget_bytes` of request frames. When either is exhausted the
//! read loop waits before reading more: the socket's buffers fill and TCP
//! pushes back on the client. Nothing is buffered without limit.

use super::mesh::Reply;
use super::shard::{bump, drop_by, Shard};
use bytes::{Bytes, BytesMut};
use futures::future::{select, Either};
use futures::{AsyncReadExt, AsyncWriteExt, SinkExt, StreamExt};
use glommio::net::TcpStream;
use ringmq_core::{ErrorCode, ErrorResponse, Frame, FrameDecoder, FrameError, FrameKind};
use std::rc::Rc;

/// Bytes read per socket read at least (more when a frame needs it).
const READ_CHUNK: usize = 16 * 1024;
/// Most bytes one socket read asks for: the window is zero-filled first,
/// so it must stay near what a read brings, not the buffer's capacity
/// (which doubles toward a large frame's size).
const MAX_READ: usize = 256 * 1024;
/// Answers coalesced into one socket write, at most.
const WRITE_COALESCE_BYTES: usize = 256 * 1024;

/// An encoded answer: frame head (prefix and header) then body parts.
struct Outgoing {
    head: Bytes,
    body: Vec<Bytes>,
}

fn encode(opaque: u32, code: u16, reply: Reply) -> Result<Outgoing, FrameError> {
    let frame = match &reply.result {
        Ok(response) => Frame::response(opaque, response, Bytes::new()),
        Err(e) => Frame::error(opaque, code, e),
    };
    let body_len: usize = reply.body.iter().map(Bytes::len).sum();
    let mut head = BytesMut::new();
    // The head's length field counts the body parts written after it.
    frame.encode_head_for_body(&mut head, body_len)?;
    Ok(Outgoing {
        head: head.freeze(),
        body: reply.body,
    })
}

fn error_answer(opaque: u32, code: u16, error: ErrorResponse) -> Outgoing {
    let mut head = BytesMut::new();
    // An error frame has no body, so encoding cannot exceed any cap.
    let _ = Frame::error(opaque, code, &error).encode(&mut head);
    Outgoing {
        head: head.freeze(),
        body: Vec::new(),
    }
}

/// Serves one connection until the client closes it, sends bytes that
/// break framing, or the shard stops.
pub(crate) async fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    mut stop: futures::future::Shared<futures::channel::oneshot::Receiver<()>>,
) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    bump(&shard.stats.connections, 1);
    let (mut reader, mut writer) = stream.split();
    let max_in_flight = shard.cfg.max_in_flight;
    // Each request task holds a sender clone; the channel's bound is the
    // in-flight bound (futures' mpsc gives every sender one more slot).
    let (tx, mut rx) = futures::channel::mpsc::channel::<Outgoing>(1);
    let writer_shard = shard.clone();
    let writer_task = glommio::spawn_local(async move {
        let mut out = BytesMut::new();
        while let Some(first) = rx.next().await {
            let mut next = Some(first);
            // Coalesce whatever is ready into few writes.
            while let Some(o) = next.take() {
                out.extend_from_slice(&o.head);
                for part in o.body {
                    if part.len() >= 16 * 1024 {
                        if !out.is_empty() && writer.write_all(&out).await.is_err() {
                            return;
                        }
                        bump(&writer_shard.stats.bytes_out, out.len() as u64);
                        out.clear();
                        if writer.write_all(&part).await.is_err() {
                            return;
                        }
                        bump(&writer_shard.stats.bytes_out, part.len() as u64);
                    } else {
                        out.extend_from_slice(&part);
                    }
                }
                if out.len() < WRITE_COALESCE_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if !out.is_empty() {
                if writer.write_all(&out).await.is_err() {
                    return;
                }
                bump(&writer_shard.stats.bytes_out, out.len() as u64);
                out.clear();
            }
            if out.capacity() > WRITE_COALESCE_BYTES * 2 {
                out = BytesMut::new();
            }
        }
        let _ = writer.close().await;
    });

    let in_flight = Rc::new(glommio::sync::Semaphore::new(max_in_flight as u64));
    let decoder = FrameDecoder::new(shard.cfg.max_frame_bytes);
    let mut buf = BytesMut::new();
    'conn: loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bad frame");
                    if let Some(answer) = e.answer() {
                        let mut head = BytesMut::new();
                        // An error frame has no body: it fits any cap.
                        let _ = answer.encode(&mut head);
                        let out = Outgoing {
                            head: head.freeze(),
                            body: Vec::new(),
                        };
                        if tx.clone().send(out).await.is_err() {
                            break 'conn;
                        }
                    }
                    if e.is_fatal() {
                        tracing::info!(%peer, error = %e, "closing a connection that broke framing");
                        break 'conn;
                    }
                    continue;
                }
            };
            let size = (frame.header.len() + frame.body.len() + 18) as u64;
            bump(&shard.stats.bytes_in, size);
            let expects_response = match frame.kind {
                FrameKind::Request => true,
                FrameKind::Oneway => false,
                // Clients send requests; a stray response is ignored.
                _ => continue,
            };
            let (opaque, code) = (frame.opaque, frame.code);
            let req = match frame.decode_request() {
                Ok(req) => req,
                Err(e) => {
                    if expects_response {
                        let err = ErrorResponse::new(e.error_code(), e.to_string());
                        if tx
                            .clone()
                            .send(error_answer(opaque, frame.code, err))
                            .await
                            .is_err()
                        {
                            break 'conn;
                        }
                    }
                    continue;
                }
            };
            // Bounds: wait here (not reading) while over them.
            let Ok(slot) = in_flight.acquire_static_permit(1).await else {
                break 'conn;
            };
            let Ok(room) = shard.budget.acquire_static_permit(size).await else {
                break 'conn;
            };
            let shard = shard.clone();
            let mut tx = tx.clone();
            bump(&shard.stats.in_flight, 1);
            glommio::spawn_local(async move {
                let reply = shard.handle(req, frame.body).await;
                drop(room);
                if expects_response {
                    let out = match encode(opaque, code, reply) {
                        Ok(out) => out,
                        Err(e) => error_answer(
                            opaque,
                            code,
                            ErrorResponse::new(ErrorCode::Internal, e.to_string()),
                        ),
                    };
                    let _ = tx.send(out).await;
                }
                drop_by(&shard.stats.in_flight, 1);
                drop(slot);
            })
            .detach();
        }
        // Read more, unless the shard is stopping.
        let start = buf.len();
        let want = (buf.capacity() - start).clamp(READ_CHUNK, MAX_READ);
        buf.resize(start + want, 0);
        let read = reader.read(&mut buf[start..]);
        let n = match select(read, &mut stop).await {
            Either::Left((Ok(n), _)) => n,
            Either::Left((Err(e), _)) => {
                tracing::debug!(%peer, error = %e, "read failed");
                0
            }
            Either::Right(_) => 0,
        };
        buf.truncate(start + n);
        if n == 0 {
            break;
        }
        // An idle connection should not pin a large buffer.
        if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
            buf = BytesMut::new();
        }
    }
    // Let every request of this connection finish and be written.
    let _ = in_flight.acquire(max_in_flight as u64).await;
    drop(tx);
    let _ = writer_task.await;
    drop_by(&shard.stats.connections, 1);
}
