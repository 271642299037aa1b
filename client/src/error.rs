//! The client's errors.

use ringmq_core::{ErrorCode, ErrorResponse};

/// Why a client operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No connection could be made to a server.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// Who.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The connection broke with the request in flight.
    #[error("connection to {addr} lost: {reason}")]
    Disconnected {
        /// Who.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No answer within the request timeout.
    #[error("no answer from {addr} within {ms} ms")]
    Timeout {
        /// Who.
        addr: String,
        /// The timeout.
        ms: u64,
    },
    /// The server refused the request.
    #[error("{addr} answered {}: {}", .error.code.name(), .error.message)]
    Server {
        /// Who.
        addr: String,
        /// The error.
        error: ErrorResponse,
    },
    /// No route: the topic is unknown to the name servers, or has no such queue.
    #[error("no route to {0}")]
    NoRoute(String),
    /// The answer made no sense.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A bad argument or setting.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Too much is queued on a connection; slow down.
    #[error("busy: {0}")]
    Busy(String),
    /// The client or consumer was shut down.
    #[error("shut down")]
    Closed,
}

impl ClientError {
    /// Whether trying again (perhaps elsewhere) may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Disconnected { .. }
            | ClientError::Timeout { .. }
            | ClientError::NoRoute(_)
            | ClientError::Busy(_) => true,
            ClientError::Server { error, .. } => error.code.is_retriable(),
            _ => false,
        }
    }

    /// Whether the route may be stale (refresh it before retrying).
    pub fn is_routing(&self) -> bool {
        match self {
            ClientError::Server { error, .. } => matches!(
                error.code,
                ErrorCode::NotOwner | ErrorCode::TopicNotFound | ErrorCode::QueueNotFound
            ),
            ClientError::Unreachable { .. }
            | ClientError::Disconnected { .. }
            | ClientError::NoRoute(_) => true,
            _ => false,
        }
    }

    /// The server's error code, if it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { error, .. } => Some(error.code),
            _ => None,
        }
    }
}
