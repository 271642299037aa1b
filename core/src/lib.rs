//! ringmq's sans-IO core: everything that turns bytes into typed values and
//! back, with no sockets, files or executor, so it can be fuzzed and reused
//! by the broker, the name server, the client and the benchmark tool alike.
//!
//! # Layout
//! - [`frame`]: length-prefixed frames and the incremental [`FrameDecoder`],
//!   which checks the length against a cap before allocating.
//! - [`messages`]: request codes and the typed request and response header
//!   of each ([`Request`], [`Response`], [`ErrorResponse`]).
//! - [`error_code`]: stable numeric [`ErrorCode`]s carried by error responses.
//! - [`batch`]: the record-batch format shared by wire and disk: a builder,
//!   crc32c verification, broker stamping and a zero-copy record reader.
//! - [`route`]: metadata types: permissions, roles, queue placement, routes.
//! - [`name`]: topic and group name validation, queue/shard/broker ids.
//! - [`config`]: settings every layer shares ([`FlushMode`]).
//! - [`wire`]: the header encoding primitives ([`wire::Wire`], [`wire::Reader`]).
//! - [`varint`]: LEB128 and zigzag, used inside batches.
//!
//! The byte layouts are drawn in `core/PROTOCOL.md`.

pub mod batch;
pub mod config;
pub mod error_code;
pub mod frame;
pub mod messages;
pub mod name;
pub mod route;
pub mod varint;
pub mod wire;

pub use batch::{
    Batch, BatchBuilder, BatchError, BatchHeader, Batches, Record, RecordInput, RecordRef,
};
pub use config::FlushMode;
pub use error_code::ErrorCode;
pub use frame::{Frame, FrameDecoder, FrameError, FrameFlags, FrameKind};
pub use messages::{Call, ErrorResponse, HeaderError, Request, RequestCode, Response};
pub use name::{BrokerId, GroupName, NameError, QueueId, ShardId, TopicName};
