//! Blocking request/answer connections for admin tools: the `ringmq` CLI
//! and tests. One request at a time over a plain TCP socket with timeouts;
//! name servers are tried in order until one answers.
//!
//! The producer and consumers (issue #6) use their own pipelined
//! connections on monoio; admin calls are rare and simple.

use bytes::{Bytes, BytesMut};
use ringmq_core::{Call, ErrorCode, ErrorResponse, Frame, FrameDecoder, Request, Response};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No connection could be made (or it broke).
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// Who.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{addr} answered {}: {}", .error.code.name(), .error.message)]
    Remote {
        /// Who.
        addr: String,
        /// The error.
        error: ErrorResponse,
    },
    /// The answer did not make sense.
    #[error("{addr}: {reason}")]
    Protocol {
        /// Who.
        addr: String,
        /// What.
        reason: String,
    },
}

impl AdminError {
    /// The remote error code, if the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            AdminError::Remote { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// One blocking connection.
#[derive(Debug)]
pub struct AdminConn {
    addr: String,
    stream: TcpStream,
    buf: BytesMut,
    next: u32,
}

impl AdminConn {
    /// Connects to `addr` (`host:port`) within `timeout`; reads wait as long.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Self, AdminError> {
        let unreachable = |reason: String| AdminError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let target: SocketAddr = addr
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("no address".into()))?;
        let stream =
            TcpStream::connect_timeout(&target, timeout).map_err(|e| unreachable(e.to_string()))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self {
            addr: addr.to_owned(),
            stream,
            buf: BytesMut::new(),
            next: 0,
        })
    }

    /// The peer's address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `req` and waits for its answer.
    pub fn call<C: Call>(&mut self, req: C) -> Result<C::Response, AdminError> {
        let (resp, _) = self.call_raw(req.into(), Bytes::new())?;
        C::response_of(resp).ok_or_else(|| AdminError::Protocol {
            addr: self.addr.clone(),
            reason: "answer of another kind".into(),
        })
    }

    /// Sends any request with a body; returns the answer and its body.
    pub fn call_raw(&mut self, req: Request, body: Bytes) -> Result<(Response, Bytes), AdminError> {
        let broken = |addr: &str, reason: String| AdminError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        self.next = self.next.wrapping_add(1);
        let opaque = self.next;
        let mut out = BytesMut::new();
        Frame::request(opaque, &req, body)
            .encode(&mut out)
            .map_err(|e| AdminError::Protocol {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?;
        self.stream
            .write_all(&out)
            .map_err(|e| broken(&self.addr, e.to_string()))?;
        let decoder = FrameDecoder::default();
        loop {
            let frame = decoder
                .decode(&mut self.buf)
                .map_err(|e| AdminError::Protocol {
                    addr: self.addr.clone(),
                    reason: e.to_string(),
                })?;
            if let Some(frame) = frame {
                if frame.opaque != opaque {
                    continue;
                }
                let answer = frame.decode_response().map_err(|e| AdminError::Protocol {
                    addr: self.addr.clone(),
                    reason: e.to_string(),
                })?;
                return match answer {
                    Ok(resp) => Ok((resp, frame.body)),
                    Err(error) => Err(AdminError::Remote {
                        addr: self.addr.clone(),
                        error,
                    }),
                };
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| broken(&self.addr, e.to_string()))?;
            if n == 0 {
                return Err(broken(&self.addr, "connection closed".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Several name servers, tried in order.
#[derive(Debug, Clone)]
pub struct Namesrvs {
    addrs: Vec<String>,
    timeout: Duration,
}

impl Namesrvs {
    /// Name servers at `addrs`.
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Self {
        Self { addrs, timeout }
    }

    /// Asks the first name server that answers. A remote error (the
    /// request itself is wrong, or the topic unknown) is final; an
    /// unreachable name server makes it try the next.
    pub fn call<C: Call + Clone>(&self, req: C) -> Result<C::Response, AdminError> {
        let mut last = AdminError::Unreachable {
            addr: "(no name server)".into(),
            reason: "set --namesrv or RINGMQ_NAMESRV".into(),
        };
        for addr in &self.addrs {
            match AdminConn::connect(addr, self.timeout).and_then(|mut c| c.call(req.clone())) {
                Ok(r) => return Ok(r),
                Err(e @ AdminError::Remote { .. }) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
